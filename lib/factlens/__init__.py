"""factlens: parametric knowledge in language models.

The library behind the book "Parametric Knowledge in Language Models": LAMA probing
(Petroni et al. 2019), feed-forward layers as key-value memories (Geva et al. 2021),
causal tracing and ROME (Meng et al. 2022), on TransformerLens 4.

``factlens.load_model`` is imported on first use, so that ``import factlens`` (and the book
builder, ``python -m factlens.book``) does not pay for importing torch and TransformerLens.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Idle OpenMP threads sleep instead of spinning: two PyTorch processes on the same cores (a
# notebook beside the book's build) then share them in proportion instead of slowing each
# other several-fold (bench/bench_threads.py). OpenMP reads this once, when torch loads it, so
# it only takes effect when factlens is imported before torch; the book's kernels and `make lab`
# set it in their environment. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from factlens.core.models import load_model

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from factlens.core.models import load_model

        return load_model
    raise AttributeError(f"module 'factlens' has no attribute {name!r}")
