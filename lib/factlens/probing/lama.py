"""LAMA probing (Petroni et al. 2019) for causal language models, and past its limits.

A knowledge-base triple (subject, relation, object) becomes a cloze statement through the
relation's template, ``"[X] was born in [Y] ."`` -> ``"Dante was born in [Y] ."``, and the
model knows the fact when it ranks the object first among the candidates.

LAMA probes masked language models, which see both sides of ``[Y]``. A causal model reads
left to right, so the protocol is adapted (:func:`probe`):

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
(:func:`vocabulary_tokens`; words the tokenizer splits drop out) or the full vocabulary.
The metrics are the paper's: precision at k (P@k, the share of facts whose object ranks
in the top k) and mean reciprocal rank, in percent; a corpus's or relation type's score is
the mean over its relations, as in the paper's table.
"""

from __future__ import annotations

import math
import random
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from factlens import data
from factlens.core.models import Model, View, view
from factlens.data import LamaFact

#: Google-RE's relations whose objects are words (the third, date_of_birth, has years).
GOOGLE_RE_TWO = ("place_of_birth", "place_of_death")

#: Corpora whose "template" is a masked sentence with no subject slot.
SENTENCE_CORPORA = ("Squad", "ConceptNet")
_PUNCTUATION = set(string.punctuation) | {" "}


class UnknownRelationError(ValueError):
    """A relation id that LAMA does not have."""


# --------------------------------------------------------------------------- cloze statements


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


# --------------------------------------------------------------------------- candidates


def vocabulary_tokens(model: Model, words: Sequence[str] | None = None, *, space: bool = True) -> dict[int, str]:
    """LAMA's common vocabulary (or ``words``) mapped to single tokens of the model.

    A word survives when it is one token as a continuation (``' Paris'`` with ``space``);
    words the tokenizer splits drop out, and words that map to the same token keep the first.
    """
    v = view(model)
    words = data.lama_vocab() if words is None else words
    tokens: dict[int, str] = {}
    for w in words:
        ids = v.tokenizer((" " if space else "") + w, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in tokens:
            tokens[ids[0]] = w
    return tokens


@dataclass
class _Candidates:
    """A ranking's candidates: words, the token ids of each as a continuation, first tokens."""

    words: list[str]
    ids: list[list[int]]
    first: torch.Tensor
    index: dict[str, int]

    @cached_property
    def single(self) -> torch.Tensor:
        """Which candidates are one token."""
        return torch.tensor([len(t) == 1 for t in self.ids])

    @classmethod
    def of_words(cls, v: View, words: Iterable[str], space: bool) -> _Candidates:
        words = list(dict.fromkeys(words))
        ids = [v.tokenizer((" " if space else "") + w, add_special_tokens=False)["input_ids"] for w in words]
        keep = [i for i, t in enumerate(ids) if t]
        words, ids = [words[i] for i in keep], [ids[i] for i in keep]
        return cls(words, ids, torch.tensor([t[0] for t in ids]), {w: i for i, w in enumerate(words)})

    @classmethod
    def of_tokens(cls, tokens: dict[int, str]) -> _Candidates:
        words = list(tokens.values())
        return cls(words, [[t] for t in tokens], torch.tensor(list(tokens)), {w: i for i, w in enumerate(words)})


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def _next_token_logprobs(v: View, prefixes: list[list[int]]) -> torch.Tensor:
    """log P(. | prefix) over the full vocabulary at each prefix's last position: [b, vocab]."""
    batch = v.batch(prefixes)
    return v.logits_at(batch.ids, batch.last).float().log_softmax(-1)


@torch.no_grad()
def _continuation_logprobs(v: View, prefixes: list[list[int]], continuations: list[list[int]],
                           max_positions: int = 256) -> torch.Tensor:
    """sum_t log P(c_t | prefix, c_<t) for each (prefix, continuation) pair: [n].

    Logits are computed only at the positions that predict a continuation token.
    """
    rows = [p + c for p, c in zip(prefixes, continuations)]
    hidden = v.final_hidden(v.batch(rows).ids)
    seq, pos, tgt = [], [], []
    for i, (p, c) in enumerate(zip(prefixes, continuations)):
        for t, token in enumerate(c):
            seq.append(i)
            pos.append(len(p) - 1 + t)
            tgt.append(token)
    seq_t, pos_t, tgt_t = torch.tensor(seq), torch.tensor(pos), torch.tensor(tgt)
    total = torch.zeros(len(rows))
    for s in range(0, len(seq), max_positions):
        sl = slice(s, s + max_positions)
        logits = v.unembed(hidden[seq_t[sl], pos_t[sl]][:, None])[:, 0].float()
        lp = logits.log_softmax(-1).gather(-1, tgt_t[sl, None].to(logits.device))[:, 0].cpu()
        total.index_add_(0, seq_t[sl], lp)
    return total


@dataclass
class _Ranked:
    rank: int
    gold_logprob: float
    top_words: list[str]
    top_logprobs: list[float]
    exact: bool
    prefix_rank: int  # the gold object's rank by log P(y | prefix) alone: the left context, exactly


def _rank_row(bound: torch.Tensor, needs: torch.Tensor, scored: dict[int, float], shortlist: list[int],
              gold: int, words: list[str], k: int) -> _Ranked:
    """Shortlist re-ranking: the ``shortlist`` (the best candidates by ``bound``, the first-token
    log-probability) re-ordered by the full score, then every other candidate by its bound.

    ``needs`` marks the candidates whose full score is not their bound; ``scored`` holds the
    full score of those in the shortlist (and of the gold object). The ranking is exact when
    no such candidate outside the shortlist has a bound above the gold object's score or the
    k-th score (scores are sums of log-probabilities, so a bound is never below the score).
    """
    full = {j: scored.get(j, float(bound[j])) for j in shortlist}
    head = sorted(shortlist, key=lambda j: -full[j])
    rest_bound = bound.clone()
    rest_bound[torch.tensor(shortlist, dtype=torch.long)] = -math.inf
    s_gold = scored.get(gold, float(bound[gold]))
    if gold in full:
        rank = head.index(gold) + 1
    else:
        rank = len(head) + 1 + int((rest_bound > bound[gold]).sum()) - int(rest_bound[gold] > bound[gold])
    top = head[:k]
    values = [full[j] for j in top]
    if len(top) < k:
        extra = rest_bound.topk(min(k - len(top), int(torch.isfinite(rest_bound).sum())))
        top, values = top + extra.indices.tolist(), values + extra.values.tolist()
    unsure = rest_bound[needs]
    outside = float(unsure.max()) if len(unsure) else -math.inf
    exact = outside <= min(s_gold, values[-1]) and (gold in full or not bool(needs[gold]))
    prefix_rank = 1 + int((bound > bound[gold]).sum())
    return _Ranked(rank, s_gold, [words[i] for i in top], values, bool(exact), prefix_rank)


@dataclass(frozen=True)
class _Settings:
    """How :func:`_rank_facts` ranks: ``k`` words kept, ``rescore`` candidates scored in full,
    ``batch_size`` rows per forward pass, ``suffix_tokens`` of an inner ``[Y]``'s suffix scored,
    ``close``: a final ``[Y]``'s candidates are followed by the sentence's end (see :func:`tail`)."""

    k: int
    rescore: int
    batch_size: int
    suffix_tokens: int | None
    close: bool = False


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


def _rank_facts(v: View, facts: list[LamaFact], candidates: Callable[[LamaFact, Cloze], _Candidates],
                settings: _Settings, bar) -> list[tuple[LamaFact, _Ranked]]:
    """Rank each fact's candidates (see :func:`probe`). Facts of every template share a batch,
    sorted by prompt length so that batches carry little padding; the next-token logits are
    read at each prefix's last position only, and a re-scored continuation's at its own tokens."""
    clozes = {id(f): fact_cloze(f) for f in facts}
    prefix_ids = {id(f): v.token_ids(clozes[id(f)].prefix) for f in facts}
    ordered = sorted(facts, key=lambda f: len(prefix_ids[id(f)]))
    size = settings.batch_size
    out = []
    for s in range(0, len(ordered), size):
        chunk = ordered[s : s + size]
        prefixes = [prefix_ids[id(f)] for f in chunk]
        logprobs = _next_token_logprobs(v, prefixes).cpu()
        pairs, owners, plans = [], [], []
        for i, fact in enumerate(chunk):
            c, cands = clozes[id(fact)], candidates(fact, clozes[id(fact)])
            bound = logprobs[i, cands.first]
            needs = ~cands.single if c.final and not settings.close else torch.ones_like(cands.single)
            gold = cands.index[fact.object]
            shortlist = bound.topk(min(settings.rescore, len(cands.words))).indices.tolist()
            todo = [j for j in shortlist if needs[j]]
            if needs[gold] and gold not in todo:
                todo.append(gold)
            for j in todo:  # log P(y_1 | prefix) is the bound already: score what follows y_1
                text = tail(c, cands.words[j], settings.close)
                tail_ids = v.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
                pairs.append((prefixes[i] + cands.ids[j][:1], cands.ids[j][1:] + tail_ids[: settings.suffix_tokens]))
                owners.append((i, j))
            plans.append((bound, needs, shortlist, gold, cands))
        scores: dict[int, dict[int, float]] = defaultdict(dict)
        for r in range(0, len(pairs), size):
            part = pairs[r : r + size]
            lps = _continuation_logprobs(v, [p for p, _ in part], [c for _, c in part])
            for (i, j), lp in zip(owners[r : r + size], lps.tolist()):
                scores[i][j] = float(plans[i][0][j]) + lp  # + log P(y_1 | prefix), the bound
        for i, (bound, needs, shortlist, gold, cands) in enumerate(plans):
            out.append((chunk[i], _rank_row(bound, needs, scores[i], shortlist, gold, cands.words, settings.k)))
        bar.update(len(chunk))
    return out


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


def _frame(ranked: list[tuple[LamaFact, _Ranked]], types: dict[str, str], single: Callable[[LamaFact], bool],
           order: Sequence[LamaFact] = ()) -> pd.DataFrame:
    """One row per ranked fact, in the order of ``order`` (the facts as given)."""
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


def _check_facts(facts: Sequence[LamaFact], k: int = 1, rescore: int = 1) -> list[LamaFact]:
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
    (:func:`vocabulary_tokens`), as the paper does; ``"full"`` ranks every token. A fact whose
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
    facts = _check_facts(facts, k, rescore)
    v = view(model)
    types = relation_types()
    spaced: dict[bool, _Candidates] = {}
    for space in {fact_cloze(f).space for f in facts}:
        if vocab == "common":
            spaced[space] = _Candidates.of_tokens(vocabulary_tokens(model, space=space))
        else:
            n = v.d_vocab
            words = [v.tokenizer.decode([t]).removeprefix(" " if space else "") for t in range(n)]
            spaced[space] = _Candidates(words, [[t] for t in range(n)], torch.arange(n), {})
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
    settings = _Settings(k, rescore, batch_size, suffix_tokens)
    ranked = _rank_facts(v, keep, lambda f, c: spaced[c.space], settings, bar)
    bar.close()
    single = lambda f: True  # noqa: E731  (only single-token objects are probed here)
    return ProbeResult(_frame(ranked, types, single, facts), skipped, method=f"probe({vocab})")


def relation_objects(facts: Iterable[LamaFact]) -> dict[str, list[str]]:
    """Each relation's distinct objects, most frequent first (ties by name): the candidates of
    :func:`probe_objects` and the ranking of the Freq baseline."""
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
    The tail (:func:`tail`) is an inner ``[Y]``'s suffix, scored up to ``suffix_tokens``, and at
    a final ``[Y]`` the sentence's end when ``close`` (the default): without it a candidate whose
    tokens begin another's always outranks it. Candidates: ``objects[relation]`` (default: the
    relation's distinct objects among ``facts``; the gold object is always one). The
    ``rescore`` candidates with the best first-token log-probability are scored in full and
    re-ordered, as in :func:`probe`.
    """
    facts = _check_facts(facts, k, rescore)
    v = view(model)
    types = relation_types()
    objects = relation_objects(facts) if objects is None else objects
    sets: dict[tuple[str, bool, str], _Candidates] = {}

    def candidates(f: LamaFact, c: Cloze) -> _Candidates:
        key = (f.relation, c.space, f.object if f.object not in objects.get(f.relation, ()) else "")
        if key not in sets:
            sets[key] = _Candidates.of_words(v, [*objects.get(f.relation, []), f.object], c.space)
        return sets[key]

    bar = tqdm(total=len(facts), desc="probing whole objects", disable=not progress)
    ranked = _rank_facts(v, facts, candidates, _Settings(k, rescore, batch_size, suffix_tokens, close), bar)
    bar.close()

    def single(f: LamaFact) -> bool:
        return len(v.target_ids(f.object)) == 1

    return ProbeResult(_frame(ranked, types, single, facts), method="probe_objects")


# --------------------------------------------------------------------------- facts and baselines


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


def freq_baseline(facts: Sequence[LamaFact], reference: Sequence[LamaFact] | None = None) -> ProbeResult:
    """Freq (Petroni et al. 2019, section 4): rank a relation's objects by how often they are its
    object in the test data (``reference``, default ``facts``), the same answer for every subject.
    The log-probabilities are the objects' relative frequencies."""
    facts = _check_facts(facts)
    reference = facts if reference is None else list(reference)
    counts: dict[str, Counter] = defaultdict(Counter)
    for f in reference:
        counts[f.relation][f.object] += 1
    ranking = relation_objects(reference)
    types = relation_types()
    ranked = []
    for f in facts:
        order, c = ranking.get(f.relation, []), counts[f.relation]
        total = max(sum(c.values()), 1)
        rank = order.index(f.object) + 1 if f.object in order else len(order) + 1
        gold_lp = math.log(c[f.object] / total) if c[f.object] else -math.inf
        ranked.append((f, _Ranked(rank, gold_lp, order[:10], [math.log(c[o] / total) for o in order[:10]], True, rank)))
    return ProbeResult(_frame(ranked, types, lambda f: True), method="Freq")


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
        cands = _Candidates.of_tokens(vocabulary_tokens(model, space=c.space))
    else:
        n = v.d_vocab
        cands = _Candidates([v.tokenizer.decode([t]).strip() for t in range(n)], [[t] for t in range(n)],
                            torch.arange(n), {})
    with torch.no_grad():
        bound = _next_token_logprobs(v, [v.token_ids(c.prefix)])[0, cands.first.to(v.device)].cpu()
    if c.final:
        top = bound.topk(k)
        words, lps = [cands.words[i] for i in top.indices.tolist()], top.values.tolist()
    else:
        best = bound.topk(min(rescore, len(bound))).indices.tolist()
        tails = [v.tokenizer(c.suffix.replace("[Y]", cands.words[j]), add_special_tokens=False)["input_ids"][:8]
                 for j in best]
        prefix = v.token_ids(c.prefix)
        lps_all = _continuation_logprobs(v, [prefix] * len(best), [cands.ids[j] + t for j, t in zip(best, tails)])
        order = lps_all.argsort(descending=True)[:k].tolist()
        words, lps = [cands.words[best[i]] for i in order], [float(lps_all[i]) for i in order]
    return pd.DataFrame({"answer": words, "log_prob": lps, "prob": np.exp(lps)},
                        index=pd.RangeIndex(1, len(words) + 1, name="rank"))
