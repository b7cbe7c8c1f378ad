"""The widgets as a reader meets them: JupyterLab started headless, a notebook opened in Chromium
and run, and each widget driven like a person would (a value typed or chosen, a button pressed),
its output checked against the model's answer computed here with factlens.

Marked ``live`` (``-m live`` selects these, ``-m "not live"`` leaves them out). Needs Debian's
``chromium`` and ``chromium-driver`` (``make test`` installs them) and the default model; a
few minutes. It stops only what it started: the JupyterLab server (its own process group),
the notebook's kernel (through the server) and chromedriver with its Chromium (selenium).
Waits are for conditions, each with a generous limit and a message saying what did not happen.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from conftest import headless_chromium

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[1]
JUPYTER = Path(sys.executable).with_name("jupyter")
# seconds: what the kernel computes on a loaded 2-core machine (the model's first load, a
# ROME edit whose layer statistics are not cached yet) can take minutes
SLOW = 600
QUICK = 120

PROMPT = "{} is located in the city of"
SUBJECT = "The Eiffel Tower"
# the many-edits widget: two ROME edits in a row, measured once, on a small yardstick
MANY_CASES = "data.counterfact()[10:12]"
MANY_YARDSTICK = ('sequences.Yardstick(data.lama("TREx", relation="P36")[:4], ["The capital of France is"], '
                  "generate_tokens=2)")
CELLS = {
    "setup": """\
from factlens import data
from factlens.locating import tracing
from factlens.memories import keys
from factlens.show import widgets
from factlens.core.models import load_model

model = load_model("gemma-3-270m")""",
    "cloze": 'widgets.cloze_explorer(model, subject="France", relation="P36", k=5)',
    "memory": """\
corpus = keys.Corpus.from_texts(model, keys.wikitext_sentences(40), max_tokens=24, name="live")
search = keys.trigger_search(model, {8: [11, 42], 17: [5, 99]}, corpus, k=3, n_random=10, progress=False)
widgets.memory_explorer(model, search, corpus, prompt="The Eiffel Tower is located in the city of")""",
    "trace": f"""\
widgets.trace_explorer(model, prompt="{PROMPT.format(SUBJECT)}", subject="{SUBJECT}",
                       settings=tracing.TraceSettings(samples=2, window=3))""",
    "rome": f'widgets.rome_editor(model, prompt="{PROMPT}", subject="{SUBJECT}", target="Rome", max_new_tokens=4)',
    "cases": """\
import pandas as pd

cases = data.counterfact()[:3]
frames = {"ROME": pd.DataFrame({"case_id": [c.case_id for c in cases], "ES": [1.0, 0.0, 1.0]})}
widgets.edit_case_browser(frames, cases)""",
    "many": f"""\
from factlens.editing import sequences

edit_cases = {MANY_CASES}
yardstick = {MANY_YARDSTICK}
widgets.many_edits_explorer(model, edit_cases, yardstick, every=2, max_edits=2)""",
}


# --- processes we start, and stop ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.5) -> object:
    """Poll ``condition`` until it returns something true; fail saying ``what`` did not happen."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"after {timeout:.0f} s: {what}")
        time.sleep(every)


@dataclass
class Server:
    """A Jupyter server we started: its URL, token and process (leader of its own group)."""

    url: str
    token: str
    process: subprocess.Popen
    log: Path

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def answers(self, path: str = "api/status") -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"the server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
        try:
            self.api(path)
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        """Shut down the server's kernels and the server (through its API), then end what is left
        of its process group; only processes this test started."""
        try:
            for kernel in self.api("api/kernels") or []:
                self.api(f"api/kernels/{kernel['id']}", method="DELETE")
            self.api("api/shutdown", method="POST")
            self.process.wait(timeout=60)
        except (urllib.error.URLError, ConnectionError, TimeoutError, subprocess.TimeoutExpired):
            pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(command: list[str], cwd: Path, env: dict[str, str], port: int, token: str, log: Path) -> Server:
    out = log.open("w")
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}/", token, process, log)
    try:
        wait_for(server.answers, QUICK, f"the server did not answer on port {port}; its log:\n{log}")
    except BaseException:
        server.stop()
        raise
    return server


def lab_arguments(port: int, token: str, home: Path) -> list[str]:
    """JupyterLab headless on ``port`` with ``token``; settings and workspaces in ``home``."""
    settings = home / "settings" / "@jupyterlab"
    for extension, name, values in (
        ("notebook-extension", "tracker", {"windowingMode": "none"}),  # every cell stays in the page
        ("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False,
                                                 "doNotDisturbMode": True}),  # no toast over the widgets
    ):
        (settings / extension).mkdir(parents=True, exist_ok=True)
        (settings / extension / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    return ["--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
            f"--IdentityProvider.token={token}", "--LabApp.news_url=None",
            f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}"]


def server_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "lib"), env.get("PYTHONPATH")) if p)
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"))
    return env


# --- the notebook in JupyterLab in Chromium ---------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("lab")
    notebooks = home / "notebooks"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS.values()])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebooks / "live.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    command = [str(JUPYTER), "lab", *lab_arguments(port, token, home), "--LabApp.expose_app_in_browser=True",
               *(["--allow-root"] if os.geteuid() == 0 else [])]
    server = start_server(command, notebooks, server_env(home), port, token, home / "lab.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"factlens-live-chromium-{secrets.token_hex(4)}"
    with headless_chromium("1400,2400", f"--user-data-dir={profile}") as driver:
        driver.set_script_timeout(60)
        yield driver
    shutil.rmtree(profile, ignore_errors=True)


KERNEL_IDLE = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
"""
CELL_STATES = """
const cells = window.jupyterapp.shell.currentWidget.content.widgets.filter(c => c.model.type === 'code');
return cells.map(c => ({count: c.model.executionCount,
                        errors: c.model.outputs.toJSON().filter(o => o.output_type === 'error')}));
"""


@pytest.fixture(scope="module")
def notebook(lab, browser):
    """live.ipynb opened in JupyterLab and run from the top; every cell done without an error."""
    browser.get(f"{lab.url}lab/tree/live.ipynb?token={lab.token}")
    wait_for(lambda: browser.execute_script(KERNEL_IDLE), QUICK,
             "JupyterLab did not open the notebook with an idle kernel")
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells'); return true;")

    def done() -> bool:
        states = browser.execute_script(CELL_STATES)
        for i, state in enumerate(states):
            if state["errors"]:
                error = state["errors"][0]
                trace = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.get("traceback", [])))
                pytest.fail(f"cell {i} of the live notebook failed: {error['ename']}: {error['evalue']}\n"
                            f"{trace[-3000:]}")
        return all(s["count"] is not None for s in states) and browser.execute_script(KERNEL_IDLE)

    wait_for(done, SLOW, "the live notebook did not finish running")
    return browser


class Widget:
    """One widget in the page, found by its CSS class, and the outputs of its cell."""

    def __init__(self, browser, name: str):
        from selenium.webdriver.common.by import By

        self.browser, self.by = browser, By
        self.box = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f".factlens-{name}"), QUICK,
                            f"no widget .factlens-{name} in the page")[0]
        self.cell = self.box.find_element(By.XPATH, "./ancestor::div[contains(concat(' ', @class, ' '), ' jp-Cell ')]")

    def control(self, name: str, inner: str = ""):
        return self.box.find_element(self.by.CSS_SELECTOR, f".factlens-{name} {inner}".strip())

    def status(self) -> str:
        return self.control("status").text.strip()

    def results(self) -> list[str]:
        return [e.text for e in self.cell.find_elements(self.by.CSS_SELECTOR, ".factlens-result")]

    def rows(self, result: int = 0) -> list[list[str]]:
        table = self.cell.find_elements(self.by.CSS_SELECTOR, ".factlens-result")[result]
        rows = [[td.text for td in tr.find_elements(self.by.TAG_NAME, "td")]
                for tr in table.find_elements(self.by.CSS_SELECTOR, "tbody tr")]
        return [row for row in rows if row]  # a header row of th only is not data

    def click(self, name: str) -> None:
        button = self.control(name)
        self.browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()

    def type(self, name: str, text: str) -> None:
        """Replace a text field's value as a person does, and press Enter."""
        from selenium.webdriver.common.keys import Keys

        field = self.control(name, "input")
        self.browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", field)
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.BACKSPACE)
        field.send_keys(text + Keys.ENTER)

    def choose(self, name: str, label: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.control(name, "select")).select_by_value(label)

    def settled(self, before: str, timeout: float = SLOW) -> str:
        """Wait until the status line differs from ``before`` and no run is going; return it."""
        return wait_for(lambda: (s := self.status()) != before and not s.endswith("…") and s,
                        timeout, f"the widget's status stayed {before!r} or kept working: {self.status()!r}")


@pytest.fixture(scope="module")
def gemma():
    from factlens.core.models import load_model

    return load_model("gemma-3-270m")


# --- each widget -------------------------------------------------------------------------------------


def test_cloze_explorer_answers_for_a_new_subject_and_relation(notebook, gemma):
    from factlens import data
    from factlens.probing import lama

    relations = data.lama_relations()
    cloze = Widget(notebook, "cloze")
    first = cloze.rows()
    assert first[0][0] == lama.query(gemma, relations["P36"].template, "France", k=5)["answer"].iloc[0]

    status = cloze.status()
    cloze.type("subject", "")  # bad input: one line in the widget, the output left as it was
    status = cloze.settled(status, QUICK)
    assert status.startswith("⚠ the subject is empty: write one, e.g. 'France'") and "\n" not in status
    assert cloze.rows() == first

    cloze.type("subject", "Japan")  # and it still works
    status = cloze.settled(status, QUICK)
    expected = lama.query(gemma, relations["P36"].template, "Japan", k=5)["answer"].tolist()
    assert [row[0] for row in cloze.rows()][:1] == expected[:1] and cloze.rows() != first
    assert status.startswith(f"query 3: {expected[0]!r}")

    cloze.choose("relation", f"P37: {relations['P37'].label}")
    cloze.settled(status, QUICK)
    assert cloze.rows()[0][0] == lama.query(gemma, relations["P37"].template, "Japan", k=5)["answer"].iloc[0]


def test_memory_explorer_shows_the_chosen_key_and_a_new_prompts_memories(notebook, gemma):
    from factlens.core.models import view
    from factlens.memories.values import strongest_memories, value_logits

    memory = Widget(notebook, "memory")
    assert "layer 17, key 5" in memory.results()[0]
    status = memory.status()
    memory.choose("key", "99")
    status = memory.settled(status, QUICK)
    promoted = value_logits(gemma, 17, [99]).topk(10, -1).indices[0].tolist()
    tokens = ", ".join(repr(view(gemma).tokenizer.decode([t])) for t in promoted)
    assert "layer 17, key 99" in memory.results()[0]
    assert tokens in memory.results()[0]

    prompt = "The capital of Japan is"
    memory.type("prompt", prompt)
    memory.settled(status, QUICK)
    strongest = strongest_memories(gemma, prompt, top=2)[0]
    assert memory.results()[1].startswith(prompt)
    assert memory.rows(1)[0][:2] == [str(strongest["layer"]), str(strongest["key"])]


def test_trace_explorer_names_a_missing_subject_then_traces_the_new_prompt(notebook, gemma):
    from factlens.core.models import view

    tracer = Widget(notebook, "trace")
    image = tracer.cell.find_elements(tracer.by.CSS_SELECTOR, ".jp-OutputArea-output img")[-1].get_attribute("src")
    status = tracer.status()
    prompt = "The Colosseum is located in the city of"
    tracer.type("prompt", prompt)
    tracer.click("go")  # the subject is still the Eiffel Tower's
    status = tracer.settled(status, QUICK)
    assert status.startswith(f"⚠ subject {SUBJECT!r} does not occur in prompt {prompt!r}")

    tracer.type("subject", "The Colosseum")
    tracer.click("go")
    status = tracer.settled(status, SLOW)
    answer = view(gemma).top_tokens([prompt])[0][0]
    assert status.startswith(f"trace 3: {answer!r}: p ")
    new = tracer.cell.find_elements(tracer.by.CSS_SELECTOR, ".jp-OutputArea-output img")[-1].get_attribute("src")
    assert new != image, "the heatmap was not redrawn"


def test_rome_editor_edits_on_one_click_with_progress_and_ignores_a_second(notebook, gemma):
    from factlens.core.models import view
    from factlens.editing import rome
    from factlens.editing.requests import EditRequest

    editor = Widget(notebook, "rome")
    before = editor.rows()
    assert before[0][0] == PROMPT.format(SUBJECT) and before[0][2] == 'press "edit"'  # no edit to create it
    status = editor.status()
    editor.type("target", "London")
    go = editor.control("go")
    start = time.monotonic()
    editor.click("go")
    go.click()  # a second click while it runs (or queued behind the first): no second run
    progress = wait_for(lambda: (s := editor.status()) != status and s, QUICK,
                        "the editor showed nothing after a click")
    assert progress.startswith("edit 2: ") and progress.endswith("…"), f"no progress shown: {progress!r}"
    assert go.get_attribute("disabled"), "the edit button stays enabled while the edit runs"
    status = editor.settled(status, SLOW)
    seconds = time.monotonic() - start
    wait_for(lambda: notebook.execute_script(KERNEL_IDLE), QUICK, "the kernel did not become idle")
    assert editor.status() == status and status.startswith("edit 2: layer "), status  # one run, not two

    request = EditRequest(PROMPT, SUBJECT, "London")
    with rome.ROME()(gemma, [request]):
        expected = view(gemma).top_tokens([request.text])[0][0].strip()
    after = editor.rows()
    assert after[0][1] == before[0][1], "the 'before' column changed"
    assert after[0][2].startswith(f"[{expected}]") and after[0][2] != after[0][1]
    print(f"\nthe ROME editor answered a click in {seconds:.1f} s (its status: {status})")


def test_case_browser_shows_the_chosen_case(notebook):
    from factlens import data

    browser = Widget(notebook, "cases")
    case = data.counterfact()[1]
    status = browser.status()
    browser.choose("case", str(case.case_id))
    browser.settled(status, QUICK)
    assert case.prompt.replace("{}", case.subject) in browser.results()[0]


def test_many_edits_widget_runs_the_sequence_and_says_what_held(notebook, gemma):
    from factlens import data  # noqa: F401  (MANY_CASES and MANY_YARDSTICK name it)
    from factlens.editing import sequences

    many = Widget(notebook, "many-edits")
    status = many.status()
    many.choose("method", "ROME")
    many.click("go")
    status = many.settled(status, SLOW)
    run = sequences.run_sequence(gemma, eval(MANY_CASES), sequences.editor(gemma, "ROME"), eval(MANY_YARDSTICK),
                                 every=2, progress=False)
    held = run.final("efficacy_newest")["value"]
    assert status.startswith(f"run 1: ROME, 2 edits: {held:.0f}% of the edits held, model restored"), status
    assert many.cell.find_elements(many.by.CSS_SELECTOR, ".factlens-result img"), "no curves drawn"


# --- make lab ----------------------------------------------------------------------------------------


def test_make_lab_serves_the_chapters_also_as_root(tmp_path):
    """``make lab`` as a reader types it (``install`` taken as done), on a free port: it serves a
    chapter's notebook; as root (containers, this machine) it passed --allow-root to do so."""
    port, token = free_port(), secrets.token_hex(16)
    command = ["make", "-o", "install", "lab", f"LAB_ARGS={' '.join(lab_arguments(port, token, tmp_path))}"]
    server = start_server(command, ROOT, server_env(tmp_path), port, token, tmp_path / "lab.log")
    try:
        chapter = server.api("api/contents/lama/lama.ipynb")
        assert chapter["type"] == "notebook" and chapter["content"]["cells"]
        with urllib.request.urlopen(f"{server.url}lab/tree/lama/lama.ipynb?token={token}", timeout=30) as page:
            assert page.status == 200 and b"JupyterLab" in page.read()
    finally:
        server.stop()
    # make prints the command it runs (after "make[1]: Entering directory" when make runs make)
    echoed = next(line for line in (tmp_path / "lab.log").read_text().splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in echoed) == (os.geteuid() == 0), echoed
