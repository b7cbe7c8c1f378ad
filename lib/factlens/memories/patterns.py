"""What a key's triggers share (Geva et al. 2021, section 3.2), measured without annotators.

Geva et al. had experts read each sampled key's top-25 triggers and name their patterns. Here:

* :func:`pattern_scores`: two automatic measures per key, each against groups of random prefixes:
  shallow (two triggers end in the same token, or the same two tokens) and semantic (the
  triggers are similar in the model's own residual stream, surface-identical pairs removed);
  :func:`pattern_table` shows example keys as in the paper's Table 1;
* :func:`removal_drops`: how much a key's coefficient drops when the first, the last or a
  random token of a trigger is removed.

The triggers come from :func:`factlens.memories.keys.trigger_search`.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from factlens.core.models import Model, view
from factlens.memories.keys import Corpus, TriggerSearch, nanmean, prefix_text

# --------------------------------------------------------------------------- patterns


def _pair_agreement(labels: Sequence) -> float:
    """P(two distinct members share a label) = sum_c n_c (n_c - 1) / (n (n - 1))."""
    n = len(labels)
    counts = Counter(labels).values()
    return sum(c * (c - 1) for c in counts) / (n * (n - 1)) if n > 1 else float("nan")


def _mean_pair_cosine(reps: torch.Tensor, last: Sequence[int], mean: torch.Tensor) -> float:
    """Mean cosine of the centered representations over pairs whose last tokens differ."""
    x = torch.nn.functional.normalize(reps.float() - mean, dim=-1)
    cos = x @ x.T
    last_t = torch.tensor(list(last))
    differ = last_t[:, None] != last_t[None, :]
    return float(cos[differ].mean()) if differ.any() else float("nan")


def _surface(corpus: Corpus, prefixes: Iterable[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    last, bigram = [], []
    for text, p in prefixes:
        row = corpus.ids[text]
        last.append(row[p])
        bigram.append((row[p - 1], row[p]))
    return last, bigram


@dataclass
class PatternScores:
    """Automatic pattern measures of each key's triggers, and of groups of random prefixes.

    ``per_key[measure][layer]``: one value per key of the layer (NaN where undefined);
    ``null[measure]``: one value per group of ``k`` random prefixes. Measures: ``shallow_last``,
    ``shallow_bigram``, ``semantic`` (see :func:`pattern_scores`).
    """

    per_key: dict[str, dict[int, list[float]]]
    null: dict[str, list[float]]

    def means(self) -> dict[str, dict]:
        """``{measure: {layer: mean over keys}}`` and ``"null": {measure: mean over groups}``."""
        out: dict[str, dict] = {m: {l: nanmean(xs) for l, xs in layers.items()} for m, layers in self.per_key.items()}
        out["null"] = {m: nanmean(xs) for m, xs in self.null.items()}
        return out

    def keys_of(self, measure: str, layers: Iterable[int] | None = None) -> list[float]:
        """The per-key values of ``measure`` over ``layers`` (default: all), NaN left out."""
        chosen = self.per_key[measure] if layers is None else {l: self.per_key[measure][l] for l in layers}
        return [x for xs in chosen.values() for x in xs if not math.isnan(x)]


    def thresholds(self, quantile: float = 0.95) -> dict[str, float]:
        """Per measure, the ``quantile`` of the random groups' values: a key shows the pattern when its
        own value lies above it."""
        return {m: float(np.nanquantile(np.asarray(xs, dtype=float), quantile)) for m, xs in self.null.items()}

    def with_pattern(self, measures: Sequence[str] = ("shallow_last", "shallow_bigram", "semantic"),
                     layers: Iterable[int] | None = None, quantile: float = 0.95) -> tuple[list[bool], float]:
        """Per key of ``layers`` (default: all), whether it shows at least one of ``measures``' patterns
        (its value above the random groups' ``quantile``; an undefined value shows none), and the
        share of the random groups that would pass the same test: the rate a key without any pattern
        gets by chance (each group is one set of random prefixes, measured by every measure)."""
        cut = self.thresholds(quantile)
        chosen = list(self.per_key[measures[0]]) if layers is None else list(layers)
        flags = [any(self.per_key[m][l][i] > cut[m] for m in measures)  # NaN > x is False
                 for l in chosen for i in range(len(self.per_key[measures[0]][l]))]
        groups = len(self.null[measures[0]])
        chance = sum(any(self.null[m][g] > cut[m] for m in measures) for g in range(groups)) / max(groups, 1)
        return flags, chance


def pattern_scores(search: TriggerSearch, corpus: Corpus) -> PatternScores:
    """Automatic stand-ins for the paper's annotators (section 3.2), per key, with a null.

    * shallow: the probability that two of a key's triggers end in the same token
      (``shallow_last``) or the same two tokens (``shallow_bigram``),
      sum_c n_c (n_c - 1) / (k (k - 1));
    * semantic: the mean cosine similarity of two triggers' representations (residual stream
      after ``search.representation_layer`` at the last token, minus its corpus mean),
      over pairs whose last tokens differ, so that surface-identical pairs do not count.

    The null applies the same measures to groups of ``k`` random prefixes of the corpus.
    """
    measures = ("shallow_last", "shallow_bigram", "semantic")
    per_key: dict[str, dict[int, list[float]]] = {m: {} for m in measures}
    mean = search.mean_representation
    for l, tr in search.triggers.items():
        scores = {m: [] for m in measures}
        for i in range(len(tr.keys)):
            last, bigram = _surface(corpus, zip(tr.text[i].tolist(), tr.position[i].tolist()))
            scores["shallow_last"].append(_pair_agreement(last))
            scores["shallow_bigram"].append(_pair_agreement(bigram))
            scores["semantic"].append(_mean_pair_cosine(tr.representation[i], last, mean))
        for m in measures:
            per_key[m][l] = scores[m]
    k = next(iter(search.triggers.values())).coefficient.shape[1]
    last, bigram = _surface(corpus, search.random_prefixes.tolist())
    groups = range(0, len(last) - k + 1, k)
    null = {
        "shallow_last": [_pair_agreement(last[g : g + k]) for g in groups],
        "shallow_bigram": [_pair_agreement(bigram[g : g + k]) for g in groups],
        "semantic": [_mean_pair_cosine(search.random_representation[g : g + k], last[g : g + k], mean)
                     for g in groups],
    }
    return PatternScores(per_key, null)


def pattern_table(model: Model, search: TriggerSearch, corpus: Corpus, per_layer: int = 1,
                  n_triggers: int = 3) -> list[dict]:
    """Example keys as in the paper's Table 1: key, the automatic pattern, top triggers.

    The pattern is the most common last token (shallow) when it ends at least a third of the
    triggers, otherwise "no shared surface" (a candidate semantic pattern).
    """
    v = view(model)
    rows = []
    for l, tr in search.triggers.items():
        order = sorted(range(len(tr.keys)), key=lambda i: -float(tr.coefficient[i, 0]))[:per_layer]
        for i in order:
            last, _ = _surface(corpus, zip(tr.text[i].tolist(), tr.position[i].tolist()))
            token, count = Counter(last).most_common(1)[0]
            share = count / len(last)
            pattern = (f"ends in {v.tokenizer.decode([token])!r} ({share:.0%})" if share >= 1 / 3
                       else "no shared surface")
            triggers = [prefix_text(model, corpus, int(tr.text[i, j]), int(tr.position[i, j]))
                        for j in range(n_triggers)]
            rows.append({"key": f"k{tr.keys[i]} (layer {l})", "pattern": pattern, "triggers": triggers})
    return rows


# --------------------------------------------------------------------------- token removal


REMOVALS = ("first", "last", "random")


def remove_token(prefix: Sequence[int], which: str, rng: random.Random | None = None) -> list[int]:
    """``prefix`` (BOS first) without its first, last or a random real token (section 3.2).

    A prefix of one real token has nothing left to compare: it is refused.
    """
    if len(prefix) < 3:
        raise ValueError(
            f"token removal needs a prefix of at least two tokens after BOS, got {len(prefix) - 1}; "
            "skip one-token prefixes"
        )
    n = len(prefix) - 1
    drop = {"first": 1, "last": n}.get(which)
    if drop is None:
        if which != "random":
            raise ValueError(f"which must be 'first', 'last' or 'random', got {which!r}")
        drop = (rng or random.Random(0)).randint(1, n)
    return [t for i, t in enumerate(prefix) if i != drop]


@dataclass
class RemovalDrops:
    """The relative drop (m - m') / m of a key's coefficient when a token is removed from one of its
    triggers: ``per_trigger[which][layer]``, one value per trigger, in the same trigger order for
    ``first``, ``last`` and ``random`` (so that they pair)."""

    per_trigger: dict[str, dict[int, list[float]]]

    def means(self) -> dict[str, dict[int, float]]:
        """``{which: {layer: mean drop}}``."""
        return {which: {l: nanmean(d) for l, d in layers.items()} for which, layers in self.per_trigger.items()}

    def paired(self, a: str, b: str, layers: Iterable[int] | None = None) -> tuple[list[float], list[float]]:
        """The drops of removal ``a`` and of ``b`` on the same triggers of ``layers`` (default: all)."""
        chosen = list(self.per_trigger[a]) if layers is None else list(layers)
        return ([x for l in chosen for x in self.per_trigger[a][l]],
                [x for l in chosen for x in self.per_trigger[b][l]])


def removal_drops(
    model: Model, search: TriggerSearch, corpus: Corpus, n_triggers: int = 5, seed: int = 0, *,
    keys_per_layer: int | None = None, batch_size: int = 64, progress: bool = True,
) -> RemovalDrops:
    """The relative drop (m - m') / m of a key's coefficient when the ``first``, the ``last`` or a
    ``random`` token is removed from each of its top ``n_triggers`` triggers (section 3.2), for the
    first ``keys_per_layer`` keys of each layer of the search (default: all).

    Triggers of one token, or whose coefficient is not positive, are skipped (see :func:`remove_token`).
    """
    v = view(model)
    rng = random.Random(seed)
    jobs = []  # (layer, which, key, original coefficient, ids), in layer order
    for l, tr in search.triggers.items():
        for i, key in enumerate(tr.keys[:keys_per_layer]):
            for j in range(min(n_triggers, tr.coefficient.shape[1])):
                prefix = corpus.prefix(int(tr.text[i, j]), int(tr.position[i, j]))
                m = float(tr.coefficient[i, j])
                if len(prefix) >= 3 and m > 0:
                    jobs += [(l, which, key, m, remove_token(prefix, which, rng)) for which in REMOVALS]
    jobs.sort(key=lambda job: job[0])  # a batch then runs only up to its deepest layer (a stable sort)
    drops: dict[str, dict[int, list[float]]] = {w: {l: [] for l in search.triggers} for w in REMOVALS}
    for s in tqdm(range(0, len(jobs), batch_size), desc="token removal", disable=not progress):
        chunk = jobs[s : s + batch_size]
        batch = v.batch([job[4] for job in chunk])
        with torch.no_grad():
            acts = v.capture(batch.ids, sorted({v.key_hook(job[0]) for job in chunk}))
        for row, (l, which, key, m, _) in enumerate(chunk):
            drops[which][l].append((m - float(acts[v.key_hook(l)][row, batch.last[row], key])) / m)
    return RemovalDrops(drops)
