"""Build the book: execute every notebook of ``_toc.yml`` with papermill, then render the static site.

Command line::

    python -m factlens.book --profile smoke|cpu|paper [--only CHAPTER ...] [-p KEY=VALUE ...]
                            [--no-html] [--strict] [--verbose] [--no-progress]
                        [--root DIR] [--build-dir DIR]

Each notebook listed in ``_toc.yml`` is executed (kernel ``python3``, working directory the
notebook's folder) into ``<build>/executed/<same relative path>``, with parameters:

1. the profile's common parameters ``model_name``, ``profile`` and ``results_dir``;
2. updated with the profile's section of the notebook's sidecar ``<stem>.yml`` (top-level
   keys ``smoke``, ``cpu``, ``paper``, each a mapping of parameters);
3. updated with the ``-p key=value`` overrides, which apply to every notebook.

A failing cell stops the build with a message naming the notebook, the cell and the
exception. Then Jupyter Book 1 renders the *executed* notebooks: a copy of the book's
sources is staged in ``<build>/site_src`` with the executed notebooks in place of the
clean ones, built there, and its HTML moved to ``<build>/html`` (``index.html`` is the entry).

Notebooks report their headline numbers with :func:`save_results`; the comparison tables
read them back with :func:`load_results`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from factlens.results import load_results, save_results  # noqa: F401  (moved; the builder split removes this)

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"model_name": "gemma-3-270m"},
    "cpu": {"model_name": "gemma-3-270m"},
    "paper": {"model_name": "gpt2-xl"},
}
KERNEL_NAME = "python3"
# folders that are never part of the book's sources
_NOT_SOURCES = {"_build", ".venv", ".git", "lib", "tests", "bench", ".ci", "node_modules"}
# folders copied into the staged site when they exist (images, static files)
_ASSET_DIRS = ("_static", "images", "figures", "assets")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# a progress bar's text: "probing:  40%|####      | 480/1196 [00:05<00:07, 95.1it/s]"
_PROGRESS = re.compile(r"\d+%\|.*\|\s*[\d.]+[kMG]?/[\d.]+[kMG]?\s*\[")
# MathJax 3 for the site, so that math renders without a CDN (offline readers, the site tests):
# the npm registry's tarball, pinned by its SHA-256, cached, and copied into the site's _static.
MATHJAX_VERSION = "3.2.2"
MATHJAX_URL = f"https://registry.npmjs.org/mathjax/-/mathjax-{MATHJAX_VERSION}.tgz"
MATHJAX_SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"
MATHJAX_PATH = "mathjax/tex-mml-chtml.js"  # relative to the site's _static (sphinx's mathjax_path)


class BookError(RuntimeError):
    """The book could not be built; the message says which notebook or step and why."""


# ---------------------------------------------------------------------------------------------
# the table of contents


def find_root(start: str | Path | None = None) -> Path:
    """The book's root: the nearest folder holding ``_toc.yml`` and ``_config.yml``.

    Searched upwards from ``start`` (default: the working directory), then from this
    package's location (``lib/factlens`` -> the repository root).
    """
    candidates = [Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parent]
    for base in candidates:
        for folder in (base, *base.parents):
            if (folder / "_toc.yml").is_file() and (folder / "_config.yml").is_file():
                return folder
    raise BookError("no _toc.yml with a _config.yml beside it above the working directory; pass --root")


def _toc_entries(node: Any) -> Iterable[str]:
    if isinstance(node, Mapping):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                yield node[key]
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or ():
                yield from _toc_entries(child)
    elif isinstance(node, list):
        for child in node:
            yield from _toc_entries(child)


def toc_documents(root: str | Path) -> list[Path]:
    """Every document of ``_toc.yml`` (Jupyter Book 1 ``jb-book`` format), in order, as paths
    relative to ``root`` with their file suffix (``.md``, ``.ipynb``, ...) resolved.

    Raises :class:`BookError` for a document that does not exist.
    """
    root = Path(root)
    toc_path = root / "_toc.yml"
    try:
        toc = yaml.safe_load(toc_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise BookError(f"cannot read {toc_path}: {err}") from err
    if not isinstance(toc, Mapping) or "root" not in toc:
        raise BookError(f"{toc_path}: not a Jupyter Book table of contents (no 'root')")
    documents: list[Path] = []
    for entry in _toc_entries(toc):
        rel = Path(entry)
        if rel.suffix in (".ipynb", ".md", ".rst", ".py") and (root / rel).is_file():
            found = rel
        else:
            found = next(
                (rel.with_name(rel.name + s) for s in (".ipynb", ".md", ".rst") if (root / (entry + s)).is_file()),
                None,
            )
        if found is None:
            raise BookError(f"{toc_path}: '{entry}' is listed but no {entry}.ipynb or {entry}.md exists")
        if found not in documents:
            documents.append(found)
    return documents


def toc_notebooks(root: str | Path) -> list[Path]:
    """The notebooks (``.ipynb``) of ``_toc.yml``, relative to ``root``, in order."""
    return [doc for doc in toc_documents(root) if doc.suffix == ".ipynb"]


def select(notebooks: Sequence[Path], only: Sequence[str] | None) -> list[Path]:
    """The notebooks whose path contains one of ``only`` as whole path components.

    ``lama`` selects ``chapters/lama/lama.ipynb``; ``rome`` every notebook under
    ``chapters/rome/``; ``tracing`` or ``rome/tracing`` selects ``chapters/rome/tracing.ipynb``.
    No ``only`` selects everything. Raises :class:`BookError` when a name matches nothing.
    """
    if not only:
        return list(notebooks)
    chosen: list[Path] = []
    for name in only:
        wanted = tuple(p for p in Path(name.removesuffix(".ipynb")).parts if p not in ("", "."))
        matches = [
            nb
            for nb in notebooks
            if any(nb.with_suffix("").parts[i : i + len(wanted)] == wanted for i in range(len(nb.parts)))
        ]
        if not wanted or not matches:
            listed = ", ".join(str(nb) for nb in notebooks) or "none"
            raise BookError(f"--only {name!r} matches no notebook of _toc.yml (notebooks: {listed})")
        chosen += [nb for nb in matches if nb not in chosen]
    return [nb for nb in notebooks if nb in chosen]  # toc order


# ---------------------------------------------------------------------------------------------
# parameters


def common_parameters(profile: str, results_dir: str | Path) -> dict[str, Any]:
    """The parameters every notebook gets: ``model_name``, ``profile``, ``results_dir``."""
    if profile not in PROFILES:
        raise BookError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    return {**PROFILES[profile], "profile": profile, "results_dir": str(Path(results_dir).resolve())}


def sidecar_parameters(notebook: str | Path, profile: str) -> dict[str, Any]:
    """The ``profile`` section of the notebook's sidecar ``<stem>.yml`` ({} when there is none)."""
    sidecar = Path(notebook).with_suffix(".yml")
    if not sidecar.is_file():
        return {}
    try:
        data = yaml.safe_load(sidecar.read_text()) or {}
    except yaml.YAMLError as err:
        raise BookError(f"{sidecar}: not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise BookError(f"{sidecar}: expected a mapping with keys {', '.join(PROFILES)}")
    unknown = set(data) - set(PROFILES)
    if unknown:
        raise BookError(f"{sidecar}: unknown profile(s) {sorted(unknown)}; expected {', '.join(PROFILES)}")
    section = data.get(profile) or {}
    if not isinstance(section, Mapping):
        raise BookError(f"{sidecar}: '{profile}' must be a mapping of parameter names to values")
    return dict(section)


def notebook_parameters(
    notebook: str | Path,
    profile: str,
    results_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Common parameters, updated with the sidecar's ``profile`` section, then with ``overrides``."""
    return {
        **common_parameters(profile, results_dir),
        **sidecar_parameters(notebook, profile),
        **(overrides or {}),
    }


def parse_value(text: str) -> Any:
    """A ``-p`` value: int, float, true/false, none/null, a JSON list or mapping, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.strip()[:1] in "[{" and text.strip():
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: parse_value(v)}`` (the last one wins)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise BookError(f"-p expects KEY=VALUE with a Python identifier as KEY, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


# ---------------------------------------------------------------------------------------------
# execution


@dataclass
class Executed:
    notebook: Path  # relative to the root
    output: Path
    parameters: dict[str, Any]
    seconds: float
    error: str | None = None


def _kernel_environment() -> None:
    """Make the ``python3`` kernel the interpreter running this build, with this factlens.

    jupyter_client replaces a kernelspec's ``python`` with ``sys.executable``, but a user's
    own ``python3`` kernelspec (say in ~/.local/share/jupyter) would win over the venv's;
    putting the environment's share/jupyter first in JUPYTER_PATH avoids that. The library
    folder goes first on PYTHONPATH so notebooks import the same factlens as the builder,
    installed or not.
    """
    env_share = str(Path(sys.prefix) / "share" / "jupyter")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if env_share not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([env_share, *paths])
    lib = str(Path(__file__).resolve().parents[1])
    pypath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if lib not in pypath:
        os.environ["PYTHONPATH"] = os.pathsep.join([lib, *pypath])


def describe_failure(notebook: str | Path, err: Exception, output: str | Path | None = None) -> str:
    """A short message for a failed notebook: which cell (index in the source notebook and
    its first line) raised which exception, and where the executed copy with the full traceback is."""
    from papermill.exceptions import PapermillExecutionError

    if not isinstance(err, PapermillExecutionError):
        first = str(err).strip().splitlines()[:1]
        return f"{notebook}: {type(err).__name__}: {first[0] if first else ''}"
    index = err.cell_index
    # papermill counts the injected-parameters cell it added; report the source notebook's index
    if output is not None and Path(output).is_file():
        try:
            nb = json.loads(Path(output).read_text())
            cells = [c for c in nb["cells"] if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
            injected = sum(
                "injected-parameters" in c.get("metadata", {}).get("tags", []) for c in cells[: err.cell_index]
            )
            index -= injected
        except (OSError, ValueError, KeyError):
            pass
    source = err.source if isinstance(err.source, str) else "".join(err.source or "")
    first_line = next((line.strip() for line in source.splitlines() if line.strip()), "")
    if len(first_line) > 100:
        first_line = first_line[:97] + "..."
    evalue = _ANSI.sub("", str(err.evalue)).strip()
    if len(evalue) > 500:
        evalue = evalue[:497] + "..."
    where = f"\n  full traceback in {output}" if output else ""
    return f"{notebook}: cell {index} (`{first_line}`) raised {err.ename}: {evalue}{where}"


def execute(
    root: str | Path,
    notebooks: Sequence[str | Path],
    profile: str,
    *,
    build_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress_bar: bool = True,
    log: Any = print,
) -> list[Executed]:
    """Execute ``notebooks`` (relative to ``root``) into ``<build>/executed``.

    Stops at the first failing notebook and raises :class:`BookError` naming it, its cell and
    the exception (the executed copy, with the traceback, is kept for inspection).
    """
    import papermill

    root = Path(root).resolve()
    build = Path(build_dir).resolve() if build_dir else root / "_build"
    results_dir = build / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    _kernel_environment()
    done: list[Executed] = []
    total = len(notebooks)
    for i, rel in enumerate(map(Path, notebooks), start=1):
        source = root / rel
        output = build / "executed" / rel
        output.parent.mkdir(parents=True, exist_ok=True)
        output.unlink(missing_ok=True)
        params = notebook_parameters(source, profile, results_dir, overrides)
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if k != "results_dir")
        log(f"[{i}/{total}] {rel} ({shown})", flush=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source),
                str(output),
                parameters=params,
                kernel_name=KERNEL_NAME,
                cwd=str(source.parent),
                progress_bar=progress_bar,
                log_output=False,
            )
        except Exception as err:
            seconds = time.perf_counter() - start
            message = describe_failure(rel, err, output)
            log(f"[{i}/{total}] {rel} FAILED after {seconds:.1f} s", flush=True)
            raise BookError(message) from err
        seconds = time.perf_counter() - start
        log(f"[{i}/{total}] {rel} done in {seconds:.1f} s", flush=True)
        done.append(Executed(rel, output, params, seconds))
    return done


# ---------------------------------------------------------------------------------------------
# the static site


def _assignments(source: str) -> dict[str, str]:
    """``{name: source of the value}`` for the one-line ``name = value`` statements of a cell."""
    import ast

    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = ast.get_source_segment(source, node.value)
    return found


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


def for_the_site(nb: dict) -> dict:
    """An executed notebook as the static book shows it (the copy in ``executed/`` is untouched).

    * one parameters cell, with the values the run used: papermill's injected cell is dropped
      and its values are written into the notebook's own ``parameters`` cell, whose comments
      explain them (``results_dir``, a path of the build machine, is left as written);
    * progress bars dropped: a bar frozen at the moment the notebook was saved tells a reader
      nothing (they still show live, with a kernel).
    """
    cells = nb.get("cells", [])
    tags = lambda cell: cell.get("metadata", {}).get("tags", [])  # noqa: E731
    injected = next((c for c in cells if "injected-parameters" in tags(c)), None)
    own = next((c for c in cells if "parameters" in tags(c)), None)
    if injected is not None and own is not None:
        values = _assignments("".join(injected["source"]))
        values.pop("results_dir", None)
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


def mathjax_files(*, log: Any = print) -> Path | None:
    """The folder of MathJax's ``es5`` build (downloaded once into the cache and checked), or
    None when it cannot be had (offline, nothing cached): the site then loads MathJax from its
    CDN, so math renders for readers who are online."""
    import tarfile
    import urllib.request

    from factlens.cache import cache_dir, sha256_file

    folder = cache_dir("mathjax") / MATHJAX_VERSION
    if (folder / "es5" / "tex-mml-chtml.js").is_file():
        return folder / "es5"
    archive = folder.with_suffix(".tgz.partial")
    try:
        log(f"downloading MathJax {MATHJAX_VERSION} for the site (once): {MATHJAX_URL}", flush=True)
        with urllib.request.urlopen(MATHJAX_URL, timeout=60) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out)
        digest = sha256_file(archive)
        if digest != MATHJAX_SHA256:
            raise OSError(f"SHA-256 {digest} is not the pinned {MATHJAX_SHA256}")
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
    source, without outputs, when it has not been executed yet), and MathJax in ``_static``."""
    root = Path(root).resolve()
    build = Path(build_dir).resolve() if build_dir else root / "_build"
    site = build / "site_src"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, site / name)
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
            if executed.is_file():
                target.write_text(json.dumps(for_the_site(json.loads(executed.read_text())), indent=1))
            else:
                log(f"note: {doc} has not been executed; the site shows it without outputs", flush=True)
                shutil.copy2(root / doc, target)
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


# ---------------------------------------------------------------------------------------------
# command line


def build(
    profile: str,
    *,
    root: str | Path | None = None,
    build_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    html: bool = True,
    strict: bool = False,
    quiet: bool = True,
    progress_bar: bool = True,
    log: Any = print,
) -> Path | None:
    """Execute the selected notebooks, then (``html``) build the site; returns index.html's path."""
    root = find_root(root) if root is None else Path(root).resolve()
    if not (root / "_toc.yml").is_file():
        raise BookError(f"{root} has no _toc.yml")
    common_parameters(profile, ".")  # check the profile before anything runs
    notebooks = select(toc_notebooks(root), only)
    start = time.perf_counter()
    log(f"book at {root}: profile {profile}, {len(notebooks)} notebook(s) to execute", flush=True)
    done = execute(root, notebooks, profile, build_dir=build_dir, overrides=overrides, progress_bar=progress_bar, log=log)
    if done:
        log("executed: " + ", ".join(f"{d.notebook} {d.seconds:.0f} s" for d in done), flush=True)
    index = build_html(root, build_dir, strict=strict, quiet=quiet, log=log) if html else None
    log(f"total {time.perf_counter() - start:.1f} s", flush=True)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m factlens.book",
        description="Execute the book's notebooks with papermill and build the static site (Jupyter Book 1).",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="size of the runs and model (default cpu)")
    parser.add_argument(
        "--only", action="append", metavar="CHAPTER",
        help="execute only notebooks whose path contains this folder or name (repeatable), e.g. lama, rome, rome/tracing",
    )
    parser.add_argument(
        "-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
        help="override a parameter for every notebook (repeatable), e.g. -p model_name=gpt2",
    )
    parser.add_argument("--no-html", action="store_true", help="execute only; do not build the site")
    parser.add_argument("--strict", action="store_true", help="fail the site build on Sphinx warnings too")
    parser.add_argument("--root", type=Path, help="the book's root (default: found from the working directory)")
    parser.add_argument("--build-dir", type=Path, help="where executed/, results/, html/ go (default ROOT/_build)")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    parser.add_argument("--verbose", action="store_true", help="show Jupyter Book's full output (default: warnings and errors)")
    args = parser.parse_args(argv)
    try:
        index = build(
            args.profile,
            root=args.root,
            build_dir=args.build_dir,
            only=args.only,
            overrides=parse_overrides(args.parameter),
            html=not args.no_html,
            strict=args.strict,
            quiet=not args.verbose,
            progress_bar=not args.no_progress,
        )
    except BookError as err:
        print(f"\nbook build failed: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nbook build interrupted", file=sys.stderr)
        return 130
    if index is not None:
        print(f"open {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
