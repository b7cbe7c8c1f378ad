"""The static site: the executed notebooks as a reader sees them, rendered by Jupyter Book 1.

A copy of the book's sources is staged in ``<build>/site_src`` with the executed notebooks
(:func:`for_the_site`) in place of the clean ones and MathJax in ``_static``, built there, and
its HTML moved to ``<build>/html`` (``index.html`` is the entry).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from factlens.book.keys import describe_execution, read_record
from factlens.book.launch import with_launch_box, with_launch_buttons
from factlens.book.toc import BUILD_PARAMETERS, BookError, assignments, toc_documents

# folders that are never part of the book's sources
_NOT_SOURCES = {"_build", ".venv", ".git", "lib", "tests", "bench", ".ci", "node_modules"}
# folders copied into the staged site when they exist (images, static files)
_ASSET_DIRS = ("_static", "images", "figures", "assets")
# a progress bar's text: "probing:  40%|####      | 480/1196 [00:05<00:07, 95.1it/s]"
_PROGRESS = re.compile(r"\d+%\|.*\|\s*[\d.]+[kMG]?/[\d.]+[kMG]?\s*\[")
# MathJax 3 for the site, so that math renders without a CDN (offline readers, the site tests):
# the npm registry's tarball, pinned by its SHA-256, cached, and copied into the site's _static.
MATHJAX_VERSION = "3.2.2"
MATHJAX_URL = f"https://registry.npmjs.org/mathjax/-/mathjax-{MATHJAX_VERSION}.tgz"
MATHJAX_SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"
MATHJAX_PATH = "mathjax/tex-mml-chtml.js"  # relative to the site's _static (sphinx's mathjax_path)
EXECUTED_NOTE = "factlens-executed"  # the id and tag of the line saying when a chapter was executed


def _with_values(source: str, values: Mapping[str, str]) -> str:
    """``source`` (a parameters cell) with the value of each ``name = value  # comment`` line whose
    name is in ``values`` replaced, the comment kept; names the cell lacks are appended."""
    lines, seen = [], set()
    for line in source.splitlines():
        match = re.match(r"^(\s*)([A-Za-z_]\w*)(\s*=\s*)(.*?)(\s*#.*)?$", line)
        if match and match.group(2) in values and not match.group(1):
            name = match.group(2)
            seen.add(name)
            line = f"{name}{match.group(3)}{values[name]}{match.group(5) or ''}"
        lines.append(line)
    lines += [f"{name} = {value}" for name, value in values.items() if name not in seen]
    return "\n".join(lines)


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def for_the_site(nb: dict) -> dict:
    """An executed notebook as the static book shows it (the copy in ``executed/`` is untouched).

    * one parameters cell, with the values the run used: papermill's injected cell is dropped
      and its values are written into the notebook's own ``parameters`` cell, whose comments
      explain them (``results_dir`` and the builder's ``other_results``, paths of the build
      machine, are left as written);
    * progress bars dropped: a bar frozen at the moment the notebook was saved tells a reader
      nothing (they still show live, with a kernel).
    """
    cells = nb.get("cells", [])
    injected = next((c for c in cells if "injected-parameters" in _tags(c)), None)
    own = next((c for c in cells if "parameters" in _tags(c)), None)
    if injected is not None and own is not None:
        values = assignments("".join(injected["source"]))
        for name in ("results_dir", *BUILD_PARAMETERS):  # paths of the build machine
            values.pop(name, None)
        own["source"] = _with_values("".join(own["source"]), values)
        cells.remove(injected)

    def progress(output: dict) -> bool:
        if output.get("output_type") == "stream":
            return bool(_PROGRESS.search(output.get("text", "") if isinstance(output.get("text"), str)
                                         else "".join(output.get("text", []))))
        text = output.get("data", {}).get("text/plain", "")
        text = text if isinstance(text, str) else "".join(text)
        return "application/vnd.jupyter.widget-view+json" in output.get("data", {}) and bool(_PROGRESS.search(text))

    for cell in cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = [o for o in cell.get("outputs", []) if not progress(o)]
    return nb


def with_execution_note(nb: dict, record: Mapping[str, Any]) -> dict:
    """``nb`` with a line after its title (its first cell, when that is markdown) saying when, on
    which CPU and in how long its executed copy ran (:func:`factlens.book.keys.describe_execution`)."""
    cells = nb.setdefault("cells", [])
    at = 1 if cells and cells[0].get("cell_type") == "markdown" else 0
    note = {"cell_type": "markdown", "id": EXECUTED_NOTE, "metadata": {"tags": [EXECUTED_NOTE]},
            "source": f"*{describe_execution(record)}*"}
    cells.insert(at, note)
    return nb


def mathjax_files(*, log: Any = print) -> Path | None:
    """The folder of MathJax's ``es5`` build (downloaded once into the cache and checked), or
    None when it cannot be had (offline, nothing cached): the site then loads MathJax from its
    CDN, so math renders for readers who are online."""
    from factlens.core.cache import cache_dir, download

    folder = cache_dir("mathjax") / MATHJAX_VERSION
    if (folder / "es5" / "tex-mml-chtml.js").is_file():
        return folder / "es5"
    archive = folder.with_suffix(".tgz")
    try:
        log(f"downloading MathJax {MATHJAX_VERSION} for the site (once): {MATHJAX_URL}", flush=True)
        download(MATHJAX_URL, archive, sha256=MATHJAX_SHA256)
        staging = Path(tempfile.mkdtemp(prefix=".mathjax-", dir=folder.parent))
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/es5/") and m.isfile()]
            tar.extractall(staging, members=members, filter="data")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging / "package", folder)
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        log(f"note: MathJax could not be fetched ({err}); the site loads it from its CDN instead", flush=True)
        return None
    finally:
        archive.unlink(missing_ok=True)
    return folder / "es5"


def _stage_mathjax(site: Path, *, log: Any = print) -> None:
    """Copy MathJax (the combined TeX/MathML component and its fonts) into the staged site's
    ``_static`` and point Sphinx at it; without it, leave Sphinx's default (the CDN)."""
    es5 = mathjax_files(log=log)
    if es5 is None:
        return
    target = site / "_static" / Path(MATHJAX_PATH).parent
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5 / "tex-mml-chtml.js", target / "tex-mml-chtml.js")
    fonts = Path("output") / "chtml" / "fonts" / "woff-v2"
    shutil.copytree(es5 / fonts, target / fonts, dirs_exist_ok=True)
    config_path = site / "_config.yml"
    config = yaml.safe_load(config_path.read_text()) or {}
    config.setdefault("sphinx", {}).setdefault("config", {})["mathjax_path"] = MATHJAX_PATH
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def stage_site(root: str | Path, build_dir: str | Path | None = None, *, log: Any = print) -> Path:
    """Copy the book's sources into ``<build>/site_src``, with each notebook of the toc replaced
    by its executed copy from ``<build>/executed`` as :func:`for_the_site` shows it (the clean
    source, without outputs, when it has not been executed yet), each with the line saying when
    and where it was executed (:func:`with_execution_note`, from its record), the box that says
    how to run it live and launch buttons when a repository is named (:mod:`factlens.book.launch`),
    and MathJax in ``_static``."""
    root = Path(root).resolve()
    build = Path(build_dir).resolve() if build_dir else root / "_build"
    site = build / "site_src"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    config = yaml.safe_load((root / "_config.yml").read_text()) or {}
    requirements = (root / "requirements.txt").read_text() if (root / "requirements.txt").is_file() else ""
    (site / "_config.yml").write_text(yaml.safe_dump(with_launch_buttons(dict(config)), sort_keys=False,
                                                     allow_unicode=True))
    shutil.copy2(root / "_toc.yml", site / "_toc.yml")
    for extra in root.glob("*.bib"):
        shutil.copy2(extra, site / extra.name)
    documents = toc_documents(root)
    folders = {doc.parts[0] for doc in documents if len(doc.parts) > 1} | {
        d for d in _ASSET_DIRS if (root / d).is_dir()
    }
    ignore = shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__", "_build", ".*")
    for folder in sorted(folders - _NOT_SOURCES):
        shutil.copytree(root / folder, site / folder, ignore=ignore, dirs_exist_ok=True)
    for doc in documents:
        target = site / doc
        target.parent.mkdir(parents=True, exist_ok=True)
        if doc.suffix == ".ipynb":
            executed = build / "executed" / doc
            record = read_record(executed) if executed.is_file() else None
            if executed.is_file():
                nb = for_the_site(json.loads(executed.read_text()))
            else:
                log(f"note: {doc} has not been executed; the site shows it without outputs", flush=True)
                nb = json.loads((root / doc).read_text())
            nb = with_launch_box(nb, doc, config, requirements)
            if record is not None:
                nb = with_execution_note(nb, record)
            target.write_text(json.dumps(nb, indent=1))
        elif not target.exists():  # a top-level document outside the copied folders
            shutil.copy2(root / doc, target)
    _stage_mathjax(site, log=log)
    return site


def _run_filtered(command: Sequence[str], cwd: Path, site: Path, root: Path) -> int:
    """Run jupyter-book, passing its output through with staged paths shown as the sources'
    (``<build>/site_src/chapters/x.md`` -> ``<root>/chapters/x.md``), and without its
    "Output Path" line and closing "your book is here" box, whose paths point into the
    staging folder (the HTML is moved to <build>/html)."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    held: str | None = None  # a "=====" rule, held until we know whether the box follows
    skipping = False
    assert proc.stdout is not None
    for line in proc.stdout:
        if skipping:
            skipping = "=====" not in line
            continue
        if held is not None:
            if line.strip() == "":
                held += line
                continue
            if "Finished generating HTML" in line:
                held, skipping = None, True
                continue
            sys.stdout.write(held)
            held = None
        if "=====" in line:
            held = line
            continue
        if line.startswith("Output Path:"):
            continue
        sys.stdout.write(line.replace(f"{site}{os.sep}", f"{root}{os.sep}"))
    if held is not None:
        sys.stdout.write(held)
    sys.stdout.flush()
    return proc.wait()


def build_html(
    root: str | Path,
    build_dir: str | Path | None = None,
    *,
    strict: bool = False,
    quiet: bool = False,
    log: Any = print,
) -> Path:
    """Stage the site and build it with Jupyter Book 1; returns ``<build>/html/index.html``.

    Sphinx warnings are printed but only fail the build with ``strict``; errors always do.
    """
    root = Path(root).resolve()
    build = Path(build_dir).resolve() if build_dir else root / "_build"
    site = stage_site(root, build, log=log)
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb)] if jb.exists() else [sys.executable, "-m", "jupyter_book.cli.main"]
    command += ["build", str(site), "--builder", "html"]
    if strict:
        command += ["-W", "-n", "--keep-going"]
    if quiet:
        command += ["-q"]
    log(f"building the static site with Jupyter Book from {site} ...", flush=True)
    start = time.perf_counter()
    returncode = _run_filtered(command, cwd=site, site=site, root=root)
    seconds = time.perf_counter() - start
    html_src = site / "_build" / "html"
    if returncode != 0 or not (html_src / "index.html").is_file():
        raise BookError(f"jupyter-book build failed (exit {returncode}); see its output above")
    html = build / "html"
    if html.exists():
        shutil.rmtree(html)
    shutil.move(str(html_src), str(html))
    log(f"site built in {seconds:.1f} s: {html / 'index.html'}", flush=True)
    return html / "index.html"
