"""What decides a chapter's outputs (its *key*), and the record kept beside its executed copy.

A chapter's key has six parts, each a SHA-256:

* ``code``: the sources of its code cells, in order (markdown cells do not count: a prose edit
  re-renders the executed copy, :mod:`factlens.book.plan`);
* ``parameters``: the resolved parameters (the profile's, the sidecar's, the ``-p`` overrides,
  the builder's ``other_results``), ``model_name`` among them: the model files themselves are
  keyed by their digests in the cache;
* ``library``: every ``lib/factlens/**/*.py`` except ``lib/factlens/book/``: the builder decides
  how chapters are run and shown, not what they compute;
* ``data``: the names and contents (SHA-256) of ``$FACTLENS_DATA_DIR``'s files, not their
  modification times, so that a fresh copy of the same files keeps every key; unset, the data are
  downloaded from fixed URLs and checked by their digests, so this part is a constant;
* ``environment``: the Python version and the book's ``requirements.txt`` (the pinned packages);
* ``inputs``: the results files of other chapters that it reads: those it names in a
  ``load_results("name", ...)`` call, or every results file of this build and of
  ``other_results`` when it declares ``other_results`` (the Claims page), less its own.

The record (``<build>/executed/<notebook stem>.key.json``) holds the key, the results files the
execution wrote, its seconds, when and on which CPU it ran. It is written, atomically, only
after the chapter executed without error, and deleted before it starts: a chapter without a
record is executed by the next build, one with a record is not unless its key changed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from factlens.book.toc import assignments
from factlens.core.cache import replacing
from factlens.data.files import data_root

# the library folder (lib/factlens) and the builder's own folder, left out of the library part
_PACKAGE = Path(__file__).resolve().parents[1]
_BUILDER = Path(__file__).resolve().parent
_LOADS = re.compile(r"""load_results\(\s*["']([^"']+)["']""")
#: "every results file" in :func:`reads`
EVERY = "*"
#: instruction-set extensions worth naming beside the CPU (flags of /proc/cpuinfo -> name shown)
_FEATURES = {"avx512f": "avx512f", "amx_tile": "amx"}


def _sha(parts: Iterable[str | bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cell_source(cell: Mapping[str, Any]) -> str:
    """A cell's source as one string (notebooks store it as a string or a list of lines)."""
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def code_cells(nb: Mapping[str, Any]) -> list[str]:
    """The sources of the notebook's code cells, in order, papermill's injected parameters left out."""
    return [cell_source(c) for c in nb.get("cells", [])
            if c.get("cell_type") == "code" and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def library_digest() -> str:
    """The digest of the library's source, the builder (``factlens/book``) left out."""
    files = sorted(p for p in _PACKAGE.rglob("*.py") if _BUILDER not in p.parents)
    return _sha(part for p in files for part in (p.relative_to(_PACKAGE).as_posix(), p.read_bytes()))


def data_digest() -> str:
    """The digest of ``$FACTLENS_DATA_DIR``'s files (each one's name and the SHA-256 of its contents),
    or of the word "downloaded" when it is unset. Not the folder's path nor the files' modification
    times: a copy of the same data made again (a new download, a refreshed mount, another checkout)
    keeps every chapter's key. The local copies (63 MB) hash in about a tenth of a second."""
    root = data_root()
    if root is None:
        return _sha(["downloaded"])
    root = root.resolve()
    parts: list[str | bytes] = []
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = Path(folder) / name
            parts += [path.relative_to(root).as_posix(), hashlib.sha256(path.read_bytes()).digest()]
    return _sha(parts)


def environment_digest(root: Path) -> str:
    """The digest of the Python version and the book's ``requirements.txt`` (when it has one)."""
    requirements = root / "requirements.txt"
    return _sha([sys.version, requirements.read_bytes() if requirements.is_file() else b""])


def build_digests(root: str | Path) -> dict[str, str]:
    """The parts of the key every chapter of a build shares: ``library``, ``data``, ``environment``."""
    return {"library": library_digest(), "data": data_digest(), "environment": environment_digest(Path(root))}


def reads(nb: Mapping[str, Any]) -> str | list[str]:
    """The results files a notebook reads: :data:`EVERY` when its parameters cell declares
    ``other_results``, else the names it passes to ``load_results`` in its code cells
    (``["tracing.json"]``)."""
    cells = [c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if cells and "other_results" in assignments(cell_source(cells[0])):
        return EVERY
    return sorted({f"{name}.json" for source in code_cells(nb) for name in _LOADS.findall(source)})


def inputs_digest(read: str | list[str], results_dir: Path, parameters: Mapping[str, Any],
                  own: Iterable[str] = ()) -> str:
    """The digest of the results files ``read`` (see :func:`reads`) as they are now, less ``own``
    (the files the chapter itself wrote last time)."""
    if read == EVERY:
        folders = [results_dir, *map(Path, parameters.get("other_results") or [])]
        files = [p for folder in folders for p in sorted(folder.glob("*.json"))
                 if not (folder == results_dir and p.name in set(own))]
    else:
        files = [results_dir / name for name in read]
    return _sha(part for p in files for part in (str(p), p.read_bytes() if p.is_file() else b"missing"))


def chapter_key(nb: Mapping[str, Any], parameters: Mapping[str, Any], shared: Mapping[str, str],
                results_dir: Path, own: Iterable[str] = ()) -> dict[str, str]:
    """The key of one chapter (module docstring): its ``code``, ``parameters`` and ``inputs`` with
    the ``shared`` parts of :func:`build_digests`."""
    return {
        "code": _sha(code_cells(nb)),
        "parameters": _sha([json.dumps(parameters, sort_keys=True, default=str)]),
        **shared,
        "inputs": inputs_digest(reads(nb), results_dir, parameters, own),
    }


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """This machine's CPU: ``cpu`` (its model name), ``cores`` (those this process may use) and
    ``cpu_features`` (AVX-512, AMX when it has them)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            field, _, value = line.partition(":")
            if field.strip() == "model name" and not name:
                name = value.strip()
            elif field.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    features = sorted({shown for flag, shown in _FEATURES.items() if flag in flags})
    return {"cpu": name or platform.processor() or platform.machine(), "cores": cores, "cpu_features": features}


def describe_execution(record: Mapping[str, Any]) -> str:
    """One line for a chapter's page: "Executed 2026-12-05 00:40 UTC on AMD EPYC 7B13 (2 cores,
    avx512f) in 512 s."."""
    when = _dt.datetime.fromisoformat(record["executed_at"]).astimezone(_dt.timezone.utc)
    cpu = ", ".join([f"{record['cores']} cores", *record.get("cpu_features", [])])
    return f"Executed {when:%Y-%m-%d %H:%M} UTC on {record['cpu']} ({cpu}) in {record['seconds']:.0f} s."


# --------------------------------------------------------------------------- the record


def record_path(executed: Path) -> Path:
    """Where the record of the executed copy ``executed`` (``x.ipynb``) lives: ``x.key.json`` beside it."""
    return executed.with_suffix(".key.json")


def read_record(executed: Path) -> dict[str, Any] | None:
    """The record beside ``executed``, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads(record_path(executed).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("key"), dict) else None


def write_record(executed: Path, key: Mapping[str, str], writes: Iterable[str], seconds: float) -> dict[str, Any]:
    """Write the record of a successful execution (atomically) and return it."""
    record = {
        "key": dict(key),
        "writes": sorted(writes),
        "seconds": round(seconds, 1),
        "executed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **machine(),
    }
    with replacing(record_path(executed)) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return record


def results_listing(results_dir: Path) -> dict[str, tuple[int, int]]:
    """``{name: (size, mtime_ns)}`` of the results files: compared before and after a chapter runs,
    it tells which files the chapter wrote."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in results_dir.glob("*.json")}
