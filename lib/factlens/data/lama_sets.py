"""LAMA (Petroni et al. 2019): its four corpora, relations and common vocabulary; ParaRel's paraphrases.

Each corpus has its own small parser, as the files differ: T-REx (one file per relation, the
relation's template), Google-RE (one file per relation, LAMA's templates, which the files do
not hold), SQuAD and ConceptNet (one file of masked sentences, no templates).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from factlens.data.files import data_file, require, source, unavailable
from factlens.data.reading import MalformedDataError, field, jsonl, optional_strings, strings
from factlens.data.records import LamaFact, Relation

LAMA_CORPORA = ("TREx", "Google_RE", "Squad", "ConceptNet")

#: LAMA's Google-RE templates (LAMA's ``scripts/run_experiments.py``); the jsonl files hold none.
GOOGLE_RE_TEMPLATES = {
    "place_of_birth": "[X] was born in [Y] .",
    "date_of_birth": "[X] (born [Y]).",
    "place_of_death": "[X] died in [Y] .",
}

#: The 39 T-REx relations that ParaRel has paraphrase patterns for.
PARAREL_RELATIONS = (
    "P1001", "P101", "P103", "P106", "P108", "P127", "P1303", "P131", "P136", "P1376",
    "P138", "P140", "P1412", "P159", "P17", "P176", "P178", "P19", "P190", "P20",
    "P264", "P27", "P276", "P279", "P30", "P36", "P361", "P364", "P37", "P39",
    "P407", "P413", "P449", "P463", "P47", "P495", "P530", "P740", "P937",
)  # fmt: skip


def _corpus_name(name: str) -> str:
    names = {c.lower().replace("_", "").replace("-", ""): c for c in LAMA_CORPORA}
    try:
        return names[name.lower().replace("_", "").replace("-", "")]
    except KeyError:
        raise ValueError(f"unknown LAMA corpus {name!r}; valid names: {', '.join(LAMA_CORPORA)}") from None


def lama_relations() -> dict[str, Relation]:
    """LAMA's relations by id: the 46 T-REx relations of ``relations.jsonl`` (in file order;
    5 of them have no facts), then Google-RE's three (``place_of_birth``, ``date_of_birth``,
    ``place_of_death``, type N-1, with LAMA's templates)."""
    path = require("lama/relations.jsonl")
    relations: dict[str, Relation] = {}
    for line, rec in jsonl(path):
        rel = Relation(
            id=field(rec, "relation", path, line),
            label=field(rec, "label", path, line),
            template=field(rec, "template", path, line),
            type=field(rec, "type", path, line),
            description=rec.get("description") or "",
            corpus="TREx",
        )
        if rel.type not in ("1-1", "N-1", "N-M"):
            raise MalformedDataError(f"{path}, line {line}: unknown relation type {rel.type!r}")
        relations[rel.id] = rel
    for rid, template in GOOGLE_RE_TEMPLATES.items():
        relations[rid] = Relation(rid, rid.replace("_", " "), template, "N-1", "", "Google_RE")
    return relations


def _trex(relation: str | None) -> list[LamaFact]:
    """T-REx: ``lama/TREx/<id>.jsonl`` per relation of ``relations.jsonl`` (those without a file
    are skipped, as LAMA does); the evidences are the masked Wikipedia sentences."""
    relations = [r for r in lama_relations().values() if r.corpus == "TREx"]
    if relation is not None:
        relations = [r for r in relations if r.id == relation]
    facts = []
    for rel in relations:
        path = data_file(f"lama/TREx/{rel.id}.jsonl", missing_ok=True)
        if path is None:
            continue
        for line, rec in jsonl(path):
            evidences = field(rec, "evidences", path, line, list) if "evidences" in rec else []
            facts.append(LamaFact(
                subject=field(rec, "sub_label", path, line),
                relation=rec.get("predicate_id") or rel.id,
                object=field(rec, "obj_label", path, line),
                template=rel.template,
                uuid=field(rec, "uuid", path, line),
                corpus="TREx",
                evidences=tuple(e["masked_sentence"] for e in evidences
                                if isinstance(e, dict) and "masked_sentence" in e),
            ))
    if not facts and relation is None:
        raise unavailable("lama/TREx/", source("lama/TREx/"), "it holds no relation files")
    return facts


def _google_re(relation: str | None) -> list[LamaFact]:
    """Google-RE: ``lama/Google_RE/<relation>_test.jsonl`` with LAMA's three templates."""
    facts = []
    for rid, template in GOOGLE_RE_TEMPLATES.items():
        if relation is not None and rid != relation:
            continue
        path = require(f"lama/Google_RE/{rid}_test.jsonl")
        facts += [
            LamaFact(
                subject=field(rec, "sub_label", path, line),
                relation=rid,
                object=field(rec, "obj_label", path, line),
                template=template,
                uuid=field(rec, "uuid", path, line),
                corpus="Google_RE",
                evidences=optional_strings(rec, "masked_sentences", path, line),
            )
            for line, rec in jsonl(path)
        ]
    return facts


def _masked_sentences(corpus: str, relation: str | None, relation_of: Callable[[dict[str, Any], Path, int], str],
                      subject_of: Callable[[dict[str, Any]], str]) -> list[LamaFact]:
    """A corpus of masked sentences (``lama/<corpus>/test.jsonl``): the cloze is the first
    sentence, every ``[MASK]`` written ``[Y]``."""
    path = require(f"lama/{corpus}/test.jsonl")
    facts = []
    for line, rec in jsonl(path):
        sentences = strings(rec, "masked_sentences", path, line)
        if not sentences or "[MASK]" not in sentences[0]:
            raise MalformedDataError(f"{path}, line {line}: no masked sentence with [MASK]")
        rid = relation_of(rec, path, line)
        if relation is not None and rid != relation:
            continue
        facts.append(LamaFact(
            subject=subject_of(rec),
            relation=rid,
            object=field(rec, "obj_label", path, line),
            template=sentences[0].replace("[MASK]", "[Y]"),
            uuid=str(rec.get("uuid") or rec.get("id") or f"{corpus}-{line}"),
            corpus=corpus,
            evidences=sentences,
        ))
    return facts


def _squad(relation: str | None) -> list[LamaFact]:
    """SQuAD: no subject (the file's ``sub_label`` is the placeholder "Squad"), relation "Squad"."""
    return _masked_sentences("Squad", relation, lambda rec, path, line: "Squad", lambda rec: "")


def _conceptnet(relation: str | None) -> list[LamaFact]:
    """ConceptNet: the relation is the record's ``pred``."""
    return _masked_sentences(
        "ConceptNet", relation, lambda rec, path, line: field(rec, "pred", path, line),
        lambda rec: str(rec.get("sub_label") or rec.get("sub") or ""),
    )


_PARSERS = {"TREx": _trex, "Google_RE": _google_re, "Squad": _squad, "ConceptNet": _conceptnet}


def lama(corpus: str = "TREx", relation: str | None = None) -> list[LamaFact]:
    """The facts of one LAMA corpus: ``"TREx"``, ``"Google_RE"``, ``"Squad"`` or ``"ConceptNet"``
    (case and ``_``/``-`` do not matter).

    * T-REx: one file per relation (``lama/TREx/<id>.jsonl``); relations of ``relations.jsonl``
      with no file are skipped, as LAMA does. ``template`` is the relation's template;
      ``evidences`` are the masked Wikipedia sentences (empty for relations from ParaRel).
    * Google-RE: ``lama/Google_RE/<relation>_test.jsonl`` with LAMA's three templates;
      ``evidences`` are the records' ``masked_sentences``.
    * SQuAD and ConceptNet (``<corpus>/test.jsonl``): no relation templates; the cloze is the
      masked sentence, so ``template`` is that sentence with ``[MASK]`` written ``[Y]`` (every
      ``[MASK]``: three SQuAD sentences mask the object twice) and has no ``[X]``. SQuAD's
      ``subject`` is empty (the file's ``sub_label`` is the placeholder ``"Squad"``), its
      ``relation`` is ``"Squad"``; ConceptNet's relation is the record's ``pred``.

    ``relation`` keeps only the facts of that relation.
    """
    return _PARSERS[_corpus_name(corpus)](relation)


def lama_vocab() -> list[str]:
    """LAMA's common cased vocabulary (21,018 tokens shared by the models LAMA compares)."""
    path = require("lama/common_vocab_cased.txt")
    return [t for t in (line.strip() for line in path.read_text(encoding="utf-8").splitlines()) if t]


def pararel_patterns(relation: str) -> list[str]:
    """ParaRel's paraphrase templates (with ``[X]`` and ``[Y]``) for a T-REx relation id."""
    if relation not in PARAREL_RELATIONS:
        raise ValueError(
            f"ParaRel has no patterns for relation {relation!r}; it has: {', '.join(PARAREL_RELATIONS)}"
        )
    path = require(f"pararel/patterns/{relation}.jsonl")
    return [field(rec, "pattern", path, line) for line, rec in jsonl(path)]
