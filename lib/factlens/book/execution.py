"""Executing the notebooks with papermill, each in a fresh ``python3`` kernel.

Each notebook runs with its folder as the working directory, into
``<build>/executed/<same relative path>``, with the parameters of :mod:`factlens.book.toc`,
when :mod:`factlens.book.plan` says it must (its record, :mod:`factlens.book.keys`, is written
beside it once it succeeded). A failing cell stops the build with a message naming the
notebook, the cell and the exception.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factlens.book.keys import build_digests, inputs_digest, record_path, results_listing, write_record
from factlens.book.plan import RERENDER, UP_TO_DATE, Chapter, assess, format_plan, plan, read_timings, rerendered
from factlens.book.toc import BookError, build_parameters, notebook_parameters
from factlens.core.cache import replacing

KERNEL_NAME = "python3"
# the library folder (lib/), first on the kernels' PYTHONPATH
_LIB = Path(__file__).resolve().parents[2]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Executed:
    notebook: Path  # relative to the root
    output: Path
    parameters: dict[str, Any]
    seconds: float


def kernel_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for the notebooks' kernels: ``environ`` with

    * this environment's ``share/jupyter`` first on ``JUPYTER_PATH``, so the ``python3`` kernel
      is the interpreter running this build (jupyter_client puts ``sys.executable`` in a
      kernelspec's ``python``, but a user's own ``python3`` kernelspec, say in
      ~/.local/share/jupyter, would win over the venv's);
    * the library folder first on ``PYTHONPATH``, so notebooks import the same factlens as the
      builder, installed or not;
    * ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already: OpenMP threads that wait by spinning
      slow every other process sharing the cores several times over (a JupyterLab kernel open
      beside the build, two builds at once), while passive waiting costs a single process little.
    """
    env = dict(environ)
    env_share = str(Path(sys.prefix) / "share" / "jupyter")
    paths = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if env_share not in paths:
        env["JUPYTER_PATH"] = os.pathsep.join([env_share, *paths])
    pypath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(_LIB) not in pypath:
        env["PYTHONPATH"] = os.pathsep.join([str(_LIB), *pypath])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


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


def run_notebook(chapter: Chapter, *, progress_bar: bool = True, cell_timeout: float | None = None,
                 log: Any = print) -> float:
    """Execute one notebook with papermill into its executed copy; returns its seconds.

    ``cell_timeout``: the most seconds one cell may take (None: no limit). A cell past it is taken
    for a lost reply, not for slow work (the limit is set far above any cell's time): the notebook is
    executed once more from the start in a fresh kernel, and a second timeout fails the build.
    Raises :class:`BookError` naming the cell and the exception (the executed copy, with the
    traceback, is kept for inspection).
    """
    import papermill

    chapter.output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    attempt = 1
    while True:
        chapter.output.unlink(missing_ok=True)
        try:
            papermill.execute_notebook(
                str(chapter.source),
                str(chapter.output),
                parameters=chapter.parameters,
                kernel_name=KERNEL_NAME,
                cwd=str(chapter.source.parent),
                progress_bar=progress_bar,
                log_output=False,
                execution_timeout=cell_timeout,
            )
            return time.perf_counter() - start
        except TimeoutError as err:  # nbclient's CellTimeoutError
            if attempt == 2:
                raise BookError(f"{chapter.notebook}: a cell ran past {cell_timeout} s twice: {err}") from err
            attempt += 1
            log(f"{chapter.notebook}: a cell ran past {cell_timeout} s; executing the notebook again", flush=True)
        except Exception as err:
            raise BookError(describe_failure(chapter.notebook, err, chapter.output)) from err


def execute(
    root: str | Path,
    notebooks: Sequence[str | Path],
    profile: str,
    *,
    build_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    stop_after: int | None = None,
    cell_timeout: float | None = None,
    progress_bar: bool = True,
    log: Any = print,
) -> list[Executed]:
    """Bring the executed copies of ``notebooks`` (relative to ``root``) in ``<build>/executed``
    up to date: print the plan (:mod:`factlens.book.plan`), then execute, re-render or keep each
    chapter in turn; returns the chapters executed.

    Stops at the first failing notebook and raises :class:`BookError` naming it, its cell and
    the exception. ``stop_after``: raise :class:`KeyboardInterrupt` once that many chapters have
    executed, as an interrupted build would (the tests resume such a build). ``cell_timeout`` as in
    :func:`run_notebook`.
    """
    root = Path(root).resolve()
    build = Path(build_dir).resolve() if build_dir else root / "_build"
    results_dir = build / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(kernel_environment(os.environ))  # the kernels inherit the builder's environment
    chapters = [
        Chapter(rel, root / rel, build / "executed" / rel, {
            **notebook_parameters(root / rel, profile, results_dir, overrides),
            **build_parameters(root / rel, build, overrides),
        })
        for rel in map(Path, notebooks)
    ]
    log(format_plan(plan(chapters, build_digests(root), results_dir, force=force, timings=read_timings(root))),
        flush=True)
    done: list[Executed] = []
    total = len(chapters)
    for i, chapter in enumerate(chapters, start=1):
        step = assess(chapter, build_digests(root), results_dir, force=force)  # the files as they are now
        if step.action == UP_TO_DATE:
            log(f"[{i}/{total}] {chapter.notebook} up to date", flush=True)
            continue
        if step.action == RERENDER:
            nb = rerendered(json.loads(chapter.source.read_text()), json.loads(chapter.output.read_text()))
            with replacing(chapter.output) as tmp:
                tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            log(f"[{i}/{total}] {chapter.notebook} re-rendered ({step.reason})", flush=True)
            continue
        shown = ", ".join(f"{k}={v!r}" for k, v in chapter.parameters.items() if k != "results_dir")
        log(f"[{i}/{total}] {chapter.notebook} ({shown}): {step.reason}", flush=True)
        record_path(chapter.output).unlink(missing_ok=True)  # no record until it succeeds
        before = results_listing(results_dir)
        start = time.perf_counter()
        try:
            seconds = run_notebook(chapter, progress_bar=progress_bar, cell_timeout=cell_timeout, log=log)
        except BookError:
            log(f"[{i}/{total}] {chapter.notebook} FAILED after {time.perf_counter() - start:.1f} s", flush=True)
            raise
        writes = [name for name, stat in results_listing(results_dir).items() if before.get(name) != stat]
        key = {**step.key, "inputs": inputs_digest(step.reads, results_dir, chapter.parameters, writes)}
        write_record(chapter.output, key, writes, seconds)
        log(f"[{i}/{total}] {chapter.notebook} done in {seconds:.1f} s", flush=True)
        done.append(Executed(chapter.notebook, chapter.output, chapter.parameters, seconds))
        if stop_after is not None and len(done) >= stop_after:
            log(f"stopping after {len(done)} executed chapter(s), as asked (--stop-after)", flush=True)
            raise KeyboardInterrupt
    return done
