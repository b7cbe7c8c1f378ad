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

import base64
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
    # the chapter "What came after": two CounterFact cases traced and edited at two layers by a short ROME (5
    # steps of v*), the same cases in the wild (unedited and edited), the knockout explorer at its defaults
    "after": """\
from dataclasses import replace

from factlens.editing import in_the_wild, localization, rome
from factlens.show import after_widgets

after_cases = data.counterfact()[:2]
fast_rome = replace(rome.default_hparams(model), v_steps=5)
located = localization.localize_and_edit(model, after_cases, localization.LocalizationSettings(
    (4, 6), trace=tracing.TraceSettings("mlp", samples=2), hidden=False), fast_rome, progress=False)
wild = {"unedited": in_the_wild.evaluate_in_the_wild(model, after_cases, progress=False),
        "ROME": in_the_wild.evaluate_in_the_wild(model, after_cases, rome.ROME(fast_rome, progress=False),
                                                 progress=False)}""",
    "localization": "after_widgets.localization_browser(located, after_cases)",
    "wild": "after_widgets.wild_case_browser(wild, after_cases)",
    "knockout": "after_widgets.knockout_explorer(model)",
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

    def rows(self, result: int = 0, index: bool = False) -> list[list[str]]:
        """The data rows of a result's table, each its cells' text; ``index``: with the row's index (a pandas
        table's th) first."""
        table = self.cell.find_elements(self.by.CSS_SELECTOR, ".factlens-result")[result]
        rows = [[td.text for td in tr.find_elements(self.by.CSS_SELECTOR, "th, td" if index else "td")]
                for tr in table.find_elements(self.by.CSS_SELECTOR, "tbody tr")]
        return [row for row in rows if row]  # a header row of th only is not data

    def image(self) -> str:
        """The src of the cell's last image (a figure: its PNG as a data URL)."""
        return self.cell.find_elements(self.by.CSS_SELECTOR, ".jp-OutputArea-output img")[-1].get_attribute("src")

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

    def nudge(self, name: str, handle: str, steps: int) -> None:
        """Move a slider's ``handle`` (``"lower"``, ``"upper"``; a plain slider's only one is ``"lower"``) by
        ``steps`` with the arrow keys, as a person does after clicking it."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        knob = self.control(name, f".noUi-handle-{handle}")
        self.browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus()", knob)
        key = Keys.ARROW_RIGHT if steps > 0 else Keys.ARROW_LEFT
        ActionChains(self.browser).send_keys(*[key] * abs(steps)).perform()

    def readout(self, name: str) -> list[int]:
        """The numbers a slider shows beside it (a range slider's two)."""
        return [int(n) for n in re.findall(r"-?\d+", self.control(name, ".widget-readout").text)]

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


# every change of a widget's status line and last image, kept in the page as it happens (a MutationObserver):
# what a reader saw for a moment, in order; the images once each, by their place in __factlensImages
WATCH = """
const cell = arguments[0];
window.__factlensLog = [];
window.__factlensImages = [];
const record = () => {
  const status = cell.querySelector('.factlens-status');
  const images = cell.querySelectorAll('.jp-OutputArea-output img');
  const src = images.length ? images[images.length - 1].getAttribute('src') : null;
  let image = window.__factlensImages.indexOf(src);
  if (src !== null && image < 0) image = window.__factlensImages.push(src) - 1;
  const entry = {status: status ? status.textContent.trim() : '', image: image};
  const last = window.__factlensLog[window.__factlensLog.length - 1];
  if (!last || last.status !== entry.status || last.image !== entry.image) window.__factlensLog.push(entry);
};
new MutationObserver(record).observe(cell, {subtree: true, childList: true, characterData: true, attributes: true});
record();
return true;
"""


def png_width(src: str) -> int:
    """The width in pixels of a PNG given as a data URL (its IHDR chunk)."""
    head = base64.b64decode(src.split(",", 1)[1][:64])
    assert head[:8] == b"\x89PNG\r\n\x1a\n", src[:40]
    return int.from_bytes(head[16:20], "big")


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text)]


def test_trace_explorer_shows_the_approximate_estimate_first_then_the_trace(notebook, gemma):
    from factlens.core.models import view
    from factlens.locating import tracing
    from factlens.locating.attribution import agreement, attribution_trace

    tracer = Widget(notebook, "trace")
    prompt, subject = "The Louvre is located in the city of", "The Louvre"
    tracer.type("prompt", prompt)
    tracer.type("subject", subject)
    status = tracer.status()
    notebook.execute_script(WATCH, tracer.cell)
    tracer.click("go")
    status = tracer.settled(status, SLOW)
    log = notebook.execute_script("return window.__factlensLog")
    images = notebook.execute_script("return window.__factlensImages")
    run = int(status.split(":", 1)[0].split()[-1])

    # what the reader saw: the estimate alone, labelled approximate, while the trace ran; then both side by side
    shown = list(dict.fromkeys(e["image"] for e in log if e["image"] >= 0))  # none while an output is redrawn
    assert len(shown) == 3, f"not the old figure, the estimate, the trace: {[(e['status'], e['image']) for e in log]}"
    estimate, both = (png_width(images[i]) for i in shown[1:])
    assert estimate < 0.75 * both, (estimate, both)  # one panel, then two
    stages = [e["status"] for e in log if e["image"] == shown[1]]
    assert any(s.startswith(f"trace {run}: estimate shown (approximate); tracing ") and s.endswith("…")
               for s in stages), stages
    assert log[-1]["image"] == shown[2] and log[-1]["status"] == status

    # the numbers are the trace's and the estimate's of this prompt, computed here with the same settings
    settings = tracing.TraceSettings(samples=2, window=3).for_depth(view(gemma).n_layers)  # the notebook's
    delta = tracing.corruption(gemma, prompt, subject, settings)
    real = tracing.trace(gemma, prompt, subject, settings, delta=delta)
    rho = agreement(attribution_trace(gemma, prompt, subject, settings, delta=delta), real).spearman
    head = f"trace {run}: {real.answer!r}: p "
    assert status.startswith(head) and "; estimate ρ " in status, status
    shown_numbers = numbers(status[len(head):])[:3]
    assert shown_numbers == pytest.approx([real.clean_prob, real.corrupted_prob, rho], abs=0.011), status


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


# --- the chapter "What came after" -------------------------------------------------------------------


@pytest.fixture(scope="module")
def after(gemma) -> dict:
    """The notebook's "after" cell run again here: the same cases, settings and seeds, so its results."""
    from factlens import data
    from factlens.locating import tracing

    namespace = {"model": gemma, "data": data, "tracing": tracing}
    exec(CELLS["after"], namespace)
    return namespace


def test_localization_browser_shows_the_chosen_cases_effects_and_edits_per_layer(notebook, after):
    from factlens.show import after_widgets

    located, cases = after["located"], after["after_cases"]
    browser = Widget(notebook, "localization")

    def check(case) -> None:
        """The case's request, the layer its trace points to and where the edit does best, and per layer its
        tracing effects and ROME's rewrite score as localize_and_edit computes them here."""
        rows = located[located["case_id"] == case.case_id].sort_values("layer").set_index("layer")
        text = browser.results()[0]
        assert text.startswith(f"{case.filled_prompt} [{case.target_true} → {case.target_new}]"), text
        traced = rows["mlp_effect"].idxmax() if rows["mlp_effect"].notna().any() else None
        assert (f"the trace points to layer {traced}; ROME's edit does best at layer "
                f"{rows['rewrite_score'].idxmax()}") in text
        columns = [c for c in after_widgets._LOCALIZATION_COLUMNS if c in rows]
        shown = browser.rows(index=True)
        assert [int(row[0]) for row in shown] == rows.index.tolist()
        for row, (_, values) in zip(shown, rows[columns].iterrows()):
            assert [float(x) for x in row[1:]] == pytest.approx(values.tolist(), abs=2e-3, nan_ok=True), row

    check(cases[0])
    figure, status = browser.image(), browser.status()
    browser.choose("case", str(cases[1].case_id))
    status = browser.settled(status, QUICK)
    assert status.startswith(f"case 2: case {cases[1].case_id}, ")
    check(cases[1])
    assert browser.image() != figure, "the figure was not redrawn"


def test_wild_case_browser_shows_what_each_edited_model_said(notebook, after):
    wild, cases = after["wild"], after["after_cases"]
    browser = Widget(notebook, "wild")

    def check(case) -> None:
        """Per method and prompt, the scores and the text in_the_wild computes here for this case."""
        expected = []
        for method, frame in wild.items():
            r = frame[frame["case_id"] == case.case_id].iloc[0]
            for kind, prompt in (("rewrite", case.filled_prompt), ("paraphrase", case.paraphrase_prompts[0])):
                expected.append([method, kind, f"{r[f'teacher_forced_{kind}']:.2f}", f"{r[f'probability_{kind}']:.0f}",
                                 f"{r[f'generated_{kind}']:.0f}", " ".join(f"{prompt} {r[f'text_{kind}']}".split())])
        assert browser.results()[0].startswith(f"{case.filled_prompt} [{case.target_true} → {case.target_new}]")
        assert [[*row[:5], " ".join(row[5].split())] for row in browser.rows()] == expected

    check(cases[0])
    status = browser.status()
    browser.choose("case", str(cases[1].case_id))
    status = browser.settled(status, QUICK)
    assert status.startswith(f"case 2: case {cases[1].case_id}, ")
    check(cases[1])


KNOCKED = re.compile(r"knock out (\d+): p\((.*)\) (\d\.\d{3}) → (\d\.\d{3}) \(([+-]\d+)%\), [\d.]+ s$")


def test_knockout_explorer_knocks_out_the_moved_window_and_recovers_from_a_missing_subject(notebook, gemma):
    from factlens.locating.knockout import knock_out

    explorer = Widget(notebook, "knockout")
    prompt, subject = "The Eiffel Tower is located in the city of", "The Eiffel Tower"  # the explorer's default

    def check(status: str, prompt: str, subject: str, source: str, layers: list[int]) -> None:
        """The status and table show knock_out's result for this prompt, source and window, computed here."""
        knocked = knock_out(gemma, prompt, subject, source, range(layers[0], layers[1] + 1))
        match = KNOCKED.match(status)
        assert match, status
        assert match[2] == knocked.answer.strip()
        assert [float(match[3]), float(match[4])] == pytest.approx([knocked.base_prob, knocked.prob], abs=1.5e-3)
        assert int(match[5]) == pytest.approx(100 * knocked.relative_change, abs=1)
        table = explorer.cell.find_element(explorer.by.CSS_SELECTOR, ".factlens-result caption").text
        assert f"from the {source} positions in layers {layers[0]}-{layers[1]}" in table
        rows = explorer.rows()
        assert [row[0].strip() for row in rows] == [token.strip() for token, _ in knocked.top_after]
        assert [float(row[1]) for row in rows] == pytest.approx([p for _, p in knocked.top_after], abs=1.5e-3)

    status = explorer.status()
    first = explorer.readout("layers")
    assert len(first) == 2 and first[0] >= 3, first
    check(status, prompt, subject, "subject", first)

    # move the window 3 layers down (the lower handle first) and cut from the last position instead
    explorer.nudge("layers", "lower", -3)
    explorer.nudge("layers", "upper", -3)
    moved = [first[0] - 3, first[1] - 3]
    wait_for(lambda: explorer.readout("layers") == moved, QUICK,
             f"the window did not move to {moved}: {explorer.readout('layers')}")
    explorer.choose("source", "last")
    explorer.click("go")
    status = explorer.settled(status, QUICK)
    check(status, prompt, subject, "last", moved)

    # bad input: a subject the prompt does not hold gets one line, the table stays; the next good input works
    table = explorer.rows()
    prompt = "The Colosseum is located in the city of"
    explorer.type("prompt", prompt)
    explorer.click("go")
    status = explorer.settled(status, QUICK)
    assert status.startswith(f"⚠ subject {subject!r} does not occur in prompt {prompt!r}") and "\n" not in status
    assert explorer.rows() == table
    subject = "The Colosseum"
    explorer.type("subject", subject)
    explorer.choose("source", "subject")
    explorer.click("go")
    status = explorer.settled(status, QUICK)
    check(status, prompt, subject, "subject", moved)
    assert status.startswith("knock out 4: ")


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
