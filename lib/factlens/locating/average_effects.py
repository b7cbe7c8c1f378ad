"""Causal tracing over many facts (Meng et al. 2022, §2.2 and Figure 2): the average effects.

The paper traces the 1,000 facts GPT-2 XL knows (:func:`known_facts_answered`: the model's
top next token is the answer) and averages, by token group (:data:`factlens.locating.tracing.TOKEN_GROUPS`),
each fact's indirect effects: the average indirect effect

    AIE[g, l] = mean over facts of ( mean over the tokens i of group g of IE[i, l] ),

and the average total effect ``ATE = mean(P[o] − P*[o])``. :func:`average_indirect_effects`
gives both, with bands; :func:`fact_effects` gives each fact's row, over which the chapter
bootstraps its intervals, and :func:`peak_effect` / :func:`peak_depth` read where a curve peaks
as the paper's code does (``avg_le.avg().max() − avg_ls.avg()``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from factlens.core.cache import cached_tensors
from factlens.core.models import Model, view
from factlens.locating.tracing import TOKEN_GROUPS, Trace, token_groups


def known_facts_answered(model: Model, facts: Sequence[Any], batch_size: int = 32,
                         progress: bool = True) -> list[Any]:
    """The facts whose answer the model gives: its top next token after ``fact.prompt`` is the
    first token of ``fact.attribute`` (the paper traces the facts GPT-2 XL knows). Cached per
    model and list of facts."""
    v = view(model)
    text = "\n".join(f"{f.prompt}\t{f.attribute}" for f in facts)
    key = {"model": v.name, "facts": hashlib.sha256(text.encode()).hexdigest()[:16], "n": len(facts)}

    @torch.no_grad()
    def build() -> dict[str, torch.Tensor]:
        answered = []
        for i in tqdm(range(0, len(facts), batch_size), desc="known facts", disable=not progress):
            chunk = facts[i:i + batch_size]
            batch = v.batch([f.prompt for f in chunk])
            top = v.logits_at(batch.ids, batch.last).argmax(-1).tolist()
            answered += [t == v.target_ids(f.attribute)[0] for f, t in zip(chunk, top)]
        return {"answered": torch.tensor(answered, dtype=torch.bool)}

    answered = cached_tensors("tracing-known-facts", key, build)["answered"].tolist() if facts else []
    return [f for f, ok in zip(facts, answered) if ok]


@dataclass
class AverageEffect:
    """Average indirect effect (AIE) by token group × layer, with 95% confidence bands.

    ``mean[g, l]`` averages, over the facts that have group ``g``, each fact's mean IE over
    the group's tokens; ``low`` / ``high``: ``mean ∓ 1.96 · sd / √n``; ``count[g]``: n.
    """

    kind: str
    sever: str | None
    groups: tuple[str, ...]
    mean: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    count: list[int]
    n_facts: int
    clean_prob: float
    corrupted_prob: float

    @property
    def total_effect(self) -> float:
        """ATE: the average of P[o] − P*[o]."""
        return self.clean_prob - self.corrupted_prob

    def row(self, group: str) -> torch.Tensor:
        return self.mean[self.groups.index(group)]

    def peak(self, group: str) -> tuple[int, float]:
        """The layer where the group's AIE is largest, and that AIE."""
        row = self.row(group)
        if torch.isnan(row).all():
            raise ValueError(f"no fact has a traced {group!r}")
        layer = int(torch.nan_to_num(row, nan=-math.inf).argmax())
        return layer, float(row[layer])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sever": self.sever, "groups": list(self.groups),
                "n_facts": self.n_facts, "count": self.count, "clean_prob": self.clean_prob,
                "corrupted_prob": self.corrupted_prob, "total_effect": self.total_effect,
                "aie": self.mean.tolist(), "low": self.low.tolist(), "high": self.high.tolist()}


def fact_effects(traces: Sequence[Trace], group: str) -> torch.Tensor:
    """Each fact's indirect effect at a token group, averaged over the group's tokens:
    [facts, layers], for the facts that have the group and traced it (the rows that
    :func:`average_indirect_effects` averages; bootstrap over them for intervals)."""
    if group not in TOKEN_GROUPS:
        raise ValueError(f"unknown token group {group!r}; the groups are {list(TOKEN_GROUPS)}")
    rows = []
    for t in traces:
        ie = t.indirect_effect
        where = token_groups(t.subject_span, ie.shape[0])[group]
        if where and not torch.isnan(ie[where]).any():
            rows.append(ie[where].mean(0))
    n_layers = traces[0].scores.shape[1] if traces else 0
    return torch.stack(rows).double() if rows else torch.empty(0, n_layers, dtype=torch.double)


def peak_effect(effects: torch.Tensor | np.ndarray) -> float:
    """The AIE's largest value over layers, from per-fact effects [facts, layers] (the paper's
    code: ``avg_le.avg().max() − avg_ls.avg()``)."""
    return float(np.asarray(effects).mean(0).max())


def peak_depth(effects: torch.Tensor | np.ndarray) -> float:
    """The relative depth ``l / (L − 1)`` of the layer where the AIE peaks (0: first, 1: last),
    from per-fact effects [facts, layers]: comparable across models of different depth."""
    mean = np.asarray(effects).mean(0)
    return float(mean.argmax() / (len(mean) - 1))


def scaled_layer(paper_layer: int, paper_layers: int, n_layers: int) -> int:
    """The layer of an ``n_layers`` model at the relative depth of the paper's ``paper_layer`` (0-based)
    of ``paper_layers``: ``round(paper_layer / (paper_layers − 1) · (n_layers − 1))``. A site fixed in
    advance, from the paper, so that the AIE read there is a mean over facts (a claim's bootstrap
    handles it), not a maximum over layers chosen on the same facts."""
    return round(paper_layer / (paper_layers - 1) * (n_layers - 1))


def layer_thirds(n_layers: int) -> tuple[list[int], list[int], list[int]]:
    """The first, middle and last thirds of ``n_layers`` layers (the middle: ``L/3 <= l < 2L/3``)."""
    third = n_layers / 3
    first = [l for l in range(n_layers) if l < third]
    middle = [l for l in range(n_layers) if third <= l < 2 * third]
    return first, middle, [l for l in range(n_layers) if l >= 2 * third]


def band_difference(effects: torch.Tensor | np.ndarray, a: Sequence[int], b: Sequence[int]) -> np.ndarray:
    """Per fact, the mean effect over layers ``a`` minus over layers ``b`` (effects [facts, layers]):
    the units of an ordering claim about where along the layers an effect lies."""
    x = np.asarray(effects, dtype=float)
    return x[:, list(a)].mean(1) - x[:, list(b)].mean(1)


def average_indirect_effects(traces: Sequence[Trace]) -> AverageEffect:
    """AIE over ``traces`` by token group × layer (the paper's Figure 2)."""
    if not traces:
        raise ValueError("average_indirect_effects needs at least one trace")
    kinds = {(t.kind, t.settings.get("sever")) for t in traces}
    if len(kinds) != 1:
        raise ValueError(f"the traces mix kinds {sorted(kinds, key=str)}; average one kind at a time")
    n_layers = traces[0].scores.shape[1]
    per_group = {g: fact_effects(traces, g) for g in TOKEN_GROUPS}
    stats = []
    for g in TOKEN_GROUPS:
        x = per_group[g]
        if len(x):
            sd = x.std(0) if len(x) > 1 else torch.zeros(n_layers, dtype=torch.double)
            stats.append((x.mean(0), 1.96 * sd / math.sqrt(len(x))))
        else:
            nan = torch.full((n_layers,), float("nan"), dtype=torch.double)
            stats.append((nan, nan))
    mean = torch.stack([m for m, _ in stats]).float()
    half = torch.stack([h for _, h in stats]).float()
    kind, sever = next(iter(kinds))
    return AverageEffect(kind=kind, sever=sever, groups=TOKEN_GROUPS, mean=mean, low=mean - half,
                         high=mean + half, count=[len(per_group[g]) for g in TOKEN_GROUPS],
                         n_facts=len(traces),
                         clean_prob=sum(t.clean_prob for t in traces) / len(traces),
                         corrupted_prob=sum(t.corrupted_prob for t in traces) / len(traces))
