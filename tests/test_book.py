"""The book builder (factlens.book): parameters, the table of contents, results, execution, the site."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml

from factlens import book
from factlens.book import BookError
from factlens.evidence.claims import Claim
from factlens.evidence.papers import PaperNumber
from factlens.evidence.results import load_results, save_results


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "factlens.book", "--no-progress", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_builder_imports_no_torch():
    """The builder and the data loaders start fast: neither imports torch (nor TransformerLens)."""
    code = ("import sys, factlens.book, factlens.book.__main__, factlens.data, factlens.core.cache; "
            "print(sorted(m for m in ('torch', 'transformer_lens', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- parameters


def test_common_parameters_per_profile(tmp_path):
    for profile, model in [("smoke", "gemma-3-270m"), ("cpu", "gemma-3-270m"), ("full", "gemma-3-270m"),
                           ("paper", "gpt2-xl")]:
        params = book.common_parameters(profile, tmp_path / "results")
        assert params == {"model_name": model, "profile": profile, "results_dir": str((tmp_path / "results").resolve())}
    with pytest.raises(BookError, match="unknown profile"):
        book.common_parameters("laptop", tmp_path)


def test_sidecar_merging_and_overrides(tmp_path):
    nb = tmp_path / "chapter.ipynb"
    nb.write_text("{}")
    assert book.notebook_parameters(nb, "smoke", tmp_path)["model_name"] == "gemma-3-270m"  # no sidecar
    (tmp_path / "chapter.yml").write_text(
        yaml.safe_dump({"smoke": {"n_facts": 4, "model_name": "tiny-gpt2"}, "cpu": {"n_facts": 100}})
    )
    smoke = book.notebook_parameters(nb, "smoke", tmp_path)
    assert smoke["n_facts"] == 4 and smoke["model_name"] == "tiny-gpt2" and smoke["profile"] == "smoke"
    cpu = book.notebook_parameters(nb, "cpu", tmp_path, {"model_name": "gpt2", "n_facts": 7})
    assert cpu == {"model_name": "gpt2", "profile": "cpu", "results_dir": str(tmp_path.resolve()), "n_facts": 7}
    paper = book.notebook_parameters(nb, "paper", tmp_path)  # profile missing from the sidecar
    assert paper == book.common_parameters("paper", tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [("smokee: {n: 1}\n", "unknown profile"), ("smoke: [1, 2]\n", "must be a mapping"),
     ("- 1\n", "expected a mapping")],
)
def test_bad_sidecars_are_errors(tmp_path, content, message):
    nb = tmp_path / "chapter.ipynb"
    (tmp_path / "chapter.yml").write_text(content)
    with pytest.raises(BookError, match=message):
        book.notebook_parameters(nb, "smoke", tmp_path)


def test_parse_overrides_types():
    parsed = book.parse_overrides(
        ["model_name=gpt2-xl", "n=10", "lr=1e-3", "flag=true", "off=False", "x=none", "layers=[1, 2]", "s=a=b", "n=11"]
    )
    assert parsed == {
        "model_name": "gpt2-xl", "n": 11, "lr": 1e-3, "flag": True, "off": False, "x": None, "layers": [1, 2],
        "s": "a=b",
    }
    for bad in ["novalue", "=3", "not a name=1"]:
        with pytest.raises(BookError, match="KEY=VALUE"):
            book.parse_overrides([bad])


def _notebook(path: Path, parameters: str) -> Path:
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": parameters, "outputs": []}]
    path.write_text(json.dumps({"cells": cells}))
    return path


def test_build_parameters_only_for_notebooks_that_declare_them(tmp_path):
    build = tmp_path / "_build"
    for name, files in [("smollm2-135m", ["lama.json"]), ("empty", []), ("gpt2", ["claims.json"])]:
        (build / name / "results").mkdir(parents=True)
        for f in files:
            (build / name / "results" / f).write_text("{}")
    (build / "results").mkdir()
    claims = _notebook(tmp_path / "claims.ipynb", "model_name = 'x'\nother_results = []  # other builds\n")
    chapter = _notebook(tmp_path / "lama.ipynb", "model_name = 'x'\nn_facts = 3\n")
    assert book.declared_parameters(claims) == {"model_name", "other_results"}
    found = [str((build / "gpt2" / "results").resolve()), str((build / "smollm2-135m" / "results").resolve())]
    assert book.build_parameters(claims, build) == {"other_results": found}  # sorted, empty folders left out
    assert book.build_parameters(chapter, build) == {}
    # -p wins, a relative folder is taken from the working directory
    given = book.build_parameters(claims, build, {"other_results": ["rel/results"]})
    assert given == {"other_results": [str(Path("rel/results").resolve())]}
    assert book.build_parameters(claims, build, {"other_results": []}) == {"other_results": []}
    with pytest.raises(BookError, match="other_results expects a folder or a JSON list"):
        book.build_parameters(claims, build, {"other_results": 3})
    with pytest.raises(BookError, match="parameters cell is not valid Python"):
        book.declared_parameters(_notebook(tmp_path / "bad.ipynb", "x = = 1"))


def test_kernel_environment():
    env = book.kernel_environment({"PATH": "/bin", "PYTHONPATH": "/elsewhere"})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"  # kernels do not spin against each other
    assert env["PYTHONPATH"].split(":")[0].endswith("lib") and env["PYTHONPATH"].split(":")[1] == "/elsewhere"
    assert env["JUPYTER_PATH"].split(":")[0] == str(Path(sys.prefix) / "share" / "jupyter")
    assert book.kernel_environment({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's wins
    assert book.kernel_environment(env) == env  # idempotent


# --------------------------------------------------------------------------- table of contents


def _make_book(root: Path, toc: dict, files: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "_toc.yml").write_text(yaml.safe_dump(toc))
    (root / "_config.yml").write_text("title: t\n")
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("{}" if f.endswith(".ipynb") else "# x\n")
    return root


def test_toc_parsing_nested(tmp_path):
    toc = {
        "format": "jb-book",
        "root": "chapters/intro",
        "parts": [
            {"caption": "Probing", "chapters": [{"file": "chapters/lama/lama"}]},
            {
                "caption": "ROME",
                "chapters": [
                    {"file": "chapters/rome/index",
                     "sections": [{"file": "chapters/rome/tracing"}, {"file": "chapters/rome/editing.ipynb"}]},
                    {"url": "https://example.org", "title": "elsewhere"},
                ],
            },
            {"chapters": [{"file": "chapters/playground"}]},
        ],
    }
    files = ["chapters/intro.md", "chapters/lama/lama.ipynb", "chapters/rome/index.md", "chapters/rome/tracing.ipynb",
             "chapters/rome/editing.ipynb", "chapters/playground.ipynb"]
    root = _make_book(tmp_path, toc, files)
    assert book.toc_documents(root) == [Path(f) for f in files]
    assert book.toc_notebooks(root) == [Path(f) for f in files if f.endswith(".ipynb")]
    assert book.find_root(root / "chapters" / "rome") == root.resolve()


def test_toc_missing_document_is_an_error(tmp_path):
    root = _make_book(tmp_path, {"format": "jb-book", "root": "intro", "chapters": [{"file": "gone"}]}, ["intro.md"])
    with pytest.raises(BookError, match="'gone' is listed"):
        book.toc_documents(root)


def test_only_selection():
    nbs = [Path(p) for p in ["chapters/lama/lama.ipynb", "chapters/memories/memories.ipynb",
                             "chapters/rome/tracing.ipynb", "chapters/rome/editing.ipynb", "chapters/playground.ipynb"]]
    assert book.select(nbs, None) == nbs
    assert book.select(nbs, ["lama"]) == nbs[:1]
    assert book.select(nbs, ["rome"]) == nbs[2:4]
    assert book.select(nbs, ["rome/tracing"]) == [nbs[2]]
    assert book.select(nbs, ["tracing.ipynb"]) == [nbs[2]]
    assert book.select(nbs, ["playground", "lama"]) == [nbs[0], nbs[4]]  # toc order, not argument order
    for bad in ["rom", "ama", "tracing/rome", ""]:
        with pytest.raises(BookError, match="matches no notebook"):
            book.select(nbs, [bad])


# --------------------------------------------------------------------------- results


def test_save_results_round_trip(tmp_path):
    metrics = {
        "p_at_1": np.float32(0.25),
        "count": np.int64(7),
        "ok": np.bool_(True),
        "per_layer": np.arange(3, dtype=np.float64) / 2,
        "tensor": torch.tensor([[1.5, 2.0]]),
        "scalar_tensor": torch.tensor(3),
        "nan": float("nan"),
        "inf": np.float64(np.inf),
        "nested": {1: (np.int32(1), torch.tensor(0.5, dtype=torch.bfloat16))},
    }
    results = tmp_path / "results"
    path = save_results("lama", metrics, model_name="gemma-3-270m", profile="smoke",
                        parameters={"n_facts": np.int64(10), "out": tmp_path}, results_dir=results)
    assert path == results / "lama.json"
    assert [p.name for p in results.iterdir()] == ["lama.json"]  # no temporary left behind
    record = load_results("lama", results)
    assert record == json.loads(path.read_text())
    assert record["model"] == "gemma-3-270m" and record["profile"] == "smoke" and record["chapter"] == "lama"
    assert record["parameters"] == {"n_facts": 10, "out": str(tmp_path)}
    m = record["metrics"]
    assert math.isclose(m["p_at_1"], 0.25) and m["count"] == 7 and m["ok"] is True
    assert m["per_layer"] == [0.0, 0.5, 1.0] and m["tensor"] == [[1.5, 2.0]] and m["scalar_tensor"] == 3
    assert m["nan"] is None and m["inf"] is None and m["nested"] == {"1": [1, 0.5]}
    assert record["factlens_version"] and record["timestamp"]
    # overwritten atomically by a second run
    save_results("lama", {"p_at_1": 0.5}, model_name="gpt2", profile="cpu", parameters={}, results_dir=results)
    assert load_results("lama", results)["metrics"] == {"p_at_1": 0.5}


def test_load_results_missing_or_corrupt(tmp_path):
    assert load_results("nothing", tmp_path) is None
    (tmp_path / "bad.json").write_text("{not json")
    assert load_results("bad", tmp_path) is None
    with pytest.raises(ValueError, match="plain file stem"):
        save_results("../x", {}, model_name="m", profile="smoke", parameters={}, results_dir=tmp_path)
    with pytest.raises(TypeError, match="cannot store"):
        save_results("x", {"f": object()}, model_name="m", profile="smoke", parameters={}, results_dir=tmp_path)


# --------------------------------------------------------------------------- what the site shows


def _cell(source, tags=(), outputs=()):
    return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": source, "outputs": list(outputs)}


def test_for_the_site_shows_one_parameters_cell_with_the_values_used():
    own = ("model_name = 'gemma-3-270m'  # the model\nn_facts = 20  # facts (paper: 1,000)\n"
           "results_dir = '../_build'\nseed = 0")
    injected = ("# Parameters\nmodel_name = \"gpt2\"\nresults_dir = \"/tmp/x/results\"\nn_facts = 3\nextra = [1, 2]\n"
                "other_results = [\"/tmp/x/other/results\"]\n")
    bar = {"output_type": "display_data", "data": {
        "application/vnd.jupyter.widget-view+json": {"model_id": "x"},
        "text/plain": "probing (common vocabulary):  40%|####      | 480/1196 [00:05<00:07, 95.1it/s]"}}
    stderr_bar = {"output_type": "stream", "name": "stderr",
                  "text": "Loading weights: 100%|##| 236/236 [00:00<00:00]\n"}
    kept = [{"output_type": "stream", "name": "stdout", "text": "P@1 40%| of facts\n"},
            {"output_type": "display_data",
             "data": {"application/vnd.jupyter.widget-view+json": {}, "text/plain": "VBox(...)"}}]
    nb = {"cells": [_cell(own, ["parameters"]), _cell(injected, ["injected-parameters"]),
                    _cell("run()", outputs=[bar, stderr_bar, *kept])]}
    site = book.for_the_site(nb)
    assert len(site["cells"]) == 2  # the injected cell is gone
    assert site["cells"][0]["source"] == ("model_name = \"gpt2\"  # the model\nn_facts = 3  # facts (paper: 1,000)\n"
                                          "results_dir = '../_build'\nseed = 0\nextra = [1, 2]")
    assert site["cells"][1]["outputs"] == kept  # progress bars dropped, everything else kept


# --------------------------------------------------------------------------- execution and the site (fixture book)


@pytest.mark.book
def test_failing_cell_fails_the_build(fixture_book, tmp_path):
    out = run_cli("--root", str(fixture_book), "--profile", "smoke", "--only", "broken",
                  "--build-dir", str(tmp_path / "b"))
    assert out.returncode != 0
    err = out.stderr
    assert "broken/broken.ipynb" in err
    assert "cell 2 (`value = 41`)" in err  # index in the source notebook, and its first line
    assert "ValueError: fixture failure 42" in err
    assert (tmp_path / "b" / "executed" / "broken" / "broken.ipynb").is_file()  # kept, with the traceback
    assert not (tmp_path / "b" / "html").exists()


def test_a_cell_past_the_timeout_runs_the_notebook_once_more_then_fails(fixture_book, tmp_path):
    """--cell-timeout: a cell past it executes the notebook again from the start; a second time fails."""
    broken = fixture_book / "broken" / "broken.ipynb"
    nb = json.loads(broken.read_text())
    nb["cells"] = [c for c in nb["cells"] if c["cell_type"] == "markdown"][:1] + [
        {"cell_type": "code", "execution_count": None, "id": "sleeps", "metadata": {}, "outputs": [],
         "source": ["import time\n", "time.sleep(60)"]}]
    broken.write_text(json.dumps(nb))
    out = run_cli("--root", str(fixture_book), "--profile", "smoke", "--only", "broken", "--cell-timeout", "2",
                  "--no-html", "--build-dir", str(tmp_path / "b"))
    assert out.returncode == 1
    assert out.stdout.count("a cell ran past 2.0 s; executing the notebook again") == 1
    assert "broken/broken.ipynb: a cell ran past 2.0 s twice" in out.stderr


@pytest.mark.book
def test_fixture_book_parameters_and_site(fixture_book, tmp_path):
    build = tmp_path / "b"
    # run from elsewhere: --root decides, and the kernel's cwd is the notebook's folder
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = run_cli("--root", str(fixture_book), "--profile", "smoke", "--only", "params", "-p", "label=from-cli",
                  "--build-dir", str(build), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[1/1] demo/params.ipynb" in out.stdout
    record = load_results("params", build / "results")
    assert record["model"] == "gemma-3-270m" and record["profile"] == "smoke"
    assert record["parameters"] == {"n_facts": 3, "label": "from-cli"}  # sidecar's smoke section, then -p
    assert record["metrics"]["cwd"] == str((fixture_book / "demo").resolve())
    assert record["metrics"]["omp_wait_policy"] == "PASSIVE"  # set by the builder for its kernels
    executed = build / "executed" / "demo" / "params.ipynb"
    nb = json.loads(executed.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "n_facts = 3" in "".join(injected[0]["source"])
    # the site renders the executed notebook (with outputs), not the clean source
    index = build / "html" / "index.html"
    assert index.is_file()
    page = (build / "html" / "demo" / "params.html").read_text()
    assert "PARAMS-OUTPUT model=gemma-3-270m profile=smoke n_facts=3 label=from-cli" in page
    # one parameters cell, showing the value the run used (papermill's injected copy is not shown)
    assert re.findall(r'n_facts</span> <span class="o">=</span> <span class="mi">(\d+)', page) == ["3"]
    assert (build / "html" / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()  # math renders offline
    assert (build / "html" / "broken" / "broken.html").is_file()  # not executed: shown without outputs
    record = book.read_record(executed)
    assert f"Executed {record['executed_at'][:10]}" in page  # when and where it ran, said on its page
    assert f"UTC on {record['cpu']} ({record['cores']} cores" in page
    assert not (fixture_book / "_build").exists()  # sources untouched


#: the keys of a claims.json record (issue 12)
CLAIM_KEYS = {"chapter", "id", "statement", "model", "paper", "ours", "verdict"}


def _claim(chapter: str, claim_id: str, model: str, ours: float, ci: tuple[float, float], n: int) -> dict:
    paper = PaperNumber(0.5, "Meng et al. 2022", "Table 4", "GPT-2 XL", tau=0.1, tau_reason="a test's stated margin")
    return Claim(chapter, claim_id, f"the {claim_id} claim", model, paper, ours, ci, n, reference=0.0).to_record()


def _check_claims_file(path: Path) -> list[dict]:
    records = json.loads(path.read_text())
    assert isinstance(records, list)
    for r in records:
        assert CLAIM_KEYS <= set(r) and set(r["paper"]) >= {"value", "source"}, r
        assert set(r["ours"]) >= {"value", "n", "ci"} and len(r["ours"]["ci"]) == 2, r
    return records


@pytest.mark.book
def test_claims_page_lists_every_claim_and_both_models(fixture_book, tmp_path, repo_root):
    shutil.copy2(repo_root / "chapters" / "claims.ipynb", fixture_book / "claims.ipynb")
    toc = yaml.safe_load((fixture_book / "_toc.yml").read_text())
    (fixture_book / "_toc.yml").write_text(yaml.safe_dump({**toc, "chapters": [*toc["chapters"], {"file": "claims"}]}))
    build = tmp_path / "b"
    for folder, model, ours in [(build / "results", "Model A", 0.52), (build / "second" / "results", "Model B", 0.1)]:
        save_results("tracing", {}, model_name=model, profile="smoke", parameters={}, results_dir=folder,
                     claims=[_claim("tracing", "aie", model, ours, (ours - 0.05, ours + 0.05), 40)])
    save_results("lama", {}, model_name="Model A", profile="smoke", parameters={}, results_dir=build / "results",
                 claims=[_claim("lama", "p_at_1", "Model A", 0.2, (0.19, 0.21), 1000)])
    out = run_cli("--root", str(fixture_book), "--profile", "smoke", "--only", "claims", "--no-html",
                  "--build-dir", str(build))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "other_results=['" + str((build / "second" / "results").resolve()) + "']" in out.stdout
    records = _check_claims_file(build / "results" / "claims.json")  # this build's claims only
    assert [(r["chapter"], r["id"], r["model"], r["verdict"]) for r in records] == [
        ("lama", "p_at_1", "Model A", "partly"), ("tracing", "aie", "Model A", "reproduced")]
    nb = json.loads((build / "executed" / "claims.ipynb").read_text())
    shown = "".join("".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("text", ""))
                    for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"])
    assert "2 claims of this build" in shown and "1 from 1 other build(s)" in shown
    assert "Model A" in shown and "Model B" in shown  # one verdict column per model
    assert "0.1 [0.05, 0.15]" in shown and "0.52 [0.47, 0.57]" in shown  # B's tracing claim beside A's


# --------------------------------------------------------------------------- incremental builds


def executed_in(log: str) -> list[str]:
    """The notebooks a build's log says it executed, in order."""
    return re.findall(r"^\[\d+/\d+\] (\S+) done in", log, flags=re.M)


@pytest.fixture
def stable_library(monkeypatch):
    """The library's part of the keys held fixed: other work on lib/ while a test runs must not
    count as a change between its builds."""
    monkeypatch.setattr(book.keys, "library_digest", lambda: "the library")


def _build(root: Path, build: Path, **options) -> str:
    """One in-process build of the fixture book (smoke profile, no site); returns its log."""
    from factlens.book.__main__ import build as build_book

    lines: list[str] = []
    build_book("smoke", root=root, build_dir=build, html=False, progress_bar=False,
               log=lambda *a, **_: lines.append(" ".join(map(str, a))), **options)
    return "\n".join(lines)


def _edit_cell(path: Path, index: int, edit) -> None:
    nb = json.loads(path.read_text())
    nb["cells"][index]["source"] = edit("".join(nb["cells"][index]["source"]))
    path.write_text(json.dumps(nb, indent=1))


def _printed(executed: Path) -> str:
    nb = json.loads(executed.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"])


@pytest.mark.book
def test_rebuilds_execute_only_what_changed(fixture_book, tmp_path, stable_library):
    build = tmp_path / "b"
    params, reader = "demo/params.ipynb", "demo/reader.ipynb"
    executed = build / "executed" / params
    log = _build(fixture_book, build, only=["demo"])
    assert executed_in(log) == [params, reader]
    assert re.search(r"^  execute +demo/params.ipynb +unknown +no successful execution recorded$", log, re.M)
    run_id = re.search(r"RUN-ID \w+", _printed(executed)).group()
    records = {nb: book.read_record(build / "executed" / nb) for nb in (params, reader)}
    assert records[params]["writes"] == ["params.json"] and records[reader]["writes"] == []

    log = _build(fixture_book, build, only=["demo"])  # nothing changed
    assert executed_in(log) == [] and "executed: none" in log
    assert re.search(r"^  up to date +demo/reader.ipynb +0 s$", log, re.M)
    assert re.search(r"total: 0 execute, 0 re-render, 2 up to date; about 0 s$", log, re.M)
    assert {nb: book.read_record(build / "executed" / nb) for nb in records} == records

    _edit_cell(fixture_book / params, 0, lambda text: text + "\n\nNEW PROSE, no new numbers.")
    log = _build(fixture_book, build, only=["demo"])  # markdown only: re-rendered, outputs kept
    assert executed_in(log) == [] and re.search(r"^  re-render +demo/params.ipynb +0 s +markdown changed$", log, re.M)
    nb = json.loads(executed.read_text())
    nbformat.validate(nbformat.reads(executed.read_text(), as_version=4))
    assert "NEW PROSE" in nb["cells"][0]["source"] and run_id in _printed(executed)
    assert [c["metadata"].get("tags", []) for c in nb["cells"][1:3]] == [["parameters"], ["injected-parameters"]]
    assert book.read_record(executed) == records[params]
    assert executed_in(_build(fixture_book, build, only=["demo"])) == []  # and then up to date

    _edit_cell(fixture_book / reader, 2, lambda text: text + "  # a code change")
    log = _build(fixture_book, build, only=["demo"])
    assert executed_in(log) == [reader] and re.search(r"^  execute +demo/reader.ipynb +\d+ s +code changed$", log, re.M)

    sidecar = fixture_book / "demo" / "params.yml"
    sidecar.write_text(sidecar.read_text().replace("n_facts: 3", "n_facts: 4"))
    log = _build(fixture_book, build, only=["demo"])  # a parameter: params, then reader, which reads its results
    assert executed_in(log) == [params, reader]
    assert re.search(r"^  execute +demo/reader.ipynb +\d+ s +reads results rewritten before it$", log, re.M)
    assert "READER n_facts=4" in _printed(build / "executed" / reader) and run_id not in _printed(executed)

    assert executed_in(_build(fixture_book, build, only=["reader"], force=True)) == [reader]


@pytest.mark.book
def test_an_interrupted_build_resumes(fixture_book, tmp_path, stable_library, capsys, monkeypatch):
    from factlens.book import execution
    from factlens.book.__main__ import main

    build = tmp_path / "b"
    args = ["--root", str(fixture_book), "--profile", "smoke", "--only", "demo", "--no-html", "--no-progress",
            "--build-dir", str(build)]
    assert main([*args, "--stop-after", "1"]) == 130  # what the smoke book does after its second chapter
    assert executed_in(capsys.readouterr().out) == ["demo/params.ipynb"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert executed_in(out) == ["demo/reader.ipynb"] and "[1/2] demo/params.ipynb up to date" in out

    # interrupted inside a notebook: its old record is gone, so the next build executes it again
    def interrupted(chapter, **_):
        chapter.output.write_text("{}")
        raise KeyboardInterrupt

    _edit_cell(fixture_book / "demo" / "params.ipynb", 2, lambda text: text + "  # a code change")
    monkeypatch.setattr(execution, "run_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(fixture_book, build, only=["demo"])
    assert book.read_record(build / "executed" / "demo" / "params.ipynb") is None
    monkeypatch.undo()
    monkeypatch.setattr(book.keys, "library_digest", lambda: "the library")
    assert executed_in(_build(fixture_book, build, only=["demo"])) == ["demo/params.ipynb", "demo/reader.ipynb"]


@pytest.mark.book
def test_a_failed_chapter_is_executed_again_and_those_before_it_are_not(fixture_book, tmp_path, stable_library):
    build = tmp_path / "b"
    with pytest.raises(BookError, match="fixture failure 42"):
        _build(fixture_book, build)  # fails in its second notebook
    assert book.read_record(build / "executed" / "broken" / "broken.ipynb") is None
    _edit_cell(fixture_book / "broken" / "broken.ipynb", 2, lambda text: "value = 41")
    log = _build(fixture_book, build)
    assert executed_in(log) == ["broken/broken.ipynb", "demo/reader.ipynb"]
    assert "[1/3] demo/params.ipynb up to date" in log


def test_the_key_counts_code_not_prose(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": "# Title"}, _cell("x = 1", ["parameters"]),
                    _cell("y = load_results('tracing', results_dir)")]}
    key = book.chapter_key(nb, {"n": 1}, {"library": "l"}, tmp_path)
    assert set(key) == {"code", "parameters", "library", "inputs"}
    prose = {"cells": [{"cell_type": "markdown", "source": "# Another title"}, *nb["cells"][1:]]}
    assert book.chapter_key(prose, {"n": 1}, {"library": "l"}, tmp_path) == key
    code = {"cells": [*nb["cells"][:2], _cell("y = load_results('tracing', results_dir)  # why")]}
    assert book.chapter_key(code, {"n": 1}, {"library": "l"}, tmp_path)["code"] != key["code"]
    assert book.chapter_key(nb, {"n": 2}, {"library": "l"}, tmp_path)["parameters"] != key["parameters"]
    # its inputs: the results files it loads by name, or every one when it declares other_results
    assert book.keys.reads(nb) == ["tracing.json"]
    (tmp_path / "tracing.json").write_text("{}")
    assert book.chapter_key(nb, {"n": 1}, {"library": "l"}, tmp_path)["inputs"] != key["inputs"]
    claims = {"cells": [_cell("results_dir = '.'\nother_results = []", ["parameters"])]}
    assert book.keys.reads(claims) == book.keys.EVERY
    before = book.keys.inputs_digest(book.keys.EVERY, tmp_path, {}, own=["claims.json"])
    (tmp_path / "claims.json").write_text("[]")  # its own results do not count
    assert book.keys.inputs_digest(book.keys.EVERY, tmp_path, {}, own=["claims.json"]) == before


def test_library_and_data_digests(tmp_path, monkeypatch):
    lib = tmp_path / "factlens"
    for f in ("core/models.py", "book/site.py"):
        (lib / f).parent.mkdir(parents=True, exist_ok=True)
        (lib / f).write_text("x = 1\n")
    monkeypatch.setattr(book.keys, "_PACKAGE", lib)
    monkeypatch.setattr(book.keys, "_BUILDER", lib / "book")
    digest = book.keys.library_digest()
    (lib / "book" / "site.py").write_text("x = 2\n")  # the builder does not count
    assert book.keys.library_digest() == digest
    (lib / "core" / "models.py").write_text("x = 2\n")
    assert book.keys.library_digest() != digest

    data = tmp_path / "data"
    (data / "lama").mkdir(parents=True)
    (data / "lama" / "P19.jsonl").write_text("{}\n")
    monkeypatch.setenv("FACTLENS_DATA_DIR", str(data))
    digest = book.keys.data_digest()
    assert book.keys.data_digest() == digest
    copy = tmp_path / "copy"  # the same files copied again elsewhere, later: the same key
    (copy / "lama").mkdir(parents=True)
    (copy / "lama" / "P19.jsonl").write_text("{}\n")
    os.utime(copy / "lama" / "P19.jsonl", ns=(10**18, 10**18))
    monkeypatch.setenv("FACTLENS_DATA_DIR", str(copy))
    assert book.keys.data_digest() == digest
    (copy / "lama" / "P19.jsonl").write_text("[]\n")  # one byte changed, the size kept
    assert book.keys.data_digest() != digest
    monkeypatch.setenv("FACTLENS_DATA_DIR", str(data))
    (data / "lama" / "P20.jsonl").write_text("{}\n")
    assert book.keys.data_digest() != digest
    monkeypatch.delenv("FACTLENS_DATA_DIR")  # downloaded from fixed URLs and checked: a constant
    assert book.keys.data_digest() == book.keys.data_digest() != digest


def test_rerendered_keeps_outputs_and_refuses_other_code():
    out = [{"output_type": "stream", "name": "stdout", "text": "42\n"}]
    executed = {"metadata": {"papermill": {}}, "cells": [
        {"cell_type": "markdown", "source": "# Old"}, _cell("n = 1", ["parameters"]),
        _cell("n = 3", ["injected-parameters"]), _cell("print(42)", outputs=out)]}
    source = {"metadata": {}, "cells": [
        {"cell_type": "markdown", "source": "# New"}, _cell("n = 1", ["parameters"]),
        {"cell_type": "markdown", "source": "A new paragraph."}, _cell("print(42)")]}
    nb = book.rerendered(source, executed)
    assert [c["source"] for c in nb["cells"]] == ["# New", "n = 1", "n = 3", "A new paragraph.", "print(42)"]
    assert nb["cells"][-1]["outputs"] == out and nb["metadata"] == {"papermill": {}}
    assert book.rerendered({"cells": [*source["cells"], _cell("print(43)")]}, executed) is None


def test_a_first_build_is_planned_with_the_measured_times(fixture_book, tmp_path):
    """A chapter never executed here is estimated from _timings.yml (its profile and model), marked;
    once executed, its own time replaces that; a broken file is an error that names it."""
    root, build = fixture_book, tmp_path / "build"
    assert book.read_timings(root) == book.Timings("", {})  # no file: no times
    (root / "_timings.yml").write_text(
        "machine: 2 cores of a test CPU\n"
        "seconds:\n  smoke:\n    gpt2:\n      a.ipynb: 75\n"
        "  cpu:\n    tiny-model:\n      a.ipynb: 640.4\n      nowhere.ipynb: 3\n")
    timings = book.read_timings(root)
    chapter = book.Chapter(Path("a.ipynb"), root / "a.ipynb", build / "executed" / "a.ipynb",
                           {"profile": "cpu", "model_name": "tiny-model"})
    (root / "a.ipynb").write_text(json.dumps({"cells": [_cell("x = 1")], "metadata": {}}))
    step = book.assess(chapter, {}, build / "results", timings=timings)
    assert (step.action, step.estimate, step.measured_on) == (book.EXECUTE, 640.4, "2 cores of a test CPU")
    other = book.Chapter(chapter.notebook, chapter.source, chapter.output, {"profile": "cpu", "model_name": "gpt2"})
    assert book.assess(other, {}, build / "results", timings=timings).estimate is None
    chapter.output.parent.mkdir(parents=True)
    chapter.output.write_text(json.dumps({"cells": [], "metadata": {"papermill": {"duration": 12.5}}}))
    assert book.assess(chapter, {}, build / "results", timings=timings).estimate == 12.5  # its own time first
    (root / "_timings.yml").write_text("machine: x\nseconds:\n  cpu: [1, 2]\n")
    with pytest.raises(BookError, match="_timings.yml: expected 'machine' and 'seconds'"):
        book.read_timings(root)
    (root / "_timings.yml").write_text("seconds:\n  cpu:\n    gpt2:\n      a.ipynb: 1\n")
    with pytest.raises(BookError, match="'machine' must name"):
        book.read_timings(root)


def test_the_books_measured_times_name_its_chapters(repo_root):
    timings = book.read_timings(repo_root)
    notebooks = {nb.as_posix() for nb in book.toc_notebooks(repo_root)}
    assert timings.machine and timings.seconds
    for profile, model, notebook in timings.seconds:
        assert profile in book.PROFILES and notebook in notebooks, (profile, model, notebook)
    assert {nb for p, m, nb in timings.seconds if (p, m) == ("cpu", book.PROFILES["cpu"]["model_name"])} == notebooks


def test_the_plan_and_the_execution_note():
    steps = [book.Step(Path("a.ipynb"), book.EXECUTE, "code changed", 512.4, {}, [], []),
             book.Step(Path("chapters/b.ipynb"), book.EXECUTE, "--force", None, {}, [], None),
             book.Step(Path("c.ipynb"), book.RERENDER, "markdown changed", 30.0, {}, [], []),
             book.Step(Path("d.ipynb"), book.UP_TO_DATE, "", 7.0, {}, [], []),
             book.Step(Path("e.ipynb"), book.EXECUTE, "no successful execution recorded", 90.2, {}, [], None,
                       "2 cores of a CPU")]
    assert book.format_plan(steps).splitlines() == [
        "plan:",
        "  execute     a.ipynb              512 s  code changed",
        "  execute     chapters/b.ipynb   unknown  --force",
        "  re-render   c.ipynb                0 s  markdown changed",
        "  up to date  d.ipynb                0 s",
        "  execute     e.ipynb              90 s*  no successful execution recorded",
        "  total: 3 execute, 1 re-render, 1 up to date; about 603 s + 1 unknown",
        "  * never executed here: the time measured on 2 cores of a CPU (_timings.yml)",
    ]
    record = {"executed_at": "2026-12-05T00:40:12+00:00", "seconds": 511.6, "cpu": "AMD EPYC", "cores": 2,
              "cpu_features": ["avx512f"]}
    assert book.describe_execution(record) == "Executed 2026-12-05 00:40 UTC on AMD EPYC (2 cores, avx512f) in 512 s."
    nb = book.with_execution_note({"cells": [{"cell_type": "markdown", "source": "# T"}, _cell("x")]}, record)
    assert nb["cells"][1]["source"] == "*Executed 2026-12-05 00:40 UTC on AMD EPYC (2 cores, avx512f) in 512 s.*"
    assert set(book.machine()) == {"cpu", "cores", "cpu_features"} and book.machine()["cpu"]


# --------------------------------------------------------------------------- the real book


@pytest.mark.book
@pytest.mark.slow
def test_real_book_smoke_build_resumed_after_its_second_chapter(repo_root, smoke_book):
    """The smoke book was built in two steps (tests/conftest.py): interrupted after its second
    chapter, then resumed: the second build executed every chapter but the first two."""
    build = smoke_book.parent
    notebooks = [str(nb) for nb in book.toc_notebooks(repo_root)]
    assert executed_in((build / "interrupted.log").read_text()) == notebooks[:2]
    assert executed_in((build / "resumed.log").read_text()) == notebooks[2:]
    for nb in notebooks:  # every chapter recorded, each wrote its results
        record = book.read_record(build / "executed" / nb)
        assert record is not None and record["writes"], nb
        assert all((build / "results" / name).is_file() for name in record["writes"]), nb


@pytest.mark.book
@pytest.mark.slow
def test_real_book_smoke_profile(repo_root, smoke_book):
    """Every notebook of _toc.yml executes with the smoke profile, and the site builds."""
    build = smoke_book.parent
    assert (smoke_book / "index.html").is_file()
    assert (smoke_book / "chapters" / "intro.html").is_file()
    for nb in book.toc_notebooks(repo_root):
        assert (build / "executed" / nb).is_file(), nb
        assert (smoke_book / nb.with_suffix(".html")).is_file(), nb
    assert book.toc_notebooks(repo_root)[-1] == Path("chapters/claims.ipynb")  # the Claims page closes the book
    assert "Claims: what held up" in (smoke_book / "chapters" / "claims.html").read_text()
    records = _check_claims_file(build / "results" / "claims.json")
    chapters = {p.stem for p in (build / "results").glob("*.json")} - {"claims"}
    assert {r["chapter"] for r in records} == chapters  # every chapter registers its headline claims
