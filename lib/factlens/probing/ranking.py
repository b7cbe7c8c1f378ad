"""Ranking a cloze statement's candidates (the machinery of :mod:`factlens.probing.lama`).

Candidates are words with their token ids as a continuation of the prefix (:class:`Candidates`;
LAMA's common vocabulary mapped to single tokens by :func:`vocabulary_tokens`). A candidate's
score is ``log P(y, tail | prefix) = sum_t log P(y_t | prefix, y_<t) + log P(tail | prefix, y)``
(:func:`continuation_logprobs`); its first term, ``log P(y_1 | prefix)``
(:func:`next_token_logprobs`, one forward pass per prefix), bounds the score from above, every
term being a log-probability. :func:`rank_facts` scores in full only the shortlist of the
``rescore`` best bounds and says where the bound proves the ranking exact.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from factlens import data
from factlens.core.models import Model, view
from factlens.core.view import View
from factlens.data import LamaFact
from factlens.probing.cloze import Cloze, fact_cloze, tail


def vocabulary_tokens(model: Model, words: Sequence[str] | None = None, *, space: bool = True) -> dict[int, str]:
    """LAMA's common vocabulary (or ``words``) mapped to single tokens of the model.

    A word survives when it is one token as a continuation (``' Paris'`` with ``space``);
    words the tokenizer splits drop out, and words that map to the same token keep the first.
    LAMA's vocabulary is mapped once per model (``ModelState.lama_vocabulary``).
    """
    v = view(model)
    if words is None:
        kept = v.state.lama_vocabulary
        if space not in kept:
            kept[space] = vocabulary_tokens(model, data.lama_vocab(), space=space)
        return dict(kept[space])
    tokens: dict[int, str] = {}
    for w in words:
        ids = v.tokenizer((" " if space else "") + w, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in tokens:
            tokens[ids[0]] = w
    return tokens


@dataclass
class Candidates:
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
    def of_words(cls, v: View, words: Iterable[str], space: bool) -> Candidates:
        words = list(dict.fromkeys(words))
        ids = [v.tokenizer((" " if space else "") + w, add_special_tokens=False)["input_ids"] for w in words]
        keep = [i for i, t in enumerate(ids) if t]
        words, ids = [words[i] for i in keep], [ids[i] for i in keep]
        return cls(words, ids, torch.tensor([t[0] for t in ids]), {w: i for i, w in enumerate(words)})

    @classmethod
    def of_tokens(cls, tokens: dict[int, str]) -> Candidates:
        words = list(tokens.values())
        return cls(words, [[t] for t in tokens], torch.tensor(list(tokens)), {w: i for i, w in enumerate(words)})


@torch.no_grad()
def next_token_logprobs(v: View, prefixes: list[list[int]]) -> torch.Tensor:
    """log P(. | prefix) over the full vocabulary at each prefix's last position: [b, vocab]."""
    batch = v.batch(prefixes)
    return v.logits_at(batch.ids, batch.last).float().log_softmax(-1)


@torch.no_grad()
def continuation_logprobs(v: View, prefixes: list[list[int]], continuations: list[list[int]],
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
class Ranked:
    """Where one fact's object ranks (1 = first) among its candidates, its score, the top ``k``
    words with theirs, whether the ranking is provably exact, and its rank by the bound alone."""

    rank: int
    gold_logprob: float
    top_words: list[str]
    top_logprobs: list[float]
    exact: bool
    prefix_rank: int  # the gold object's rank by log P(y | prefix) alone: the left context, exactly


@dataclass
class _Shortlist:
    """One fact's candidates before their full scores: each one's ``bound``, the first-token
    log-probability; ``needs``, whether its full score is not its bound; the ``shortlist``, the
    best by bound; ``gold``, the object's index."""

    bound: torch.Tensor
    needs: torch.Tensor
    shortlist: list[int]
    gold: int
    candidates: Candidates

    def ranked(self, scored: dict[int, float], k: int) -> Ranked:
        """Shortlist re-ranking: the shortlist re-ordered by the full score, then every other
        candidate by its bound. ``scored`` holds the full score of the shortlist's candidates
        that need one (and of the gold object). The ranking is exact when no candidate that
        needs a full score lies outside the shortlist with a bound above the gold object's score
        or the k-th score (scores are sums of log-probabilities, so a bound is never below the score).
        """
        bound, needs, shortlist, gold = self.bound, self.needs, self.shortlist, self.gold
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
        return Ranked(rank, s_gold, [self.candidates.words[i] for i in top], values, bool(exact), prefix_rank)


@dataclass(frozen=True)
class RankSettings:
    """How :func:`rank_facts` ranks: ``k`` words kept, ``rescore`` candidates scored in full,
    ``batch_size`` rows per forward pass, ``suffix_tokens`` of an inner ``[Y]``'s suffix scored,
    ``close``: a final ``[Y]``'s candidates are followed by the sentence's end
    (:func:`factlens.probing.cloze.tail`)."""

    k: int
    rescore: int
    batch_size: int
    suffix_tokens: int | None
    close: bool = False


def rank_facts(v: View, facts: list[LamaFact], candidates: Callable[[LamaFact, Cloze], Candidates],
               settings: RankSettings, bar) -> list[tuple[LamaFact, Ranked]]:
    """Rank each fact's candidates (see :func:`factlens.probing.lama.probe`). Facts of every template share a batch,
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
        logprobs = next_token_logprobs(v, prefixes).cpu()
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
            plans.append(_Shortlist(bound, needs, shortlist, gold, cands))
        scores: dict[int, dict[int, float]] = defaultdict(dict)
        for r in range(0, len(pairs), size):
            part = pairs[r : r + size]
            lps = continuation_logprobs(v, [p for p, _ in part], [c for _, c in part])
            for (i, j), lp in zip(owners[r : r + size], lps.tolist()):
                scores[i][j] = float(plans[i].bound[j]) + lp  # + log P(y_1 | prefix), the bound
        out += [(fact, plan.ranked(scores[i], settings.k)) for i, (fact, plan) in enumerate(zip(chunk, plans))]
        bar.update(len(chunk))
    return out
