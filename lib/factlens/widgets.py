"""Widgets that let a reader tweak prompts, facts and edits (ipywidgets).

Every widget function shows a rendered default before any interaction, so the static book,
which has no kernel, still shows a result; with a kernel the controls re-run the experiment.
Each chapter keeps its widgets in its own section below.
"""

from __future__ import annotations

# --- LAMA (chapter 1) ---------------------------------------------------------------------

# --- key-value memories (chapter 2) -------------------------------------------------------

# --- causal tracing (chapter 3a) ----------------------------------------------------------

# --- editing and evaluation (chapter 3b) --------------------------------------------------
