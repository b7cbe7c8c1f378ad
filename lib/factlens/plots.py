"""Figures shared by the chapters and the playground (matplotlib, one function per figure).

Each chapter keeps its figures in its own section below; a function takes results, not a
model, and returns the matplotlib ``Figure`` so a notebook shows it and a test can check it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: F401  (used by every section)

# --- LAMA (chapter 1) ---------------------------------------------------------------------

# --- key-value memories (chapter 2) -------------------------------------------------------

# --- causal tracing (chapter 3a) ----------------------------------------------------------

# --- editing and evaluation (chapter 3b) --------------------------------------------------
