"""Does localization inform editing? (Hase et al. 2023, "Does Localization Inform Editing? Surprising
Differences in Causality-Based Localization vs. Knowledge Editing in Language Models", NeurIPS).

ROME edits the MLP of the layer where causal tracing peaks on average (Meng et al. 2022, §3). Hase et al.
ask the question fact by fact: for each CounterFact case the model completes correctly and each swept
layer ``ℓ``, two numbers (§3.4, §4.1):

* the **tracing effect** of layer ``ℓ``'s MLP: causal tracing (``factlens.locating.tracing``) of the true
  object with the MLP outputs of a window of layers around ``ℓ`` restored, as a fraction of what a
  restoration can win back, the largest over the prompt's tokens ``t``:

      TE_ℓ = max_t (P*,clean v_(t,ℓ)[o_true] − P*[o_true]) / (P[o_true] − P*[o_true]);

  the window is 5 of GPT-J's 28 layers, scaled to the model's depth (:func:`paper_window`); the paper's
  robustness check reads the last subject token instead of the maximum (its Figure 16): ``token=``;
* the **rewrite score** of ROME at layer ``ℓ`` (§3.4), how much of the possible gain in the new object's
  probability the edit takes:

      RS_ℓ = (P_θ*(o_false | s, r) − P_θ(o_false | s, r)) / (1 − P_θ(o_false | s, r)),

  ``θ*`` the weights after writing ``o_false`` at ``ℓ``, ``P`` the book's probability of a target
  (``evaluation.target_log_probs``: exp of the mean log-probability per token, as ROME's code compares them).

The paper's analysis (§4.3, Table 1) regresses the rewrite score, over every (case, layer), on (1) the
edit layer as a categorical variable, (2) the tracing effect, (3) both, interacted (an intercept and a
slope per layer), and compares their R² (:func:`regression_r2`): what the tracing effect adds once the
layer is known, ``R²(both) − R²(layer)``. :func:`localize_and_edit` measures the rows; the intervals
resample cases, every layer of a case together (:func:`r2_interval`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from factlens.core.models import Model, view
from factlens.data import CounterFactCase
from factlens.editing import rome
from factlens.editing.evaluation import target_log_probs
from factlens.editing.requests import EditRequest
from factlens.evidence import papers, stats
from factlens.locating.average_effects import known_facts_answered
from factlens.locating.tracing import Trace, TraceSettings, trace

Token = Literal["max", "last subject"]
#: The regressions of Table 1, by name, and what the tracing effect adds once the layer is known.
R2_KEYS: tuple[str, ...] = ("layer", "tracing effect", "both", "added")


def paper_window(n_layers: int) -> int:
    """The paper's MLP window (5 of GPT-J's 28 layers, §4.1) scaled to a model's depth:
    ``round(5 · L / 28)`` (halves rounded up), at least 1; 3 of Gemma 3 270M's 18 layers."""
    window = papers.paper("after.localization.window").value
    depth = papers.paper("after.localization.n_layers").value
    return max(1, math.floor(window * n_layers / depth + 0.5))


@dataclass(frozen=True)
class LocalizationSettings:
    """One localization-against-editing study (Hase et al. 2023, §4), declared as a value.

    Attributes:
        layers: the layers traced and edited (the paper: 8 of GPT-J's 28 and ROME's own 6).
        trace: the MLP trace whose effects are read (kind ``"mlp"``; window ``None``: :func:`paper_window`).
        hidden: also trace the hidden states at the last subject token (read beside the MLP's, no regression).
    """

    layers: tuple[int, ...]
    _: KW_ONLY
    trace: TraceSettings = TraceSettings("mlp")
    hidden: bool = True

    def __post_init__(self) -> None:
        layers = tuple(int(layer) for layer in self.layers)
        if not layers or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct layers, at least one, got {self.layers!r}")
        if self.trace.kind != "mlp":
            raise ValueError(f"the tracing effect is the MLPs' (the paper's), got kind {self.trace.kind!r}")
        object.__setattr__(self, "layers", tuple(sorted(layers)))

    def for_depth(self, n_layers: int) -> LocalizationSettings:
        """These settings with the window a model of ``n_layers`` layers uses."""
        window = self.trace.window or paper_window(n_layers)
        return replace(self, trace=replace(self.trace, window=window))


def swept_layers(n_layers: int, every: int, rome_layer: int) -> tuple[int, ...]:
    """Every ``every``-th layer from 0 and ROME's own layer (the paper: every 4th of GPT-J's and its 6)."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    return tuple(sorted({*range(0, n_layers, every), rome_layer}))


# --------------------------------------------------------------------------- the two numbers


def rewrite_score(p_before: float, p_after: float) -> float:
    """``(p_after − p_before) / (1 − p_before)`` (Hase et al. 2023, §3.4): 1 when the edit makes the new object
    certain, 0 when it changes nothing, negative when it lowers it."""
    if not 0.0 <= p_before < 1.0:
        raise ValueError(f"the probability before the edit must lie in [0, 1), got {p_before}")
    return (p_after - p_before) / (1.0 - p_before)


def tracing_effects(t: Trace, token: Token = "max") -> torch.Tensor:
    """The fractional tracing effect per layer (§4.1): the indirect effect ``P*,clean − P*`` over the total
    effect ``P − P*``, the largest over the traced tokens (``token="max"``, the paper's) or at the last subject
    token (``"last subject"``, its Figure 16). [n_layers]; NaN everywhere when the total effect is not positive
    (the corruption did not lower the answer: there is nothing to restore)."""
    if token == "max":
        effects = t.indirect_effect[~torch.isnan(t.scores).all(1)].max(0).values
    elif token == "last subject":
        effects = t.indirect_effect[t.subject_span.last]
    else:
        raise ValueError(f"token must be 'max' or 'last subject', got {token!r}")
    if not t.total_effect > 0:
        return torch.full_like(effects, math.nan)
    return effects / t.total_effect


@dataclass(frozen=True)
class _Asked:
    """A CounterFact case as ``known_facts_answered`` reads a fact: the filled prompt and its true object."""

    prompt: str
    attribute: str


def known_cases(model: Model, cases: Sequence[CounterFactCase], *, progress: bool = False) -> list[CounterFactCase]:
    """The cases the model completes correctly: its top next token after the filled prompt is the true object's
    first token (the paper keeps the facts GPT-J completes, §4.2). Cached per model and list of cases."""
    asked = [_Asked(c.filled_prompt, c.target_true) for c in cases]
    answered = {id(a) for a in known_facts_answered(model, asked, progress=progress)}
    return [c for c, a in zip(cases, asked) if id(a) in answered]


def known_draw(model: Model, cases: Sequence[CounterFactCase], candidates: int, *, seed: int = 0
               ) -> list[CounterFactCase]:
    """The cases the model completes (:func:`known_cases`) among ``candidates`` drawn from ``cases`` with
    ``random.Random(seed + 2)``, in the order drawn: the localization study's cases, and the editing chapter's
    layer sweep's (its first ones), so that the study reads the sweep's v* from the cache."""
    return known_cases(model, random.Random(seed + 2).sample(list(cases), candidates))


def _p(model: Model, prompt: str, targets: Sequence[str]) -> list[float]:
    return target_log_probs(model, [prompt] * len(targets), list(targets)).exp().tolist()


def localize_and_edit(model: Model, cases: Sequence[CounterFactCase], settings: LocalizationSettings,
                      hparams: rome.ROMEHyperParams | None = None, *, progress: bool = True) -> pd.DataFrame:
    """Trace and edit every case at every layer of ``settings`` (Hase et al. 2023, §4): one row per
    (case, layer) with ``mlp_effect`` (the tracing effect, the largest over tokens), ``mlp_effect_last_subject``
    and ``hidden_effect_last_subject`` (at the last subject token; NaN without ``settings.hidden``),
    ``p_before`` and ``p_after`` of the new object, ``rewrite_score``, ``efficacy`` (1 when the new object
    is then more probable than the true one, the book's ES), ``edit_seconds``.

    The trace's noise for case ``k`` is seeded with ``settings.trace.seed + k``; ROME runs with ``hparams``
    (default ``rome.default_hparams``) at each layer, and each edit is undone before the next."""
    v = view(model)
    settings = settings.for_depth(v.n_layers)
    for layer in settings.layers:
        v.check_layer(layer)
    hp = hparams or rome.default_hparams(model)
    rows = []
    for k, case in enumerate(tqdm(cases, desc="tracing and editing", disable=not progress)):
        text, seeded = case.filled_prompt, replace(settings.trace, seed=settings.trace.seed + k)
        mlp = trace(model, text, case.subject, seeded, target=case.target_true)
        effect, effect_last = tracing_effects(mlp), tracing_effects(mlp, "last subject")
        hidden = torch.full((v.n_layers,), math.nan)
        if settings.hidden:
            hidden_trace = trace(model, text, case.subject, replace(seeded, kind="hidden"), target=case.target_true,
                                 positions=["last subject token"])
            hidden = tracing_effects(hidden_trace, "last subject")
        p_new, p_true = _p(model, text, [case.target_new, case.target_true])
        request = EditRequest.from_counterfact(case)
        for layer in settings.layers:
            with rome.ROME(replace(hp, layer=layer))(model, [request]) as edit:
                new_after, true_after = _p(model, text, [case.target_new, case.target_true])
            rows.append({"case_id": case.case_id, "layer": layer, "mlp_effect": float(effect[layer]),
                         "mlp_effect_last_subject": float(effect_last[layer]),
                         "hidden_effect_last_subject": float(hidden[layer]), "p_before": p_new,
                         "p_true_before": p_true, "p_after": new_after,
                         "rewrite_score": rewrite_score(p_new, new_after), "efficacy": float(new_after > true_after),
                         "edit_seconds": edit.info["seconds"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the regressions


def _r2(design: np.ndarray, y: np.ndarray) -> float:
    """``1 − SSR / SST`` of the least-squares fit of ``y`` on the columns of ``design``."""
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    total = ((y - y.mean()) ** 2).sum()
    if total == 0:
        raise ValueError("the outcome does not vary: R² is undefined")
    return float(1.0 - (residual ** 2).sum() / total)


def designs(layers: np.ndarray, effect: np.ndarray) -> dict[str, np.ndarray]:
    """The design matrices of the paper's three regressions (§4.3): ``layer``, one indicator column per layer
    (together the intercept); ``tracing effect``, an intercept and the effect; ``both``, the layer interacted with
    the effect (per layer an intercept and a slope)."""
    levels = np.unique(layers)
    onehot = (layers[:, None] == levels[None, :]).astype(float)
    return {"layer": onehot, "tracing effect": np.column_stack([np.ones(len(effect)), effect]),
            "both": np.hstack([onehot, onehot * effect[:, None]])}


def _clean(frame: pd.DataFrame, effect: str, outcome: str) -> pd.DataFrame:
    missing = [c for c in ("case_id", "layer", effect, outcome) if c not in frame]
    if missing:
        raise KeyError(f"the frame has no column(s) {missing}; it has {list(frame.columns)}")
    return frame.dropna(subset=[effect, outcome])


def _r2s(layers: np.ndarray, effect: np.ndarray, y: np.ndarray) -> dict[str, float]:
    out = {name: _r2(x, y) for name, x in designs(layers, effect).items()}
    out["added"] = out["both"] - out["layer"]
    return out


def regression_r2(frame: pd.DataFrame, effect: str = "mlp_effect", outcome: str = "rewrite_score") -> dict[str, float]:
    """R² of the paper's three regressions of ``outcome`` over every row (case, layer) of ``frame`` (Table 1),
    and ``added``: ``R²(both) − R²(layer)``, what the tracing effect explains once the layer is known. Rows
    with a NaN effect (no total effect to normalize by) are left out."""
    rows = _clean(frame, effect, outcome)
    return _r2s(rows["layer"].to_numpy(), rows[effect].to_numpy(dtype=float), rows[outcome].to_numpy(dtype=float))


def r2_interval(frame: pd.DataFrame, key: str, effect: str = "mlp_effect", outcome: str = "rewrite_score", *,
                n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """One of :data:`R2_KEYS` (or ``"layer minus tracing"``: ``R²(layer) − R²(tracing effect)``) with its 95%
    percentile interval over resampled cases, every row of a case kept together: ``(value, low, high)``."""
    if key not in (*R2_KEYS, "layer minus tracing"):
        raise ValueError(f"key must be one of {R2_KEYS} or 'layer minus tracing', got {key!r}")
    rows = _clean(frame, effect, outcome)
    parts = [(p["layer"].to_numpy(), p[effect].to_numpy(dtype=float), p[outcome].to_numpy(dtype=float))
             for _, p in rows.groupby("case_id", sort=False)]
    if not parts:
        raise ValueError("no cases with a tracing effect and an outcome")

    def statistic(index: np.ndarray) -> float:
        chosen = [parts[int(i)] for i in index.ravel()]
        try:
            r2 = _r2s(*(np.concatenate([c[k] for c in chosen]) for k in range(3)))
        except ValueError:  # a resample whose outcome does not vary
            return math.nan
        return r2["layer"] - r2["tracing effect"] if key == "layer minus tracing" else r2[key]

    index = np.arange(len(parts))[:, None]
    return (statistic(index), *stats.bootstrap(index, statistic, n_boot=n_boot, seed=seed))


def correlation_at(frame: pd.DataFrame, layer: int, effect: str = "mlp_effect", outcome: str = "rewrite_score", *,
                   n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float, int]:
    """Pearson's correlation over cases of ``outcome`` and ``effect`` at ``layer`` (the paper's Figure 4, at ROME's
    layer), its percentile interval over resampled cases, and the number of cases: ``(r, low, high, n)``."""
    rows = _clean(frame, effect, outcome)
    rows = rows[rows["layer"] == layer]
    if len(rows) < 3:
        raise ValueError(f"a correlation at layer {layer} needs at least 3 cases, got {len(rows)}")
    x = rows[[effect, outcome]].to_numpy(dtype=float)

    def pearson(sample: np.ndarray) -> float:
        if np.ptp(sample[:, 0]) == 0 or np.ptp(sample[:, 1]) == 0:
            return math.nan
        return float(np.corrcoef(sample[:, 0], sample[:, 1])[0, 1])

    return (pearson(x), *stats.bootstrap(x, pearson, n_boot=n_boot, seed=seed), len(rows))


def fixed_minus_traced(frame: pd.DataFrame, layer: int, effect: str = "mlp_effect",
                       outcome: str = "rewrite_score") -> pd.Series:
    """Per case, ``outcome`` at the fixed ``layer`` minus ``outcome`` at the swept layer where the case's tracing
    effect is largest (0 where that is the fixed layer): positive where editing at the fixed layer does better
    than following the case's own trace (§1: 'better to ignore the tracing results')."""
    rows = _clean(frame, effect, outcome)
    if layer not in set(rows["layer"]):
        raise ValueError(f"layer {layer} is not among the swept layers {sorted(set(rows['layer']))}")
    out = {}
    for case_id, part in rows.groupby("case_id", sort=False):
        fixed = part.loc[part["layer"] == layer, outcome]
        if len(fixed):
            out[case_id] = float(fixed.iloc[0]) - float(part.loc[part[effect].idxmax(), outcome])
    return pd.Series(out, name=f"{outcome} at layer {layer} minus at the traced layer")


def traced_layer(frame: pd.DataFrame, effect: str = "mlp_effect") -> pd.Series:
    """Per case, the swept layer where its tracing effect is largest."""
    rows = frame.dropna(subset=[effect])
    return rows.loc[rows.groupby("case_id", sort=False)[effect].idxmax()].set_index("case_id")["layer"]


def layer_means(frame: pd.DataFrame,
                columns: Sequence[str] = ("mlp_effect", "rewrite_score", "efficacy")) -> pd.DataFrame:
    """Each column's mean over cases per layer (the paper's Figure 1 and its Figure 7's curves)."""
    return frame.groupby("layer")[list(columns)].mean()

