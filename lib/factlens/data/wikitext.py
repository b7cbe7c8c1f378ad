"""The text corpus (WikiText, Merity et al. 2016): its paragraphs."""

from __future__ import annotations

from collections.abc import Iterator

from factlens.data.files import WIKITEXT_CONFIGS, require

_SPLITS = {"valid": "valid", "validation": "valid", "test": "test", "train": "train"}


def _is_heading(line: str) -> bool:
    return len(line) > 2 and line.startswith("= ") and line.endswith(" =")


def corpus(name: str = "wikitext-2", split: str = "valid") -> Iterator[str]:
    """The paragraphs of a WikiText split, stripped, skipping empty lines and section headings
    (``= Title =``, ``= = Section = =``). The text is the tokenized WikiText (``<unk>``,
    ``@-@``), as in the local copies. ``name``: ``"wikitext-2"`` (alias ``"wikitext"``) or
    ``"wikitext-103"``; ``split``: ``"valid"`` (or ``"validation"``), ``"test"``, ``"train"``.
    """
    name = {"wikitext": "wikitext-2"}.get(name, name)
    if name not in WIKITEXT_CONFIGS:
        raise ValueError(f"unknown corpus {name!r}; valid names: wikitext, {', '.join(WIKITEXT_CONFIGS)}")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(_SPLITS)}")
    path = require(f"{name}/{_SPLITS[split]}.txt")

    def paragraphs() -> Iterator[str]:
        with path.open(encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if text and not _is_heading(text):
                    yield text

    return paragraphs()
