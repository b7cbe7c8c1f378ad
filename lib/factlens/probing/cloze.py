"""Cloze statements (Petroni et al. 2019, section 3): a fact asked as a sentence with a blank.

A knowledge-base triple (subject, relation, object) becomes a cloze statement through the
relation's template, ``"[X] was born in [Y] ."`` -> ``"Dante was born in [Y] ."``. A causal
model reads left to right, so the statement is split at the blank (:class:`Cloze`): the prefix
it reads, and what follows, which decides how the candidates are scored
(:mod:`factlens.probing.ranking`): a final ``[Y]`` by the next token alone, an inner one with
the rest of the sentence filled in (:func:`tail`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from factlens.data import LamaFact

#: Corpora whose "template" is a masked sentence with no subject slot.
SENTENCE_CORPORA = ("Squad", "ConceptNet")
_PUNCTUATION = set(string.punctuation) | {" "}


@dataclass(frozen=True)
class Cloze:
    """A template with the subject filled in, split at the first ``[Y]``.

    ``prefix`` is the text before ``[Y]`` (without its trailing space), ``space`` whether the
    object follows a space, ``suffix`` the text after ``[Y]`` (further ``[Y]`` are filled with
    the same candidate), ``final`` whether only punctuation follows ``[Y]``.
    """

    prefix: str
    space: bool
    suffix: str

    @property
    def final(self) -> bool:
        return all(ch in _PUNCTUATION for ch in self.suffix.replace("[Y]", ""))


def cloze(template: str, subject: str = "", *, needs_subject: bool = True) -> Cloze:
    """Fill ``[X]`` with ``subject`` and split the template at ``[Y]``.

    Raises ``ValueError`` when the template has no ``[Y]``, or no ``[X]`` although
    ``needs_subject`` (relation templates; SQuAD's masked sentences have none).
    """
    if "[Y]" not in template:
        raise ValueError(f"template {template!r} has no [Y]: mark the object's place, e.g. '[X] was born in [Y] .'")
    if needs_subject and "[X]" not in template:
        raise ValueError(f"template {template!r} has no [X]: mark the subject's place, e.g. '[X] was born in [Y] .'")
    filled = template.replace("[X]", subject)
    head, _, suffix = filled.partition("[Y]")
    return Cloze(prefix=head.rstrip(), space=head != head.rstrip() or not head, suffix=suffix)


def fact_cloze(fact: LamaFact) -> Cloze:
    """A LAMA fact's cloze statement (SQuAD's and ConceptNet's masked sentences have no subject slot)."""
    return cloze(fact.template, fact.subject, needs_subject=fact.corpus not in SENTENCE_CORPORA)


def tail(c: Cloze, word: str, close: bool) -> str:
    """The text scored after a candidate ``word`` besides the word itself.

    An inner ``[Y]``: the rest of the sentence with the candidate filled in. A final ``[Y]``
    with ``close``: the sentence's end, the template's closing punctuation as it is written in
    text (LAMA's tokenized ``" ."`` becomes ``"."``; ``"."`` when the template has none), which
    closes the word: without it, a candidate whose tokens begin another's (``New`` and ``New
    York``) always outranks it, since every further token only lowers the log-probability.
    A final ``[Y]`` without ``close``: nothing.
    """
    if not c.final:
        return c.suffix.replace("[Y]", word)
    if not close:
        return ""
    return c.suffix.replace("[Y]", word).strip() or "."
