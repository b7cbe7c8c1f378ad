"""What a build does with each chapter: execute it, re-render it, or leave it as it is.

* **execute**: ``--force``, or it has no record of a successful execution (never executed,
  failed, interrupted), or a part of its key changed (:mod:`factlens.book.keys`);
* **re-render**: its key is the same but its markdown changed: the executed copy takes the
  source's markdown cells and keeps its code cells with their outputs (:func:`rerendered`);
* **up to date**: neither.

Before it starts, the build prints its plan (:func:`format_plan`), with each chapter's time
estimated from its previous execution, or, for a chapter never executed here, from the times
measured on a named machine for the same profile and model (``_timings.yml`` beside ``_toc.yml``,
:func:`read_timings`), marked as such. The plan also foresees that a chapter reading results
that an earlier chapter of the plan will rewrite (``load_results``, the Claims page) executes;
the decision itself is taken again when a chapter's turn comes, from the files as they are then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from factlens.book.keys import EVERY, cell_source, chapter_key, code_cells, read_record, reads
from factlens.book.toc import BookError

EXECUTE, RERENDER, UP_TO_DATE = "execute", "re-render", "up to date"
#: the chapter times measured for the plan of a first build, beside _toc.yml
TIMINGS = "_timings.yml"


@dataclass(frozen=True)
class Chapter:
    """One notebook of a build: where it is, where its executed copy goes, its parameters."""

    notebook: Path  # relative to the root
    source: Path
    output: Path
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Step:
    """What the build does with one chapter, and why."""

    notebook: Path
    action: str  # EXECUTE, RERENDER or UP_TO_DATE
    reason: str  # "code changed", "markdown changed", "" ...
    estimate: float | None  # seconds its previous execution took; None when unknown
    key: dict[str, str]  # its key now
    reads: str | list[str]  # the results files it reads (keys.reads)
    writes: list[str] | None  # the results files its previous execution wrote; None when unknown
    measured_on: str = ""  # the machine of _timings.yml when the estimate is its time, not a previous execution's


@dataclass(frozen=True)
class Timings:
    """Chapter times measured on one machine (``_timings.yml``), for chapters never executed here."""

    machine: str
    seconds: dict[tuple[str, str, str], float]  # (profile, model_name, notebook) -> seconds

    def of(self, chapter: Chapter) -> float | None:
        """The measured time of ``chapter`` with its profile and model; None when not measured."""
        p = chapter.parameters
        return self.seconds.get((str(p.get("profile")), str(p.get("model_name")), chapter.notebook.as_posix()))


def read_timings(root: Path) -> Timings:
    """``root/_timings.yml``: ``machine`` (the CPU, cores and commit of the measurement) and
    ``seconds`` (profile -> model -> notebook -> seconds); no times when the file is absent."""
    path = root / TIMINGS
    if not path.is_file():
        return Timings("", {})
    try:
        data = yaml.safe_load(path.read_text()) or {}
        seconds = {(str(profile), str(model), str(notebook)): float(t)
                   for profile, models in data.get("seconds", {}).items()
                   for model, notebooks in models.items() for notebook, t in notebooks.items()}
    except (yaml.YAMLError, AttributeError, TypeError, ValueError) as err:
        raise BookError(f"{path}: expected 'machine' and 'seconds' (profile -> model -> notebook -> seconds): "
                        f"{err}; fix the file or delete it") from err
    if seconds and not str(data.get("machine", "")).strip():
        raise BookError(f"{path}: 'machine' must name where the times were measured")
    return Timings(str(data.get("machine", "")), seconds)


def _prose(nb: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c.get("cell_type", ""), cell_source(c)) for c in nb.get("cells", []) if c.get("cell_type") != "code"]


def rerendered(source: dict[str, Any], executed: dict[str, Any]) -> dict[str, Any] | None:
    """The executed notebook with the source's markdown (and raw) cells in place of its own,
    its code cells kept with their outputs and papermill's injected parameters after the
    parameters cell; None when the two notebooks' code cells do not match one to one."""
    if code_cells(source) != code_cells(executed):
        return None

    def tagged(cell: dict[str, Any], tag: str) -> bool:
        return tag in cell.get("metadata", {}).get("tags", [])

    injected = [c for c in executed["cells"] if tagged(c, "injected-parameters")]
    ran = iter(c for c in executed["cells"] if c.get("cell_type") == "code" and not tagged(c, "injected-parameters"))
    cells = []
    for cell in source.get("cells", []):
        if cell.get("cell_type") != "code":
            cells.append(cell)
            continue
        cells.append(next(ran))
        if tagged(cells[-1], "parameters"):
            cells += injected
            injected = []
    return {**executed, "cells": injected + cells}  # papermill puts it first when there is no parameters cell


def _previous_seconds(output: Path, record: dict[str, Any] | None) -> float | None:
    if record is not None and isinstance(record.get("seconds"), (int, float)):
        return float(record["seconds"])
    try:  # an executed copy without a record (an older build): papermill's own duration
        duration = json.loads(output.read_text())["metadata"]["papermill"]["duration"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(duration) if isinstance(duration, (int, float)) else None


def assess(chapter: Chapter, shared: dict[str, str], results_dir: Path, *, force: bool = False,
           timings: Timings | None = None) -> Step:
    """What to do with ``chapter`` now (module docstring); ``shared`` is :func:`keys.build_digests`;
    ``timings`` estimate a chapter without a previous execution."""
    nb = json.loads(chapter.source.read_text())
    record = read_record(chapter.output) if chapter.output.is_file() else None
    writes = record.get("writes") if record is not None else None
    key = chapter_key(nb, chapter.parameters, shared, results_dir, own=writes or ())
    estimate, measured_on = _previous_seconds(chapter.output, record), ""
    if estimate is None and timings is not None:
        estimate = timings.of(chapter)
        measured_on = timings.machine if estimate is not None else ""
    step = Step(chapter.notebook, EXECUTE, "", estimate, key, reads(nb), writes, measured_on)
    if force:
        return replace(step, reason="--force")
    if record is None:
        return replace(step, reason="no successful execution recorded")
    changed = [part for part, digest in key.items() if record["key"].get(part) != digest]
    if changed:
        return replace(step, reason=" and ".join(changed) + " changed")
    try:
        executed = json.loads(chapter.output.read_text())
    except (OSError, ValueError):
        return replace(step, reason="its executed copy cannot be read")
    if rerendered(nb, executed) is None:
        return replace(step, reason="its executed copy's code cells differ")
    if _prose(nb) != _prose(executed):
        return replace(step, action=RERENDER, reason="markdown changed")
    return replace(step, action=UP_TO_DATE)


def _touches(read: str | list[str], rewritten: set[str] | None) -> bool:
    if not read:
        return False
    if rewritten is None:
        return True
    return bool(rewritten) if read == EVERY else bool(set(read) & rewritten)


def plan(chapters: list[Chapter], shared: dict[str, str], results_dir: Path, *, force: bool = False,
         timings: Timings | None = None) -> list[Step]:
    """:func:`assess` for every chapter, with the chapters that read results an earlier
    execution of the plan rewrites set to execute too."""
    steps: list[Step] = []
    rewritten: set[str] | None = set()  # by the executions planned so far; None: unknown which
    for chapter in chapters:
        step = assess(chapter, shared, results_dir, force=force, timings=timings)
        if step.action != EXECUTE and _touches(step.reads, rewritten):
            step = replace(step, action=EXECUTE, reason="reads results rewritten before it")
        if step.action == EXECUTE:
            rewritten = None if step.writes is None or rewritten is None else rewritten | set(step.writes)
        steps.append(step)
    return steps


def _seconds(step: Step) -> str:
    if step.action != EXECUTE:
        return "0 s"
    return "unknown" if step.estimate is None else f"{step.estimate:.0f} s" + ("*" if step.measured_on else "")


def format_plan(steps: list[Step]) -> str:
    """The plan as printed before a build: one line per chapter (action, estimated time, why),
    then the totals; a time marked * is the one measured on the machine of ``_timings.yml``."""
    width = max((len(str(s.notebook)) for s in steps), default=0)
    lines = ["plan:"]
    for s in steps:
        lines.append(f"  {s.action:<10}  {str(s.notebook):<{width}}  {_seconds(s):>8}  {s.reason}".rstrip())
    runs = [s for s in steps if s.action == EXECUTE]
    unknown = sum(s.estimate is None for s in runs)
    total = f"about {sum(s.estimate or 0 for s in runs):.0f} s" + (f" + {unknown} unknown" if unknown else "")
    counts = ", ".join(f"{sum(s.action == a for s in steps)} {a}" for a in (EXECUTE, RERENDER, UP_TO_DATE))
    lines.append(f"  total: {counts}; {total}")
    lines += sorted({f"  * never executed here: the time measured on {s.measured_on} ({TIMINGS})"
                     for s in runs if s.measured_on})
    return "\n".join(lines)
