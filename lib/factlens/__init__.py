"""factlens: parametric knowledge in language models.

The library behind the book "Parametric Knowledge in Language Models": LAMA probing
(Petroni et al. 2019), feed-forward layers as key-value memories (Geva et al. 2021),
causal tracing and ROME (Meng et al. 2022), on TransformerLens 4.

``factlens.load_model`` is imported on first use, so that ``import factlens`` (and the book
builder, ``python -m factlens.book``) does not pay for importing torch and TransformerLens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from factlens.models import load_model

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from factlens.models import load_model

        return load_model
    raise AttributeError(f"module 'factlens' has no attribute {name!r}")
