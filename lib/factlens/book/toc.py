"""The book's table of contents (``_toc.yml``) and each notebook's parameters.

Parameters of a notebook, in order (later ones win):

1. the profile's common parameters ``model_name``, ``profile`` and ``results_dir``;
2. the profile's section of the notebook's sidecar ``<stem>.yml`` (top-level keys ``smoke``,
   ``cpu``, ``full``, ``paper``, each a mapping of parameters);
3. the ``-p key=value`` overrides, which apply to every notebook.

Besides those, the builder provides :data:`BUILD_PARAMETERS` to the notebooks whose
parameters cell declares them (the Claims page's ``other_results``).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"model_name": "gemma-3-270m"},
    "cpu": {"model_name": "gemma-3-270m"},
    "full": {"model_name": "gemma-3-270m"},
    "paper": {"model_name": "gpt2-xl"},
}
#: parameters the builder fills in for a notebook only when its parameters cell declares them
BUILD_PARAMETERS = {
    "other_results": "the results folders of the other builds kept inside this one (<build>/<name>/results, "
    "as `make claims` writes a second model's), absolute paths",
}


class BookError(RuntimeError):
    """The book could not be built; the message says which notebook or step and why."""


# ---------------------------------------------------------------------------------------------
# the table of contents


def find_root(start: str | Path | None = None) -> Path:
    """The book's root: the nearest folder holding ``_toc.yml`` and ``_config.yml``.

    Searched upwards from ``start`` (default: the working directory), then from this
    package's location (``lib/factlens/book`` -> the repository root).
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


def assignments(source: str) -> dict[str, str]:
    """``{name: source of the value}`` for the top-level ``name = value`` statements of a cell."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = ast.get_source_segment(source, node.value)
    return found


def declared_parameters(notebook: str | Path) -> set[str]:
    """The names the notebook's cell tagged ``parameters`` assigns (empty when it has none)."""
    try:
        cells = json.loads(Path(notebook).read_text()).get("cells", [])
    except (OSError, ValueError) as err:
        raise BookError(f"cannot read the notebook {notebook}: {err}") from err
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell.get("source", "")
            try:
                return set(assignments(source if isinstance(source, str) else "".join(source)))
            except SyntaxError as err:
                raise BookError(f"{notebook}: its parameters cell is not valid Python: {err}") from err
    return set()


def other_results(build: str | Path) -> list[str]:
    """The results folders of the builds kept inside ``build`` (``<build>/<name>/results`` holding
    at least one results file), absolute and sorted: what ``other_results`` defaults to."""
    folders = (p for p in Path(build).resolve().glob("*/results") if p.is_dir())
    return [str(p) for p in sorted(folders) if any(p.glob("*.json"))]


def build_parameters(notebook: str | Path, build: str | Path, overrides: Mapping[str, Any] | None = None) -> dict:
    """The :data:`BUILD_PARAMETERS` the notebook declares, for a build into ``build``: a ``-p``
    value wins over the builder's (its relative paths are taken from the working directory)."""
    declared = declared_parameters(notebook) & set(BUILD_PARAMETERS)
    out: dict[str, Any] = {}
    if "other_results" in declared:
        given = (overrides or {}).get("other_results")
        if given is None:
            out["other_results"] = other_results(build)
        else:
            folders = [given] if isinstance(given, str) else given
            if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
                raise BookError(f"-p other_results expects a folder or a JSON list of folders, got {given!r}")
            out["other_results"] = [str(Path(f).resolve()) for f in folders]
    return out


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
