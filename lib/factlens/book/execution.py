"""Executing the notebooks with papermill, each in a fresh ``python3`` kernel.

Each notebook runs with its folder as the working directory, into
``<build>/executed/<same relative path>``, with the parameters of :mod:`factlens.book.toc`.
A failing cell stops the build with a message naming the notebook, the cell and the exception.
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

from factlens.book.toc import BookError, build_parameters, notebook_parameters

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
    os.environ.update(kernel_environment(os.environ))  # the kernels inherit the builder's environment
    done: list[Executed] = []
    total = len(notebooks)
    for i, rel in enumerate(map(Path, notebooks), start=1):
        source = root / rel
        output = build / "executed" / rel
        output.parent.mkdir(parents=True, exist_ok=True)
        output.unlink(missing_ok=True)
        params = {
            **notebook_parameters(source, profile, results_dir, overrides),
            **build_parameters(source, build, overrides),
        }
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
