"""The text corpus (WikiText, Merity et al. 2016): its paragraphs as running text.

WikiText is released tokenized: `` @-@ `` for a hyphen inside a word, spaces around
punctuation (``lobster , known``), ``<unk>`` for rare words. A model reads untokenized text,
so :func:`corpus` detokenizes each line as language-model evaluation harnesses do
(:func:`detokenize`) and drops the lines that hold ``<unk>``, before the text reaches ROME's
statistics ``C``, Geva et al.'s trigger search and the object frequencies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from factlens.data.files import WIKITEXT_CONFIGS, require

_SPLITS = {"valid": "valid", "validation": "valid", "test": "test", "train": "train"}

# The rules of lm-evaluation-harness's ``wikitext_detokenizer`` (EleutherAI; from Megatron-LM's
# zero-shot detokenizer), in its order, less two: ``/' [0-9]/``, which only matches literal
# slashes, and " N " -> " 1 ", Penn Treebank's number token, which WikiText does not use (its
# " N " is north, "57 ° 53 ′ N", or nitrogen, "N @-@ H").
_REPLACE_FIRST = (
    ("s '", "s'"),  # a plural's possessive
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),  # number and word separators
    (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "),
)  # fmt: skip
_BRACKETS = (  # no space inside brackets and quotes
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
)
_REPLACE_LAST = (
    ("= = = =", "===="), ("= = =", "==="), ("= =", "=="),  # headings
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"), (" \n", "\n"), ("\n ", "\n"),
    (" 's", "'s"),
)  # fmt: skip


def detokenize(text: str) -> str:
    """WikiText's tokenized ``text`` as running text, by the rules of lm-evaluation-harness's
    ``wikitext_detokenizer``: ``a @-@ b`` -> ``a-b`` (``@,@``, ``@.@`` likewise), no space
    before ``, . ; : ! ?``, none inside brackets and quotes, ``Europe 's`` -> ``Europe's``.

    The rules match a punctuation mark with a space on both sides, so apply it to a whole line
    as the file has it (each ends with a space before its newline).
    """
    for old, new in _REPLACE_FIRST:
        text = text.replace(old, new)
    for pattern, new in _BRACKETS:
        text = pattern.sub(new, text)
    for old, new in _REPLACE_LAST:
        text = text.replace(old, new)
    return text


def _is_heading(line: str) -> bool:
    return len(line) > 2 and line.startswith("= ") and line.endswith(" =")


# a sentence of the tokenized text ends with a free-standing ". ", "! " or "? " ("U.S." and
# "3 @.@ 5" are no ends)
_SENTENCE_END = re.compile(r"(?<= [.!?]) ")


def corpus(name: str = "wikitext-2", split: str = "valid") -> Iterator[str]:
    """The sentences of a WikiText split as running text (:func:`detokenize`), in file order,
    leaving out section headings (``= Title =``, ``= = Section = =``) and every sentence that
    holds ``<unk>``.

    The unit is the sentence, not the file's line (a paragraph): most paragraphs hold an
    ``<unk>`` somewhere, and dropping them would keep 163 of the validation split's 1,841
    paragraphs, 2% of its words, too few for ROME's statistics; about a third of the
    sentences have none. ``name``: ``"wikitext-2"`` (alias ``"wikitext"``) or
    ``"wikitext-103"``; ``split``: ``"valid"`` (or ``"validation"``), ``"test"``, ``"train"``.
    """
    name = {"wikitext": "wikitext-2"}.get(name, name)
    if name not in WIKITEXT_CONFIGS:
        raise ValueError(f"unknown corpus {name!r}; valid names: wikitext, {', '.join(WIKITEXT_CONFIGS)}")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(_SPLITS)}")
    path = require(f"{name}/{_SPLITS[split]}.txt")

    def sentences() -> Iterator[str]:
        with path.open(encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if not text or _is_heading(text):
                    continue
                for sentence in _SENTENCE_END.split(text):
                    if "<unk>" not in sentence:
                        yield detokenize(f" {sentence} ").strip()

    return sentences()
