"""The library's shape (DESIGN.md, Layout): wings on floors, imports running downward only, no
import circles, every module small enough to read in one sitting. Read from the source with
``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "factlens"
# a wing may import its own modules and any wing on a lower floor, never one on its floor or above
FLOORS = {
    "core": 0,
    "data": 1, "evidence": 1,
    "probing": 2, "memories": 2, "locating": 2,
    "editing": 3,
    "show": 4,
    "book": 5,
}
# across one floor, the exceptions the design names: the ripple report re-asks LAMA's questions
SIDEWAYS = {("editing", "probing")}
MAX_LINES = 600


def _module(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(LIB.rglob("*.py"))}


def _imports(path: Path) -> list[str]:
    """The factlens modules ``path`` imports, anywhere in it (also inside functions and for type checking)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("factlens"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in names if n in MODULES] or [node.module]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("factlens")]
    return found


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else None


def test_the_wings_are_the_designs():
    wings = {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert wings == set(FLOORS)
    loose = sorted(p.name for p in LIB.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside a wing: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downward_only(module):
    wing = _wing(module)
    if wing is None:
        return  # factlens/__init__.py: the package's door (load_model on first use)
    upward = [target for target in _imports(MODULES[module])
              if (other := _wing(target)) and other != wing and FLOORS[other] >= FLOORS[wing]
              and (wing, other) not in SIDEWAYS]
    assert not upward, f"{module} (floor {FLOORS[wing]}) imports {upward} on its floor or above"


def test_no_import_circles():
    """Imports (module level, inside functions, and those for type checking alone) form no cycle."""
    graph = {m: {t for t in _imports(p) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The two checks above fail on a hand-made circle (a -> b -> a) and an import from a higher floor."""
    core, show = tmp_path / "factlens" / "core", tmp_path / "factlens" / "show"
    for folder in (core, show):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
    (core / "a.py").write_text("from factlens.core import b\nfrom factlens.show import plots\n")
    (core / "b.py").write_text("def f():\n    from factlens.core import a\n")
    (show / "plots.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "LIB", tmp_path / "factlens")
    modules = {_module(p): p for p in sorted((tmp_path / "factlens").rglob("*.py"))}
    monkeypatch.setattr(__import__(__name__), "MODULES", modules)
    with pytest.raises(AssertionError, match="import circle: factlens.core.a -> factlens.core.b -> factlens.core.a"):
        test_no_import_circles()
    with pytest.raises(AssertionError, match=r"imports \['factlens.show.plots'\]"):
        test_imports_run_downward_only("factlens.core.a")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_short(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}: split it by idea)"
