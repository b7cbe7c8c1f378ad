"""The records the loaders return: plain frozen dataclasses, one per kind of data set item.

Templates use LAMA's ``[X]``/``[Y]`` slots for LAMA and ParaRel, and Python's ``{}`` (the
subject) for ROME's data sets, as the papers do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LamaFact:
    """One LAMA probe.

    ``template`` has ``[X]`` (the subject) and ``[Y]`` (the object). For SQuAD and ConceptNet,
    which have no relation templates, the template is the masked sentence itself with
    ``[MASK]`` written as ``[Y]`` and no ``[X]``. ``evidences`` are the corpus sentences with
    the object masked (``[MASK]``), empty where the file has none.
    """

    subject: str
    relation: str
    object: str
    template: str
    uuid: str
    corpus: str
    evidences: tuple[str, ...] = ()

    def cloze(self, mask: str = "[MASK]") -> str:
        """The probe sentence: the template with the subject filled in and the object masked."""
        return self.template.replace("[X]", self.subject).replace("[Y]", mask)


@dataclass(frozen=True)
class Relation:
    """A LAMA relation: Wikidata id (or Google-RE name), label, template and cardinality type."""

    id: str
    label: str
    template: str
    type: str  # "1-1", "N-1" or "N-M"
    description: str = ""
    corpus: str = "TREx"


@dataclass(frozen=True)
class KnownFact:
    """One of ROME's 1,209 known facts (``known_1000.json``); ``template`` has ``{}`` for the subject.

    ``prompt`` is the file's prompt: the filled template, sometimes followed by the first
    words the model generated (``template.format(subject)`` is always a prefix of it).
    """

    known_id: int
    subject: str
    attribute: str
    template: str
    prediction: str
    prompt: str
    relation_id: str


@dataclass(frozen=True)
class CounterFactCase:
    """One CounterFact case, from ROME's original format or the reduced MEND/EasyEdit one.

    ``prompt`` is a template with ``{}`` for the subject. ``neighborhood_prompts`` are
    ``(prompt, true object)`` pairs. The reduced format has one paraphrase, one neighborhood
    prompt, no generation or attribute prompts and no relation id (``None``).
    """

    case_id: int
    prompt: str
    subject: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[tuple[str, str], ...]
    generation_prompts: tuple[str, ...] = ()
    relation_id: str | None = None
    attribute_prompts: tuple[str, ...] = ()

    @property
    def filled_prompt(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.prompt.format(self.subject)


@dataclass(frozen=True)
class ZsreCase:
    """One zsRE edit (ROME's format): a question about ``subject``, its rephrasing, the new
    answer to edit in (``target_new``, the file's ``alt``), the true ``answers``, and an
    unrelated neighbourhood question ``loc`` with its answer ``loc_ans``."""

    case_id: int
    subject: str
    src: str
    rephrase: str
    target_new: str
    answers: tuple[str, ...]
    loc: str
    loc_ans: str

    @property
    def answer(self) -> str:
        """The first true answer."""
        return self.answers[0] if self.answers else ""
