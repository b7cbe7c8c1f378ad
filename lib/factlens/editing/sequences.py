"""Sequential editing: hundreds of edits one after another, what they do to the model, and which
edits break it.

ROME writes one fact at a time (Meng et al. 2022, section 5: one fact per edit). Applied again and
again, every rank-one update moves the outputs of keys that overlap ``C⁻¹k*`` a little, and the
changes add up: the model forgets earlier edits and, eventually, collapses (AlphaEdit, Fang et al.
2025, Table 1: after 2,000 sequential edits of GPT-2 XL, ROME's efficacy is 54.6 against AlphaEdit's
99.5). MEMIT writes batches; AlphaEdit projects every update onto the null space of the preserved
keys and protects the earlier edits' keys too.

:func:`run_sequence` applies a method to CounterFact cases one edit (ROME) or one batch (MEMIT,
AlphaEdit) after another, and every ``every`` edits measures on the model as it is
(:func:`measure`, with a fixed :class:`Yardstick`):

* efficacy of the newest edits: ``[P(o*) > P(o)]`` on the prompts of the last ``every`` edits;
* retention: the same on every earlier edit;
* neighbourhood specificity: ``[P(o_n) > P(o*)]`` on the neighbourhood prompts of every edit so far;
* LAMA P@1 on a fixed sample of untouched T-REx facts (``factlens.probing.lama``);
* generation entropy: ROME's weighted 2-/3-gram entropy of text sampled from fixed prompts;

each with its 95% interval (Wilson for the proportions, bootstrap over prompts for the entropy).

**The collapse forecaster** (:func:`forecast`). Gupta et al. 2024 (r-ROME) trace ROME's
*disabling edits* (one edit that breaks the model) to its code: the update direction is
``u = C⁻¹k*`` with ``k*`` averaged over prefixed prompts, but the denominator and the residual use
the key of the unprefixed prompt ``k₀``::

    ROME's code:  ΔW = (v* − W k₀) uᵀ / (uᵀ k₀)        factlens (and r-ROME):  ΔW = (v* − W k*) uᵀ / (uᵀ k*)

When ``k₀`` is far from ``k*`` (typically when the subject is the prompt's first token, so that
its key without a prefix is unlike any prefixed one), ``uᵀk₀`` is small and ``ΔW`` huge. Before an
edit is applied, the forecast reports both denominators, ``‖ΔW‖ / ‖W‖`` for both updates and
whether the subject opens the prompt, and flags the edit when the update it would apply is
larger than ``flag_ratio`` times ``‖W‖``. ``method="ROME (original key mix)"`` runs the code's update.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from factlens.core.models import Model, view
from factlens.data import LamaFact
from factlens.editing import alphaedit, evaluation, memit, rome
from factlens.evidence.stats import bootstrap, wilson
from factlens.probing import lama

MethodName = Literal["ROME", "ROME (original key mix)", "MEMIT", "AlphaEdit"]
METHODS: tuple[str, ...] = ("ROME", "ROME (original key mix)", "MEMIT", "AlphaEdit")
METRICS: tuple[str, ...] = ("efficacy_newest", "retention", "specificity", "lama_p_at_1", "entropy")


# --------------------------------------------------------------------------- the forecaster


@dataclass(frozen=True)
class Forecast:
    """What predicts a disabling ROME edit, computed before the edit is applied.

    ``denominator`` is ``uᵀk*`` and ``denominator_unprefixed`` ``uᵀk₀`` (``u = C⁻¹k*``);
    ``update_norm`` and ``update_norm_unprefixed`` are ``‖ΔW‖_F / ‖W‖_F`` of the update with each
    denominator; ``applied_norm`` the one the method applies; ``subject_first`` whether the subject
    is the prompt's first token after BOS; ``flagged`` whether ``applied_norm`` exceeds the ratio.
    """

    subject: str
    denominator: float
    denominator_unprefixed: float
    update_norm: float
    update_norm_unprefixed: float
    applied_norm: float
    subject_first: bool
    flagged: bool

    @property
    def denominator_ratio(self) -> float:
        """``uᵀk₀ / uᵀk*``: 1 when the unprefixed key agrees with the averaged one; small or negative
        values multiply ROME's code's update by its inverse."""
        return self.denominator_unprefixed / self.denominator if self.denominator else math.nan


def forecast(W: torch.Tensor, C: torch.Tensor, k_star: torch.Tensor, k0: torch.Tensor, delta: torch.Tensor, *,
             subject: str, subject_first: bool, key_mix: str = "prefix", flag_ratio: float = 0.1,
             damping: float = 0.0) -> Forecast:
    """The :class:`Forecast` of a ROME edit from its parts: ``W`` [d_model, d_mlp] (ROME's layout),
    ``C``, the averaged key ``k*``, the unprefixed key ``k₀`` and the value change ``δ = v* − W k*``.

    ``‖ΔW‖_F = ‖δ‖ ‖u‖ / |uᵀk|`` for a rank-one ``ΔW = δ uᵀ / (uᵀk)`` (ROME's code's residual
    ``v* − W k₀`` is ``δ`` too, since its ``v*`` starts from the unprefixed prompt's value).
    """
    u = rome.update_direction(C, k_star, damping)
    d_star, d_zero = float(u @ k_star.double()), float(u @ k0.double())
    size = float(delta.double().norm() * u.norm() / W.double().norm())
    norm_star = size / abs(d_star) if d_star else math.inf
    norm_zero = size / abs(d_zero) if d_zero else math.inf
    applied = norm_zero if key_mix == "original" else norm_star
    return Forecast(subject, d_star, d_zero, norm_star, norm_zero, applied, subject_first, applied > flag_ratio)


def rome_step(model: Model, request: rome.EditRequest, hp: rome.ROMEHyperParams, C: torch.Tensor, *,
              key_mix: str = "prefix", flag_ratio: float = 0.1) -> Forecast:
    """One sequential ROME edit, in place: ``k*``, ``v*`` (``factlens.editing.rome``), the :func:`forecast`,
    then the rank-one update with the averaged key (``key_mix="prefix"``, eq. 2) or with ROME's code's
    unprefixed key in the denominator (``key_mix="original"``). Returns the forecast."""
    if key_mix not in ("prefix", "original"):
        raise ValueError(f"key_mix must be 'prefix' (k* everywhere) or 'original' (ROME's code), got {key_mix!r}")
    v = view(model)
    templates = rome.templates_for(model, hp)
    k_star = rome.compute_key(model, request, hp.layer, templates)
    k0 = rome.compute_key(model, request, hp.layer, ("{}",))
    value = rome.compute_value(model, request, hp.layer, hp, templates)
    W = v.mlp_out_weight(hp.layer).detach().T  # ROME's W: [d_model, d_mlp]
    first = v.subject_span(request.text, request.subject).start == len(v.bos)
    fc = forecast(W, C.to(W.device), k_star, k0, value.delta, subject=request.subject, subject_first=first,
                  key_mix=key_mix, flag_ratio=flag_ratio, damping=hp.damping)
    key = k0 if key_mix == "original" else k_star
    with torch.no_grad():  # eq. 2, mapping the key the denominator uses to W k + δ
        W_hat = rome.rank_one_update(W, C.to(W.device), k_star, W @ key + value.delta, damping=hp.damping, key=key)
        v.set_mlp_out_weight(hp.layer, W_hat.T)
    return fc


# --------------------------------------------------------------------------- measurements


@dataclass
class Yardstick:
    """The fixed measurements taken at every checkpoint of every method: a sample of LAMA facts no
    edit touches, the prompts text is generated from, and how many tokens."""

    lama: list[LamaFact]
    generation_prompts: list[str]
    generate_tokens: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lama or not self.generation_prompts:
            raise ValueError("a yardstick needs LAMA facts and generation prompts (at least one of each)")


def _proportion(hits: np.ndarray) -> dict[str, float]:
    n = len(hits)
    if n == 0:
        return {"value": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    low, high = wilson(float(hits.sum()), n)
    return {"value": 100 * float(hits.mean()), "low": 100 * low, "high": 100 * high, "n": n}


@torch.no_grad()
def outcomes(model: Model, cases: Sequence[Any], yardstick: Yardstick) -> dict[str, np.ndarray]:
    """Per item, on the model as it is now: ``edit`` (``[P(o*) > P(o)]`` on each case's prompt, in edit
    order), ``neighbour`` (``[P(o_n) > P(o*)]`` on each of their neighbourhood prompts), ``lama`` (the
    yardstick's LAMA facts answered first) and ``entropy`` (×100, per generation prompt)."""
    out: dict[str, np.ndarray] = {"edit": np.zeros(0, bool), "neighbour": np.zeros(0, bool)}
    if cases:
        rewrite = [c.prompt.format(c.subject) for c in cases]
        neighbours = [(p, c.target_new, true) for c in cases for p, true in c.neighborhood_prompts]
        prompts = [p for p in rewrite for _ in (0, 1)] + [p for p, _, _ in neighbours for _ in (0, 1)]
        targets = [t for c in cases for t in (c.target_new, c.target_true)]
        targets += [t for _, new, true in neighbours for t in (new, true)]
        lp = evaluation.target_log_probs(model, prompts, targets, batch_size=64).view(-1, 2).numpy()
        out["edit"] = lp[: len(cases), 0] > lp[: len(cases), 1]
        out["neighbour"] = lp[len(cases):, 1] > lp[len(cases):, 0]
    probed = lama.probe(model, yardstick.lama, k=1, progress=False)
    out["lama"] = (probed.frame["rank"] == 1).to_numpy()
    texts = rome.generate(model, yardstick.generation_prompts, yardstick.generate_tokens, top_k=5, seed=yardstick.seed)
    out["entropy"] = np.array([100 * evaluation.ngram_entropy(p + t)
                               for p, t in zip(yardstick.generation_prompts, texts)])
    return out


def summarize(outcome: dict[str, np.ndarray], newest: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """:data:`METRICS` from :func:`outcomes`, in percent (entropy ×100), each ``{value, low, high, n}``:
    the last ``newest`` edits are the newest, the others the earlier ones (retention)."""
    edit = outcome["edit"]
    entropy = outcome["entropy"]
    low, high = bootstrap(entropy, seed=seed) if len(entropy) > 1 else (entropy[0], entropy[0])
    return {"efficacy_newest": _proportion(edit[len(edit) - newest:]),
            "retention": _proportion(edit[: len(edit) - newest]),
            "specificity": _proportion(outcome["neighbour"]),
            "lama_p_at_1": _proportion(outcome["lama"]),
            "entropy": {"value": float(entropy.mean()), "low": float(low), "high": float(high), "n": len(entropy)}}


def measure(model: Model, cases: Sequence[Any], newest: int, yardstick: Yardstick) -> dict[str, dict[str, float]]:
    """The model's state after editing ``cases`` (CounterFact cases, in edit order): :func:`summarize`
    of :func:`outcomes`. Neighbourhood specificity pools every edited case's neighbourhood prompts."""
    return summarize(outcomes(model, cases, yardstick), newest, yardstick.seed)


# --------------------------------------------------------------------------- the sequence


@dataclass
class SequenceRun:
    """One method's sequence: the measured curve, ROME's forecasts, the times, and the record that
    undoes the whole sequence bit for bit (already undone unless the run kept its edits)."""

    method: str
    curve: pd.DataFrame                      # one row per (checkpoint, metric): n_edits, metric, value, low, high, n
    forecasts: pd.DataFrame                  # ROME's methods: one row per edit (Forecast fields, n_edits, case_id)
    record: memit.BatchEdit
    edit_seconds: list[float] = field(default_factory=list)   # per edit (ROME) or per batch (MEMIT, AlphaEdit)
    measure_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    last: dict[str, np.ndarray] = field(default_factory=dict)  # :func:`outcomes` at the last checkpoint

    @property
    def n_edits(self) -> int:
        return int(self.curve["n_edits"].max()) if len(self.curve) else 0

    def final(self, metric: str) -> dict[str, float]:
        """The last checkpoint's ``{value, low, high, n}`` of ``metric``."""
        rows = self.curve[(self.curve["metric"] == metric) & (self.curve["n_edits"] == self.n_edits)]
        if rows.empty:
            raise KeyError(f"no metric {metric!r} in this run; it has {sorted(self.curve['metric'].unique())}")
        return rows.iloc[0][["value", "low", "high", "n"]].to_dict()


def _rows(n_edits: int, measured: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [{"n_edits": n_edits, "metric": m, **values} for m, values in measured.items()]


def run_sequence(model: Model, cases: Sequence[Any], method: str, yardstick: Yardstick, *, every: int = 25,
                 batch_size: int | None = None, zs: torch.Tensor | None = None,
                 rome_hparams: rome.ROMEHyperParams | None = None,
                 alphaedit_hparams: alphaedit.AlphaEditHyperParams | None = None,
                 flag_ratio: float = 0.1, keep_edits: bool = False,
                 on_checkpoint: Callable[[pd.DataFrame], None] | None = None,
                 progress: bool = True) -> SequenceRun:
    """Edit ``cases`` (CounterFact cases) into ``model`` one after another with ``method`` and
    :func:`measure` before the first edit and after every ``every`` edits.

    ``method`` is one of :data:`METHODS`. ROME's methods edit one case at a time (:func:`rome_step`,
    with its :func:`forecast`); MEMIT and AlphaEdit edit batches of ``batch_size`` cases (default
    ``every``, which it must divide), AlphaEdit keeping one :class:`~factlens.editing.alphaedit.AlphaEditState`
    for the sequence. ``zs`` (one row per case, :func:`factlens.editing.memit.compute_zs`) are the batch
    methods' target residuals, as MEMIT's and AlphaEdit's code reuse cached ones; computed per batch on
    the current model when not given. Both batch methods use ``alphaedit_hparams.memit``'s MEMIT
    settings (default :func:`factlens.editing.alphaedit.default_hparams`). ``on_checkpoint`` receives the
    curve so far after each measurement (for a live plot). At the end the whole sequence is undone
    (bit for bit) unless ``keep_edits``; ``run.record.undo()`` undoes it later.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    cases = list(cases)
    if not cases:
        raise ValueError("no cases to edit: give CounterFact cases (factlens.data.counterfact())")
    if every < 1:
        raise ValueError(f"every must be a positive number of edits, got {every}")
    batched = method in ("MEMIT", "AlphaEdit")
    size = (batch_size or every) if batched else 1
    if every % size:
        raise ValueError(f"batch_size {size} must divide every ({every}): measurements fall between batches")
    if zs is not None and len(zs) != len(cases):
        raise ValueError(f"got {len(zs)} target residuals for {len(cases)} cases; give one per case, in order")
    requests = [rome.EditRequest.from_counterfact(c) for c in cases]
    rhp = rome_hparams or rome.default_hparams(model)
    ahp = alphaedit_hparams or alphaedit.default_hparams(model)
    layers = ahp.layers if batched else (rhp.layer,)
    record = memit.BatchEdit(model, layers, method)
    C = rome.layer_stats(model, rhp.layer, corpus=rhp.mom2_corpus, samples=rhp.mom2_samples, progress=False)
    m = ahp.memit
    stats = {l: rome.layer_stats(model, l, corpus=m.mom2_corpus, samples=m.mom2_samples, progress=False)
             for l in m.layers} if method == "MEMIT" else None
    state = alphaedit.AlphaEditState.create(model, ahp) if method == "AlphaEdit" else None
    key_mix = "original" if method == "ROME (original key mix)" else "prefix"

    rows, forecasts, edit_seconds = [], [], []
    start = time.perf_counter()
    last = outcomes(model, [], yardstick)
    rows += _rows(0, summarize(last, 0, yardstick.seed))
    measure_seconds = time.perf_counter() - start
    if on_checkpoint:
        on_checkpoint(pd.DataFrame(rows))
    bar = tqdm(total=len(cases), desc=f"{method}, sequential", disable=not progress)
    try:
        for first in range(0, len(cases), size):
            chunk = requests[first:first + size]
            tic = time.perf_counter()
            if not batched:
                fc = rome_step(model, chunk[0], rhp, C, key_mix=key_mix, flag_ratio=flag_ratio)
                forecasts.append({"n_edits": first + 1, "case_id": cases[first].case_id, **asdict(fc),
                                  "denominator_ratio": fc.denominator_ratio})
            else:
                z = zs[first:first + size] if zs is not None else None
                if method == "MEMIT":
                    memit.apply(model, chunk, hparams=m, zs=z, stats=stats)
                else:
                    alphaedit.apply(model, chunk, hparams=ahp, state=state, zs=z)
            edit_seconds.append(time.perf_counter() - tic)
            record.requests += chunk
            bar.update(len(chunk))
            done = first + len(chunk)
            if done % every == 0 or done == len(cases):
                tic = time.perf_counter()
                newest = done - ((done - 1) // every) * every
                last = outcomes(model, cases[:done], yardstick)
                rows += _rows(done, summarize(last, newest, yardstick.seed))
                measure_seconds += time.perf_counter() - tic
                if on_checkpoint:
                    on_checkpoint(pd.DataFrame(rows))
    except BaseException:
        record.undo()
        raise
    finally:
        bar.close()
    if not keep_edits:
        record.undo()
    settings = {"method": method, "n_edits": len(cases), "every": every, "batch_size": size,
                "flag_ratio": flag_ratio, "layers": list(layers)}
    return SequenceRun(method, pd.DataFrame(rows), pd.DataFrame(forecasts), record, edit_seconds,
                       measure_seconds, settings, last)


def collapse_point(run: SequenceRun, metric: str = "lama_p_at_1", drop: float = 0.5) -> int | None:
    """The first checkpoint (number of edits) where ``metric`` fell below ``drop`` times its first
    measured value (before any edit; retention: after the second batch of edits): where the model
    collapses by that measure (None if it never does)."""
    if metric not in set(run.curve["metric"]):
        raise KeyError(f"no metric {metric!r} in this run")
    rows = run.curve[(run.curve["metric"] == metric) & run.curve["value"].notna()].sort_values("n_edits")
    if rows.empty:
        return None
    base = float(rows.iloc[0]["value"])
    below = rows[rows["value"] < drop * base]
    return int(below.iloc[0]["n_edits"]) if len(below) else None
