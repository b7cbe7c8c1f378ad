"""A chapter's results: the parameters its run used, its headline numbers, its claims, its time.

A notebook states its parameters once, in the cell tagged ``parameters`` (papermill injects the
profile's values after it). The first line of the next cell opens the run::

    run = results.Run("editing", globals())   # records the parameters as they are now

and the last cell saves it::

    run.claim("es", "ROME's efficacy score", paper="rome.counterfact.ROME.ES", ours=..., ci=..., n=...)
    run.save({"layer": hp.layer, ...})        # -> <results_dir>/editing.json

:class:`Run` takes as parameters every plain value (numbers, strings, lists, dicts, None)
defined when it opens, which in a notebook are exactly the parameters cell's and papermill's
injected names; ``model_name``, ``profile`` and ``results_dir`` must be among them. The file
holds ``chapter, model, profile, parameters, metrics, claims, seconds`` (the wall time from
opening the run to saving it), ``factlens_version`` and ``timestamp``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from factlens.core import registry
from factlens.core.cache import replacing
from factlens.evidence.claims import Claim, Statistic, claims_frame
from factlens.evidence.papers import PaperNumber

_NOT_PARAMETERS = {"In", "Out", "exit", "quit", "get_ipython"}
_REQUIRED = ("model_name", "profile", "results_dir")


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def notebook_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The plain values of a namespace (a notebook's ``globals()`` right after its parameters),
    leaving out private names and IPython's own (``In``, ``Out``, ...)."""
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and k not in _NOT_PARAMETERS and _plain(v)}


class Run:
    """One execution of a chapter: its parameters (read once, when it opens), its claims, its results file."""

    def __init__(self, chapter: str, namespace: Mapping[str, Any]):
        if not chapter or "/" in chapter or "\\" in chapter or chapter.startswith("."):
            raise ValueError(f"chapter must be a plain file stem, got {chapter!r}")
        self.chapter = chapter
        self.parameters = notebook_parameters(namespace)
        missing = [k for k in _REQUIRED if k not in self.parameters]
        if missing:
            raise ValueError(f"Run({chapter!r}) opened before {missing} were defined: open it right after "
                             "the parameters cell, with globals()")
        self.model_name: str = self.parameters["model_name"]
        self.profile: str = self.parameters["profile"]
        self.results_dir = Path(self.parameters["results_dir"])
        self.claims: list[Claim] = []
        self._start = time.perf_counter()

    def claim(self, claim_id: str, statement: str, *, paper: str | PaperNumber, ours: float,
              ci: tuple[float, float], n: int, kind: Literal["value", "ordering"] = "value",
              reference: float | None = None, statistic: Statistic = "mean", protocol: str = "") -> Claim:
        """Register one headline claim (see :class:`factlens.evidence.claims.Claim`; its τ comes with the
        paper's number) and return it; an id registered twice replaces the first (a cell run again)."""
        made = Claim(self.chapter, claim_id, statement, registry.entry(self.model_name).label, paper, float(ours),
                     (float(ci[0]), float(ci[1])), int(n), kind, None if reference is None else float(reference),
                     protocol, statistic)
        self.claims = [c for c in self.claims if c.id != claim_id] + [made]
        return made

    def claims_frame(self):
        """This run's claims as a table (:func:`factlens.evidence.claims.claims_frame`)."""
        return claims_frame(self.claims)

    @property
    def seconds(self) -> float:
        """Wall seconds since the run opened."""
        return time.perf_counter() - self._start

    def save(self, metrics: Mapping[str, Any]) -> Path:
        """Write ``<results_dir>/<chapter>.json`` (see :func:`save_results`)."""
        return save_results(self.chapter, metrics, model_name=self.model_name, profile=self.profile,
                            parameters=self.parameters, results_dir=self.results_dir,
                            claims=[c.to_record() for c in self.claims], seconds=self.seconds)


# --------------------------------------------------------------------------- the files


def json_safe(value: Any) -> Any:
    """Plain JSON types from numpy/torch scalars and arrays, paths, tuples, sets; NaN/inf -> None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v) for v in items]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    module = type(value).__module__.split(".")[0]
    if module == "torch" and hasattr(value, "detach"):  # tensors: to CPU, then Python values
        return json_safe(value.detach().cpu().tolist())
    if module == "pandas" and hasattr(value, "to_dict"):  # Series -> {index: value}, DataFrame -> {column: {...}}
        return json_safe(value.to_dict())
    if hasattr(value, "tolist"):  # numpy arrays and scalars (np.float32, np.int64, np.bool_)
        return json_safe(value.tolist())
    if hasattr(value, "item"):
        return json_safe(value.item())
    raise TypeError(f"cannot store a {type(value).__name__} in results: {value!r:.80}")


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("factlens")
    except PackageNotFoundError:
        return "unknown"


def write_json_atomically(path: Path, record: Any) -> Path:
    """Write ``record`` as JSON to ``path`` through a temporary file renamed into place
    (:func:`factlens.core.cache.replacing`), so a reader never meets a half-written file."""
    text = json.dumps(record, indent=2, allow_nan=False)
    with replacing(path) as tmp:
        with tmp.open("w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
    return path


def save_results(chapter: str, metrics: Mapping[str, Any], *, model_name: str, profile: str,
                 parameters: Mapping[str, Any], results_dir: str | Path,
                 claims: list[dict[str, Any]] | None = None, seconds: float | None = None) -> Path:
    """Write a chapter's headline numbers to ``<results_dir>/<chapter>.json``, atomically.

    The file holds ``chapter``, ``model``, ``profile``, ``parameters``, ``metrics``, ``claims``
    (records of :meth:`factlens.evidence.claims.Claim.to_record`), ``seconds``, ``factlens_version`` and
    ``timestamp`` (UTC, ISO 8601). numpy/torch scalars and arrays become numbers and lists; NaN
    and infinities become ``null``.
    """
    if not chapter or "/" in chapter or "\\" in chapter or chapter.startswith("."):
        raise ValueError(f"chapter must be a plain file stem, got {chapter!r}")
    record = {
        "chapter": chapter,
        "model": model_name,
        "profile": profile,
        "parameters": json_safe(dict(parameters)),
        "metrics": json_safe(dict(metrics)),
        "claims": json_safe(list(claims or [])),
        "seconds": json_safe(seconds),
        "factlens_version": _version(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return write_json_atomically(Path(results_dir) / f"{chapter}.json", record)


def load_results(chapter: str, results_dir: str | Path) -> dict[str, Any] | None:
    """The record :func:`save_results` wrote for ``chapter``, or None when there is none
    (or it is unreadable: a chapter not run yet)."""
    path = Path(results_dir) / f"{chapter}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def collect_claims(results_dir: str | Path) -> list[Claim]:
    """Every claim of every chapter's results file in ``results_dir`` (``claims.json`` excluded),
    in file-name order; each verdict is recomputed by the rule and checked against the stored one."""
    out: list[Claim] = []
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.name == "claims.json":
            continue
        record = load_results(path.stem, results_dir) or {}
        out += [Claim.from_record(r) for r in record.get("claims", [])]
    return out


def write_claims(results_dir: str | Path) -> Path:
    """``<results_dir>/claims.json``: the list of every chapter's claim records."""
    records = [c.to_record() for c in collect_claims(results_dir)]
    return write_json_atomically(Path(results_dir) / "claims.json", json_safe(records))
