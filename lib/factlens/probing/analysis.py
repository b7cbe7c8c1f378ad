"""What goes with a model knowing a fact: analyses of a LAMA probe (Petroni et al. 2019, sections 4-5).

:mod:`factlens.probing.lama` ranks the candidates (and :mod:`factlens.probing.baselines` stands in
for what the model is compared with); this module asks what the ranks mean:

* intervals: :func:`p_at_1_interval` and :func:`p_at_1_difference`, P@1 averaged over relations
  as the paper's table does, with a bootstrap over facts stratified by relation;
  :func:`interval_table` for the rows a sample is sized by;
* samples: :func:`split_object_sample` (single- against multi-token objects, matched per relation);
* when the model is right (section 5): :func:`reliability` (P@1 against confidence),
  :func:`object_frequency`, :func:`subject_object_similarity`, :func:`correlation` and
  :func:`binned_p_at_1`;
* the same fact asked another way (ParaRel, Elazar et al. 2021): :func:`paraphrase_facts`,
  :func:`consistency`;
* whole objects: :func:`prefix_shadowed`, the facts whose object another candidate's tokens begin.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from factlens import data
from factlens.core.models import Model, view
from factlens.data import LamaFact
from factlens.probing.lama import ProbeResult


def split_object_sample(model: Model, facts: Iterable[LamaFact], per_relation: int, seed: int = 0) -> list[LamaFact]:
    """Matched facts for comparing single-token with multi-token objects under
    :func:`factlens.probing.lama.probe_objects`.

    For each relation with objects that the model's tokenizer splits: ``n`` facts whose object
    is one token and ``n`` whose object is several, ``n = min(per_relation, available of each)``,
    drawn with ``seed``. Both kinds then come from the same relations in the same numbers, so
    the difference between their P@1 is about the objects, not about which relations have
    split objects (most of Google-RE's, for instance, are birth years).
    """
    if per_relation < 1:
        raise ValueError(f"per_relation must be at least 1, got {per_relation}")
    v = view(model)
    kinds: dict[str, dict[bool, list[LamaFact]]] = defaultdict(lambda: {True: [], False: []})
    for f in facts:
        kinds[f.relation][len(v.target_ids(f.object)) == 1].append(f)
    rng = random.Random(seed)
    sample: list[LamaFact] = []
    for relation in sorted(kinds):
        single, split = kinds[relation][True], kinds[relation][False]
        n = min(per_relation, len(single), len(split))
        sample += rng.sample(single, n) + rng.sample(split, n)
    return sample


# --------------------------------------------------------------------------- analyses


def reliability(result: ProbeResult, bins: int = 10) -> pd.DataFrame:
    """P@1 against the model's confidence (the probability of its top prediction), in equal-count
    bins: a reliability table (a calibrated model has P@1 = 100 * confidence in every bin)."""
    f = result.frame
    q = pd.qcut(f["confidence"].rank(method="first"), min(bins, len(f)), labels=False)
    table = f.assign(bin=q, correct=(f["rank"] == 1) * 100.0).groupby("bin").agg(
        confidence=("confidence", "mean"), p_at_1=("correct", "mean"), n=("rank", "size"))
    return table


def correlation(result: ProbeResult, values: pd.Series | Sequence[float]) -> dict[str, float]:
    """Spearman's rank correlation between a per-fact quantity and being right (rank 1)."""
    from scipy.stats import spearmanr

    values = np.asarray(values, dtype=float)
    correct = (result.frame["rank"].to_numpy() == 1).astype(float)
    ok = np.isfinite(values)
    if ok.sum() < 3 or correct[ok].std() == 0 or values[ok].std() == 0:
        return {"spearman": math.nan, "p_value": math.nan, "n": int(ok.sum())}
    rho, p = spearmanr(values[ok], correct[ok])
    return {"spearman": float(rho), "p_value": float(p), "n": int(ok.sum())}


def binned_p_at_1(result: ProbeResult, values: pd.Series | Sequence[float], bins: int = 5) -> pd.DataFrame:
    """P@1 per equal-count bin of a per-fact quantity (object frequency, similarity, ...)."""
    f = result.frame.assign(value=np.asarray(values, dtype=float), correct=(result.frame["rank"] == 1) * 100.0)
    f = f[np.isfinite(f["value"])]
    q = pd.qcut(f["value"].rank(method="first"), min(bins, len(f)), labels=False)
    return f.assign(bin=q).groupby("bin").agg(value=("value", "mean"), low=("value", "min"), high=("value", "max"),
                                              p_at_1=("correct", "mean"), n=("rank", "size"))


def object_frequency(objects: Iterable[str], texts: Iterable[str], max_words: int = 3) -> dict[str, int]:
    """How often each object is mentioned in a text corpus (whole words, case-sensitive).

    The paper counts mentions in the models' training corpus; we count them in the texts
    given (the book uses WikiText). Objects longer than ``max_words`` words count 0.
    """
    wanted = {o for o in objects}
    counts: Counter = Counter()
    for text in texts:
        words = re.findall(r"\w+|[^\w\s]", text)
        for n in range(1, max_words + 1):
            for i in range(len(words) - n + 1):
                gram = " ".join(words[i : i + n])
                if gram in wanted:
                    counts[gram] += 1
    tokenized = {o: " ".join(re.findall(r"\w+|[^\w\s]", o)) for o in wanted}
    return {o: counts[t] for o, t in tokenized.items()}


@torch.no_grad()
def subject_object_similarity(model: Model, result: ProbeResult) -> np.ndarray:
    """Cosine similarity of the subject's and the object's input embeddings (each the mean over
    its tokens), per fact of ``result``; NaN for facts without a subject (SQuAD)."""
    v = view(model)
    table = v.embedding_matrix()

    def vec(text: str) -> torch.Tensor:
        return table[torch.tensor(v.target_ids(text), device=table.device)].float().mean(0)

    sims = []
    for subject, obj in zip(result.frame["subject"], result.frame["object"]):
        sims.append(float(torch.cosine_similarity(vec(subject), vec(obj), dim=0)) if subject.strip() else math.nan)
    return np.array(sims)


def paraphrase_facts(facts: Iterable[LamaFact], patterns: dict[str, list[str]] | None = None) -> list[LamaFact]:
    """Each fact asked with each of its relation's ParaRel patterns (uuid ``<uuid>#<pattern index>``).

    ``patterns`` defaults to :func:`factlens.data.pararel_patterns` for the relations ParaRel has.
    """
    out = []
    for f in facts:
        if patterns is not None:
            mine = patterns.get(f.relation, [])
        else:
            mine = data.pararel_patterns(f.relation) if f.relation in data.PARAREL_RELATIONS else []
        out += [replace(f, template=p, uuid=f"{f.uuid}#{j}") for j, p in enumerate(mine)]
    return out


def consistency(result: ProbeResult) -> pd.DataFrame:
    """ParaRel's consistency per relation: the share of pattern pairs that give the same top-1
    answer for the same fact (Elazar et al. 2021), beside the mean and spread of P@1 over patterns.

    ``result`` is a probe of :func:`paraphrase_facts`.
    """
    f = result.frame.assign(fact=result.frame["uuid"].str.rsplit("#", n=1).str[0],
                            answer=result.frame["top"].str[0], correct=result.frame["rank"] == 1)
    rows = []
    for relation, g in f.groupby("relation"):
        agree, pairs = 0, 0
        for _, answers in g.groupby("fact")["answer"]:
            counts = Counter(answers)
            n = len(answers)
            agree += sum(c * (c - 1) // 2 for c in counts.values())
            pairs += n * (n - 1) // 2
        per_pattern = g.groupby("template")["correct"].mean() * 100
        rows.append({"relation": relation, "patterns": g["template"].nunique(), "facts": g["fact"].nunique(),
                     "consistency": 100.0 * agree / pairs if pairs else math.nan,
                     "p_at_1_mean": per_pattern.mean(), "p_at_1_min": per_pattern.min(),
                     "p_at_1_max": per_pattern.max()})
    return pd.DataFrame(rows).set_index("relation")


# --------------------------------------------------------------------------- intervals


def _macro_replicates(frame: pd.DataFrame, correct: Sequence[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap replicates of the mean over relations of each relation's P@1 (%), for each column
    of ``correct`` (1/0 per row of ``frame``), the facts resampled within each relation and, for
    several columns, with the same draws (paired)."""
    rng = np.random.default_rng(seed)
    sums = [np.zeros(n_boot) for _ in correct]
    groups = frame.groupby("relation").indices
    for rows in groups.values():
        draw = rows[rng.integers(0, len(rows), (n_boot, len(rows)))]
        for total, column in zip(sums, correct):
            total += column[draw].mean(1)
    return [100 * total / len(groups) for total in sums]


def _correct(result: ProbeResult) -> np.ndarray:
    return (result.frame["rank"].to_numpy() == 1).astype(float)


def p_at_1_interval(result: ProbeResult, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """P@1 (%) averaged over relations as the paper's table does, and its 95% interval:
    ``(p_at_1, low, high)``, from a bootstrap over facts stratified by relation (each relation
    keeps its number of facts, so the mean over relations keeps its weights)."""
    if len(result) == 0:
        raise ValueError("no probed facts: nothing to put an interval on")
    value = float(result.by("relation")["p_at_1"].mean())
    low, high = np.quantile(_macro_replicates(result.frame, [_correct(result)], n_boot, seed)[0], [0.025, 0.975])
    return value, float(low), float(high)


def p_at_1_difference(a: ProbeResult, b: ProbeResult, *, paired: bool, n_boot: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """``P@1(a) - P@1(b)`` (%, each averaged over its relations) and its 95% bootstrap interval:
    ``(difference, low, high)``. ``paired``: ``a`` and ``b`` rank the same facts in the same order
    (the model and a baseline), and are resampled together; otherwise each on its own."""
    if paired:
        if list(a.frame["uuid"]) != list(b.frame["uuid"]):
            raise ValueError("paired results must rank the same facts in the same order")
        reps = _macro_replicates(a.frame, [_correct(a), _correct(b)], n_boot, seed)
        diffs = reps[0] - reps[1]
    else:
        diffs = (_macro_replicates(a.frame, [_correct(a)], n_boot, seed)[0]
                 - _macro_replicates(b.frame, [_correct(b)], n_boot, seed + 1)[0])
    value = float(a.by("relation")["p_at_1"].mean() - b.by("relation")["p_at_1"].mean())
    low, high = np.quantile(diffs, [0.025, 0.975])
    return value, float(low), float(high)


def split_at_median(result: ProbeResult, values: pd.Series | Sequence[float]) -> tuple[ProbeResult, ProbeResult]:
    """The facts whose ``values`` (one per fact, aligned with ``result.frame``; NaN left out) lie above
    their relation's median, and the others: ``(high, low)``. Split within each relation, so that the
    two halves hold the same relations and a P@1 difference (:func:`p_at_1_difference`, unpaired)
    compares facts of one relation, not easy relations with hard ones."""
    x = pd.Series(np.asarray(values, dtype=float), index=result.frame.index)
    known = x.notna()
    median = x[known].groupby(result.frame.loc[known, "relation"]).transform("median")
    high = known & (x > median.reindex(x.index))
    low = known & ~high
    return (ProbeResult(result.frame[high.to_numpy()].reset_index(drop=True)),
            ProbeResult(result.frame[low.to_numpy()].reset_index(drop=True)))


def interval_table(result: ProbeResult, rows: dict[str, pd.Series], *, n_boot: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """P@1 (%) with its 95% interval (:func:`p_at_1_interval`) for each named subset of the facts
    (``rows``: name -> boolean mask over ``result.frame``): facts, relations, P@1, low, high and
    the interval's half-width, the quantity a sample is sized by."""
    table = []
    for name, mask in rows.items():
        part = ProbeResult(result.frame[mask.to_numpy()].reset_index(drop=True))
        if len(part) == 0:
            continue
        value, low, high = p_at_1_interval(part, n_boot=n_boot, seed=seed)
        table.append({"rows": name, "facts": len(part), "relations": part.frame["relation"].nunique(),
                      "p_at_1": value, "low": low, "high": high, "half_width": (high - low) / 2})
    return pd.DataFrame(table).set_index("rows")


# --------------------------------------------------------------------------- whole objects


def prefix_shadowed(model: Model, facts: Iterable[LamaFact], objects: dict[str, list[str]]) -> list[bool]:
    """For each fact, whether another candidate of its relation (``objects[relation]``) is a strict
    token prefix of its object (``Paris`` of ``Paris Saint-Germain``): scored without the
    sentence's end, such a fact's object can never rank first (:func:`factlens.probing.cloze.tail`)."""
    v = view(model)
    ids: dict[str, tuple[int, ...]] = {}

    def tokens(word: str) -> tuple[int, ...]:
        if word not in ids:
            ids[word] = tuple(v.target_ids(word))
        return ids[word]

    shadowed = []
    for f in facts:
        gold = tokens(f.object)
        shadowed.append(any(len(tokens(o)) < len(gold) and gold[: len(tokens(o))] == tokens(o)
                            for o in objects.get(f.relation, ()) if o != f.object))
    return shadowed
