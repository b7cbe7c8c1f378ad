"""LAMA probing (Petroni et al. 2019) for causal language models, and past its limits.

A knowledge-base triple (subject, relation, object) becomes a cloze statement through the
relation's template (:mod:`factlens.probing.cloze`), ``"[X] was born in [Y] ."`` -> ``"Dante was
born in [Y] ."``, and the model knows the fact when it ranks the object first among the candidates.

LAMA probes masked language models, which see both sides of ``[Y]``. A causal model reads
left to right, so the protocol is adapted (:func:`probe`; the ranking itself is
:mod:`factlens.probing.ranking`):

* ``[Y]`` ends the sentence (only punctuation follows): the candidates are ranked by the
  next-token log-probability after the prefix, ``log P(y | prefix)``; one forward pass per
  fact, logits read only at the prefix's last position.
* ``[Y]`` inside the sentence: each candidate is filled in and the sentences are compared by
  their log-likelihood. The prefix's probability is the same for every candidate, so this
  is ``log P(y, suffix | prefix) = log P(y | prefix) + log P(suffix | prefix, y)``.
  Filling in every one of ~20,000 candidates is too slow, so this is a shortlist
  re-ranking: the ``rescore`` candidates with the best ``log P(y | prefix)`` are filled in
  and re-ordered by the full score, the others follow in first-token order. Every term is
  a log-probability (<= 0), so ``log P(y | prefix)`` bounds the full score from above, and
  the result's ``exact`` column says where that bound proves the re-ranking exact.
* Multi-token objects (:func:`probe_objects`), LAMA's stated limitation: a relation's
  candidate objects are ranked by the log-probability of their whole token sequence,
  ``log P(y_1..y_n | prefix) = sum_t log P(y_t | prefix, y_<t)``, with the same shortlist.

Candidates are LAMA's common vocabulary mapped to single tokens of the model
(:func:`factlens.probing.ranking.vocabulary_tokens`; words the tokenizer splits drop out) or the
full vocabulary. The metrics are the paper's: precision at k (P@k, the share of facts whose object ranks
in the top k) and mean reciprocal rank, in percent; a corpus's or relation type's score is
the mean over its relations, as in the paper's table. The baselines are
:mod:`factlens.probing.baselines`.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from factlens import data
from factlens.core.models import Model, view
from factlens.data import LamaFact
from factlens.probing.cloze import SENTENCE_CORPORA, Cloze, cloze, fact_cloze
from factlens.probing.ranking import (
    Candidates,
    Ranked,
    RankSettings,
    continuation_logprobs,
    next_token_logprobs,
    rank_facts,
    vocabulary_tokens,
)

#: Google-RE's relations whose objects are words (the third, date_of_birth, has years).
GOOGLE_RE_TWO = ("place_of_birth", "place_of_death")


class UnknownRelationError(ValueError):
    """A relation id that LAMA does not have."""


# --------------------------------------------------------------------------- results


def relation_types() -> dict[str, str]:
    """LAMA's relation -> cardinality type (1-1, N-1, N-M); SQuAD and ConceptNet are their own type."""
    return {rid: r.type for rid, r in data.lama_relations().items()}


@dataclass
class ProbeResult:
    """One row per probed fact (``frame``) and the facts that could not be probed (``skipped``).

    ``frame`` columns: corpus, relation, relation_type, subject, object, template, rank (1 =
    first), gold_logprob, top (the top-k words), top_logprobs, confidence (the probability
    of the top prediction), single_token (the object is one token), exact (the ranking is
    exact, see :func:`probe`), prefix_rank (the object's rank by ``log P(y | prefix)`` alone,
    exact: what the left context says). Metrics are percentages, as in the paper.
    """

    frame: pd.DataFrame
    skipped: list[tuple[LamaFact, str]] = field(default_factory=list)
    method: str = ""

    def __len__(self) -> int:
        return len(self.frame)

    def p_at(self, k: int) -> float:
        """P@k over all facts (%): the share whose object ranks in the top k."""
        return float((self.frame["rank"] <= k).mean() * 100) if len(self.frame) else math.nan

    @property
    def p_at_1(self) -> float:
        return self.p_at(1)

    @property
    def p_at_10(self) -> float:
        return self.p_at(10)

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank over all facts, in percent: 100 * mean(1 / rank)."""
        return float((1.0 / self.frame["rank"]).mean() * 100) if len(self.frame) else math.nan

    def by(self, key: str = "relation", *, macro: bool = True) -> pd.DataFrame:
        """P@1, P@10, MRR and fact count per ``key`` (relation, relation_type, corpus or any column).

        With ``macro`` a group above the relation (corpus, relation type) averages its
        relations' scores, as the paper's table does; otherwise it pools the facts.
        """
        if key not in self.frame:
            raise KeyError(f"no column {key!r}; choose one of {list(self.frame.columns)}")
        f = self.frame.assign(p1=(self.frame["rank"] <= 1) * 100.0, p10=(self.frame["rank"] <= 10) * 100.0,
                              rr=100.0 / self.frame["rank"])
        if macro and key != "relation":
            per_rel = f.groupby([key, "relation"]).agg(p1=("p1", "mean"), p10=("p10", "mean"), rr=("rr", "mean"),
                                                      n=("rank", "size"))
            table = per_rel.groupby(level=0).agg(p_at_1=("p1", "mean"), p_at_10=("p10", "mean"), mrr=("rr", "mean"),
                                                 n=("n", "sum"), relations=("n", "size"))
        else:
            table = f.groupby(key).agg(p_at_1=("p1", "mean"), p_at_10=("p10", "mean"), mrr=("rr", "mean"),
                                       n=("rank", "size"))
        return table

    def p_at_k_curve(self, max_k: int = 100, by: str = "corpus") -> pd.DataFrame:
        """P@k for k = 1..max_k (%), one column per group (relations averaged, as :meth:`by`)."""
        ks = np.arange(1, max_k + 1)
        curves = {}
        for name, g in self.frame.groupby(by):
            per_rel = [(r["rank"].to_numpy()[:, None] <= ks).mean(0) for _, r in g.groupby("relation")]
            curves[name] = np.mean(per_rel, axis=0) * 100
        return pd.DataFrame(curves, index=pd.Index(ks, name="k"))

    @classmethod
    def concat(cls, results: Sequence[ProbeResult]) -> ProbeResult:
        """One result holding the facts of several (in order), e.g. probes of two parts of a sample."""
        if not results:
            raise ValueError("concat needs at least one ProbeResult")
        frame = pd.concat([r.frame for r in results], ignore_index=True)
        method = " + ".join(dict.fromkeys(r.method for r in results))
        return cls(frame, [s for r in results for s in r.skipped], method=method)

    def where(self, rows: pd.Series | Sequence[bool]) -> ProbeResult:
        """The facts selected by a boolean mask over :attr:`frame`'s rows, in the same order."""
        mask = np.asarray(rows, dtype=bool)
        if len(mask) != len(self.frame):
            raise ValueError(f"the mask has {len(mask)} rows, the result {len(self.frame)}")
        return ProbeResult(self.frame[mask].reset_index(drop=True), method=self.method)

    def paper_rows(self) -> pd.Series:
        """P@1 (%) in the rows of the paper's Table 2: T-REx by relation type and in total,
        Google-RE by relation and in total, ConceptNet, SQuAD (NaN where there are no facts);
        the rows of ``factlens.evidence.papers.paper_table("lama.p_at_1.BERT-large")``.

        The paper's Google-RE row is the mean of three relations, birth date among them; it is
        NaN unless all three were probed, and ``Google-RE 2 relations`` is the mean of
        place_of_birth and place_of_death (:data:`GOOGLE_RE_TWO`), the row to compare when the
        birth years are left out (a year is never one token of our models' tokenizers)."""
        rows: dict[str, float] = {}
        trex = self.frame[self.frame["corpus"] == "TREx"]  # Google-RE's relations are typed N-1 too
        types = ProbeResult(trex).by("relation_type")["p_at_1"] if len(trex) else pd.Series(dtype=float)
        for name in ("1-1", "N-1", "N-M"):
            rows[f"T-REx {name}"] = types.get(name, math.nan)
        corpora = self.by("corpus")["p_at_1"]
        rows["T-REx"] = corpora.get("TREx", math.nan)
        relations = self.by("relation")["p_at_1"]
        google_re = [relations[rel] for rel in data.GOOGLE_RE_TEMPLATES if rel in relations]
        for rel in data.GOOGLE_RE_TEMPLATES:
            if rel in relations:
                rows[f"Google-RE {rel}"] = relations[rel]
        # the paper's Google-RE row averages all three relations; without birth dates it is the two-relation row
        rows["Google-RE"] = np.mean(google_re) if len(google_re) == len(data.GOOGLE_RE_TEMPLATES) else math.nan
        two = [relations[rel] for rel in GOOGLE_RE_TWO if rel in relations]
        rows["Google-RE 2 relations"] = np.mean(two) if len(two) == len(GOOGLE_RE_TWO) else math.nan
        rows["ConceptNet"] = corpora.get("ConceptNet", math.nan)
        rows["SQuAD"] = corpora.get("Squad", math.nan)
        return pd.Series(rows)

    def left_context(self) -> ProbeResult:
        """The same facts ranked by ``log P(y | prefix)`` alone (``prefix_rank``): for a final
        ``[Y]`` the same ranking, for an inner ``[Y]`` the exact ranking without the words after it."""
        return ProbeResult(self.frame.assign(rank=self.frame["prefix_rank"], exact=True), self.skipped,
                           method=f"{self.method}, left context only")

    def metrics(self) -> dict[str, Any]:
        """The headline numbers: micro P@1/P@10/MRR and the per relation / type / corpus tables."""
        return {
            "n_facts": len(self), "n_skipped": len(self.skipped),
            "p_at_1": self.p_at_1, "p_at_10": self.p_at_10, "mrr": self.mrr,
            "exact_share": float(self.frame["exact"].mean() * 100) if len(self.frame) else math.nan,
            "by_corpus": self.by("corpus").round(2).to_dict("index"),
            "by_relation_type": self.by("relation_type").round(2).to_dict("index"),
            "by_relation": self.by("relation").round(2).to_dict("index"),
        }


def ranked_frame(ranked: list[tuple[LamaFact, Ranked]], single: Callable[[LamaFact], bool],
                 order: Sequence[LamaFact] = ()) -> pd.DataFrame:
    """:attr:`ProbeResult.frame`: one row per ranked fact, in the order of ``order`` (the facts as
    given); ``single(fact)``: whether the fact's object is one token."""
    types = relation_types()
    position = {id(f): i for i, f in enumerate(order)}
    ranked = sorted(ranked, key=lambda pair: position.get(id(pair[0]), 0))
    rows = [{
        "corpus": f.corpus, "relation": f.relation, "relation_type": _type_of(f, types),
        "subject": f.subject, "object": f.object, "template": f.template, "uuid": f.uuid,
        "rank": r.rank, "gold_logprob": r.gold_logprob, "top": r.top_words, "top_logprobs": r.top_logprobs,
        "confidence": math.exp(r.top_logprobs[0]) if r.top_logprobs else math.nan,
        "single_token": single(f), "exact": r.exact, "prefix_rank": r.prefix_rank,
    } for f, r in ranked]
    columns = ["corpus", "relation", "relation_type", "subject", "object", "template", "uuid", "rank", "gold_logprob",
               "top", "top_logprobs", "confidence", "single_token", "exact", "prefix_rank"]
    return pd.DataFrame(rows, columns=columns)


def _type_of(fact: LamaFact, types: dict[str, str]) -> str:
    if fact.corpus in SENTENCE_CORPORA:
        return fact.corpus
    try:
        return types[fact.relation]
    except KeyError:
        raise UnknownRelationError(
            f"fact {fact.subject!r} has relation {fact.relation!r}, which LAMA does not have; "
            f"known relations: {', '.join(sorted(types))}"
        ) from None


def checked_facts(facts: Sequence[LamaFact], k: int = 1, rescore: int = 1) -> list[LamaFact]:
    """The facts as a list, after checking them and the probe's sizes (clear errors before any work)."""
    if rescore < 1:
        raise ValueError(f"rescore must be at least 1, got {rescore}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    facts = list(facts)
    if not facts:
        raise ValueError("no facts to probe: pass a non-empty list of LamaFact (e.g. factlens.data.lama('TREx'))")
    types = relation_types()
    for f in facts:
        fact_cloze(f)
        _type_of(f, types)
    return facts


# --------------------------------------------------------------------------- probing


def probe(model: Model, facts: Sequence[LamaFact], k: int = 10, vocab: str = "common", *, rescore: int = 10,
          suffix_tokens: int | None = 8, batch_size: int = 32, progress: bool = True) -> ProbeResult:
    """LAMA's probe on a causal LM: rank every candidate token as the object of each fact.

    ``vocab="common"`` ranks LAMA's common vocabulary mapped to single tokens of the model
    (:func:`factlens.probing.ranking.vocabulary_tokens`), as the paper does; ``"full"`` ranks every token. A fact whose
    object is not one candidate token is skipped (``result.skipped`` says why), as LAMA
    keeps only single-token objects; :func:`probe_objects` ranks whole token sequences.

    Final ``[Y]``: ``score(y) = log P(y | prefix)``. Inner ``[Y]``: ``score(y) = log P(y | prefix)
    + log P(suffix | prefix, y)`` (the sentence log-likelihood up to the prefix's, which all
    candidates share), computed exactly for the ``rescore`` candidates with the best
    ``log P(y | prefix)`` (the shortlist, re-ordered by the full score; the rest follows in
    first-token order). The suffix is scored up to its first ``suffix_tokens`` tokens (``None``:
    all of it; the words next to the blank carry most of the evidence, and every suffix
    token costs a 262k-way softmax). Single-token objects of a final ``[Y]`` need no re-scoring: one
    forward pass per fact, batched by template, logits read at the prefix's last position.
    """
    if vocab not in ("common", "full"):
        raise ValueError(f"vocab must be 'common' (LAMA's common vocabulary) or 'full', got {vocab!r}")
    facts = checked_facts(facts, k, rescore)
    v = view(model)
    spaced: dict[bool, Candidates] = {}
    for space in {fact_cloze(f).space for f in facts}:
        if vocab == "common":
            spaced[space] = Candidates.of_tokens(vocabulary_tokens(model, space=space))
        else:
            n = v.d_vocab
            words = [v.tokenizer.decode([t]).removeprefix(" " if space else "") for t in range(n)]
            spaced[space] = Candidates(words, [[t] for t in range(n)], torch.arange(n), {})
    skipped: list[tuple[LamaFact, str]] = []
    keep = []
    for f in facts:
        space = fact_cloze(f).space
        ids = v.tokenizer((" " if space else "") + f.object, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            skipped.append((f, f"object split into {len(ids)} tokens"))
        elif vocab == "common" and f.object not in spaced[space].index:
            skipped.append((f, "object not in the common vocabulary as a token"))
        else:
            if vocab == "full":  # a full-vocabulary candidate's index is its token id
                spaced[space].index[f.object] = ids[0]
            keep.append(f)
    bar = tqdm(total=len(keep), desc=f"probing ({vocab} vocabulary)", disable=not progress)
    settings = RankSettings(k, rescore, batch_size, suffix_tokens)
    ranked = rank_facts(v, keep, lambda f, c: spaced[c.space], settings, bar)
    bar.close()
    single = lambda f: True  # noqa: E731  (only single-token objects are probed here)
    return ProbeResult(ranked_frame(ranked, single, facts), skipped, method=f"probe({vocab})")


def relation_objects(facts: Iterable[LamaFact]) -> dict[str, list[str]]:
    """Each relation's distinct objects, most frequent first (ties by name): the candidates of
    :func:`probe_objects` and the ranking of the Freq baseline (:func:`factlens.probing.baselines.freq_baseline`)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for f in facts:
        counts[f.relation][f.object] += 1
    return {r: [o for o, _ in sorted(c.items(), key=lambda x: (-x[1], x[0]))] for r, c in counts.items()}


def probe_objects(model: Model, facts: Sequence[LamaFact], k: int = 10, *, objects: dict[str, list[str]] | None = None,
                  rescore: int = 10, suffix_tokens: int | None = 8, close: bool = True, batch_size: int = 32,
                  progress: bool = True) -> ProbeResult:
    """Rank each fact's relation's candidate objects by their whole token sequence.

    ``score(y) = sum_t log P(y_t | prefix, y_<t) + log P(tail | prefix, y)``, so objects the
    tokenizer splits are probed too; ``single_token`` in the result tells the two kinds apart.
    The tail (:func:`factlens.probing.cloze.tail`) is an inner ``[Y]``'s suffix, scored up to ``suffix_tokens``, and at
    a final ``[Y]`` the sentence's end when ``close`` (the default): without it a candidate whose
    tokens begin another's always outranks it. Candidates: ``objects[relation]`` (default: the
    relation's distinct objects among ``facts``; the gold object is always one). The
    ``rescore`` candidates with the best first-token log-probability are scored in full and
    re-ordered, as in :func:`probe`.
    """
    facts = checked_facts(facts, k, rescore)
    v = view(model)
    objects = relation_objects(facts) if objects is None else objects
    sets: dict[tuple[str, bool, str], Candidates] = {}

    def candidates(f: LamaFact, c: Cloze) -> Candidates:
        key = (f.relation, c.space, f.object if f.object not in objects.get(f.relation, ()) else "")
        if key not in sets:
            sets[key] = Candidates.of_words(v, [*objects.get(f.relation, []), f.object], c.space)
        return sets[key]

    bar = tqdm(total=len(facts), desc="probing whole objects", disable=not progress)
    ranked = rank_facts(v, facts, candidates, RankSettings(k, rescore, batch_size, suffix_tokens, close), bar)
    bar.close()

    def single(f: LamaFact) -> bool:
        return len(v.target_ids(f.object)) == 1

    return ProbeResult(ranked_frame(ranked, single, facts), method="probe_objects")


# --------------------------------------------------------------------------- facts and one cloze


def lama_facts(corpus: str = "TREx", relations: Sequence[str] | None = None, per_relation: int | None = None,
               seed: int = 0) -> list[LamaFact]:
    """A corpus's facts, optionally only some relations and a seeded sample of ``per_relation``
    facts from each (``None``: all). Unknown relation ids raise :class:`UnknownRelationError`."""
    facts = data.lama(corpus)
    present = sorted({f.relation for f in facts})
    if relations is not None:
        unknown = [r for r in relations if r not in present]
        if unknown:
            raise UnknownRelationError(f"unknown relation(s) {unknown} for LAMA corpus {corpus!r}; "
                                       f"it has: {', '.join(present)}")
        facts = [f for f in facts if f.relation in set(relations)]
    if per_relation is None:
        return facts
    rng = random.Random(seed)
    by_rel: dict[str, list[LamaFact]] = defaultdict(list)
    for f in facts:
        by_rel[f.relation].append(f)
    return [f for r in sorted(by_rel) for f in (rng.sample(by_rel[r], min(per_relation, len(by_rel[r]))))]


def query(model: Model, template: str, subject: str = "", k: int = 10, vocab: str = "common",
          relation: str | None = None, rescore: int = 20) -> pd.DataFrame:
    """The top-k answers for one cloze (``[X]`` the subject, ``[Y]`` the object) with probabilities,
    scored as :func:`probe` does (an inner ``[Y]``: the ``rescore`` best first tokens, filled in).

    ``relation`` (a LAMA relation id) gives the template when ``template`` is empty.
    """
    if relation is not None:
        relations = data.lama_relations()
        if relation not in relations:
            raise UnknownRelationError(f"unknown relation {relation!r}; LAMA has: {', '.join(relations)}")
        template = template or relations[relation].template
    if "[X]" in template and not subject.strip():
        raise ValueError("the subject is empty: write the subject that fills [X], e.g. 'France'")
    c = cloze(template, subject, needs_subject=bool(subject) or "[X]" in template)
    v = view(model)
    if vocab == "common":
        cands = Candidates.of_tokens(vocabulary_tokens(model, space=c.space))
    else:
        n = v.d_vocab
        cands = Candidates([v.tokenizer.decode([t]).strip() for t in range(n)], [[t] for t in range(n)],
                           torch.arange(n), {})
    with torch.no_grad():
        bound = next_token_logprobs(v, [v.token_ids(c.prefix)])[0, cands.first.to(v.device)].cpu()
    if c.final:
        top = bound.topk(k)
        words, lps = [cands.words[i] for i in top.indices.tolist()], top.values.tolist()
    else:
        best = bound.topk(min(rescore, len(bound))).indices.tolist()
        tails = [v.tokenizer(c.suffix.replace("[Y]", cands.words[j]), add_special_tokens=False)["input_ids"][:8]
                 for j in best]
        prefix = v.token_ids(c.prefix)
        lps_all = continuation_logprobs(v, [prefix] * len(best), [cands.ids[j] + t for j, t in zip(best, tails)])
        order = lps_all.argsort(descending=True)[:k].tolist()
        words, lps = [cands.words[best[i]] for i in order], [float(lps_all[i]) for i in order]
    return pd.DataFrame({"answer": words, "log_prob": lps, "prob": np.exp(lps)},
                        index=pd.RangeIndex(1, len(words) + 1, name="rank"))
