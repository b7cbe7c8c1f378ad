"""Sequential editing: hundreds of edits one after another, what they do to the model, and which
edits break it.

ROME writes one fact at a time (Meng et al. 2022, section 5: one fact per edit). Applied again and
again, every rank-one update moves the outputs of keys that overlap ``C⁻¹k*`` a little, and the
changes add up: the model forgets earlier edits and, eventually, collapses (AlphaEdit, Fang et al.
2025, Table 1: after 2,000 sequential edits of GPT-2 XL, ROME's efficacy is 54.6 against AlphaEdit's
99.5). MEMIT writes batches; AlphaEdit projects every update onto the null space of the preserved
keys and protects the earlier edits' keys too.

:func:`run_sequence` applies an editor (``factlens.editing.requests.Editor``) to CounterFact cases one
edit (ROME) or one batch (MEMIT, AlphaEdit) after another, and every ``every`` edits measures on the
model as it is (:func:`measure`, with a fixed :class:`Yardstick`):

* efficacy of the newest edits: ``[P(o*) > P(o)]`` on the prompts of the last ``every`` edits;
* retention: the same on every earlier edit;
* neighbourhood specificity: ``[P(o_n) > P(o*)]`` on the neighbourhood prompts of every edit so far;
* LAMA P@1 on a fixed sample of untouched T-REx facts (``factlens.probing.lama``);
* generation entropy: ROME's weighted 2-/3-gram entropy of text sampled from fixed prompts;

each with its 95% interval (Wilson for the proportions, bootstrap over prompts for the entropy).

**The collapse forecaster.** Gupta et al. 2024 (r-ROME) trace ROME's *disabling edits* (one edit that
breaks the model) to its code: the update direction is ``u = C⁻¹k*`` with ``k*`` averaged over prefixed
prompts, but the denominator and the residual use the key of the unprefixed prompt ``k₀``::

    ROME's code:  ΔW = (v* − W k₀) uᵀ / (uᵀ k₀)        factlens (and r-ROME):  ΔW = (v* − W k*) uᵀ / (uᵀ k*)

Every ROME edit reports its ``factlens.editing.rome.Forecast`` (both denominators, ``‖ΔW‖ / ‖W‖`` for
both updates, whether the subject opens the prompt); the run lists them and flags an edit whose applied
update is larger than ``flag_ratio`` times ``‖W‖``. The chapter's method "ROME (original key mix)" runs
the code's update (``unprefixed_key_in_update``); :func:`editor` builds the chapter's methods by name.
"""

from __future__ import annotations

import json
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from factlens.core.models import Model, view
from factlens.data import LamaFact
from factlens.editing import alphaedit, evaluation, memit, rome, second_moment
from factlens.editing.generation import generate
from factlens.editing.requests import Edit, Editor, EditRequest
from factlens.evidence.stats import bootstrap, wilson
from factlens.probing.repeated import RecordedRows, RepeatedProbe

#: The many-edits chapter's methods, as its parameters and results name them (:func:`editor`).
METHODS: tuple[str, ...] = ("ROME", "ROME (original key mix)", "MEMIT", "AlphaEdit")
METRICS: tuple[str, ...] = ("efficacy_newest", "retention", "specificity", "lama_p_at_1", "entropy")


def editor(model: Model, method: str, *, rome_hparams: rome.ROMEHyperParams | None = None,
           alphaedit_hparams: alphaedit.AlphaEditHyperParams | None = None,
           zs: Mapping[EditRequest, torch.Tensor] | None = None) -> Editor:
    """The editor of one of the chapter's :data:`METHODS`, for a sequence on ``model``.

    "ROME" is eq. 2 with the averaged key, "ROME (original key mix)" ROME's code's update (the unprefixed
    key in the denominator), both with ``rome_hparams`` (default :func:`factlens.editing.rome.default_hparams`)
    and its ``C`` loaded once. "MEMIT" and "AlphaEdit" share ``alphaedit_hparams.memit``'s MEMIT settings
    (default :func:`factlens.editing.alphaedit.default_hparams`), MEMIT with its ``C`` loaded once, AlphaEdit
    with a fresh state; ``zs`` are their precomputed target residuals (``factlens.editing.memit.compute_zs``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method.startswith("ROME"):
        hp = replace(rome_hparams or rome.default_hparams(model),
                     unprefixed_key_in_update=method == "ROME (original key mix)")
        C = second_moment.layer_stats(model, hp.layer, corpus=hp.mom2_corpus, samples=hp.mom2_samples,
                                      progress=False)
        return rome.ROME(hp, stats=C, name=method)
    ahp = alphaedit_hparams or alphaedit.default_hparams(model)
    if method == "MEMIT":
        m = ahp.memit
        stats = {l: second_moment.layer_stats(model, l, corpus=m.mom2_corpus, samples=m.mom2_samples, progress=False)
                 for l in m.layers}
        return memit.MEMIT(m, stats=stats, zs=dict(zs or {}))
    return alphaedit.AlphaEdit(ahp, zs=dict(zs or {}))


# --------------------------------------------------------------------------- measurements


@dataclass
class Yardstick:
    """The fixed measurements taken at every checkpoint of every method: a sample of LAMA facts no
    edit touches, the prompts text is generated from, and how many tokens.

    What it measures of a model is kept by the model's weights (``measured``, by ``View.cache_key``):
    a model measured again as it was, as every method's sequence starts from the unedited model,
    is measured once. Keep a yardstick's facts and prompts as they are once it has measured.

    LAMA P@1 is ``factlens.probing.lama.probe``'s (``k=1``, LAMA's common vocabulary; facts it skips are
    left out), computed by a ``factlens.probing.repeated.RepeatedProbe`` prepared once per model: the
    prompts tokenized once, the unembedding's candidate rows only, and the blocks below the lowest
    one an edit changed not run again. The cases' prompts scored by :func:`outcomes` keep their forward
    passes here too (``recorded``, a ``factlens.probing.repeated.RecordedRows`` per model).
    """

    lama: list[LamaFact]
    generation_prompts: list[str]
    generate_tokens: int = 20
    seed: int = 0
    measured: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, init=False, repr=False, compare=False)
    probes: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, init=False, repr=False,
                                              compare=False)  # View -> RepeatedProbe
    recorded: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, init=False, repr=False,
                                                compare=False)  # View -> RecordedRows (the cases' prompts)

    def __post_init__(self) -> None:
        if not self.lama or not self.generation_prompts:
            raise ValueError("a yardstick needs LAMA facts and generation prompts (at least one of each)")

    @torch.no_grad()
    def measure(self, model: Model) -> dict[str, np.ndarray]:
        """On the model as it is now (measured once per model and weights): ``lama``, whether each LAMA
        fact is answered first (P@1), and ``entropy``, ×100 per generation prompt."""
        v = view(model)
        key = json.dumps(v.cache_key(), sort_keys=True)
        if key not in self.measured:
            if v not in self.probes:
                self.probes[v] = RepeatedProbe(model, self.lama)
            first = self.probes[v].answered_first(model)
            texts = generate(model, self.generation_prompts, self.generate_tokens, top_k=5, seed=self.seed)
            entropy = [100 * evaluation.ngram_entropy(p + t) for p, t in zip(self.generation_prompts, texts)]
            self.measured[key] = {"lama": first, "entropy": np.array(entropy)}
        return {name: values.copy() for name, values in self.measured[key].items()}


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
    yardstick's LAMA facts answered first) and ``entropy`` (×100, per generation prompt):
    :meth:`Yardstick.measure`, once per model and weights."""
    out: dict[str, np.ndarray] = {"edit": np.zeros(0, bool), "neighbour": np.zeros(0, bool)}
    if cases:
        rewrite = [c.prompt.format(c.subject) for c in cases]
        neighbours = [(p, c.target_new, true) for c in cases for p, true in c.neighborhood_prompts]
        prompts = [p for p in rewrite for _ in (0, 1)] + [p for p, _, _ in neighbours for _ in (0, 1)]
        targets = [t for c in cases for t in (c.target_new, c.target_true)]
        targets += [t for _, new, true in neighbours for t in (new, true)]
        v = view(model)
        if v not in yardstick.recorded:
            yardstick.recorded[v] = RecordedRows()
        lp = evaluation.target_log_probs(model, prompts, targets, batch_size=64,
                                         recorded=yardstick.recorded[v]).view(-1, 2).numpy()
        out["edit"] = lp[: len(cases), 0] > lp[: len(cases), 1]
        out["neighbour"] = lp[len(cases):, 1] > lp[len(cases):, 0]
    return {**out, **yardstick.measure(model)}


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
    record: Edit
    edit_seconds: list[float] = field(default_factory=list)   # per edit (ROME) or batch: each edit's info["seconds"]
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


def run_sequence(model: Model, cases: Sequence[Any], editor: Editor, yardstick: Yardstick, *, every: int = 25,
                 batch_size: int | None = None, flag_ratio: float = 0.1, keep_edits: bool = False,
                 on_checkpoint: Callable[[pd.DataFrame], None] | None = None,
                 progress: bool = True) -> SequenceRun:
    """Edit ``cases`` (CounterFact cases) into ``model`` one batch after another with ``editor`` and
    :func:`measure` before the first edit and after every ``every`` edits.

    A batch is ``batch_size`` cases (default ``every``, which it must divide), or fewer where the editor
    writes fewer per call (``editor.max_requests``: ROME one). An edit that reports a ROME
    ``Forecast`` (``edit.info["forecast"]``) adds a row to the run's forecasts, flagged when its applied
    update exceeds ``flag_ratio`` times ``‖W‖``. ``on_checkpoint`` receives the curve so far after each
    measurement (for a live plot). The edits are taken into one record (``Edit.extend``); at the end the
    whole sequence is undone (bit for bit) unless ``keep_edits``; ``run.record.undo()`` undoes it later.
    An editor that keeps state across calls (AlphaEdit) keeps it after the run: use a fresh one per run.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("no cases to edit: give CounterFact cases (factlens.data.counterfact())")
    if every < 1:
        raise ValueError(f"every must be a positive number of edits, got {every}")
    size = batch_size or every
    if editor.max_requests is not None:
        size = min(size, editor.max_requests)
    if every % size:
        raise ValueError(f"batch_size {size} must divide every ({every}): measurements fall between batches")
    requests = [EditRequest.from_counterfact(c) for c in cases]
    record = Edit(model, editor.name)

    rows, forecasts, edit_seconds = [], [], []
    start = time.perf_counter()
    last = outcomes(model, [], yardstick)
    rows += _rows(0, summarize(last, 0, yardstick.seed))
    measure_seconds = time.perf_counter() - start
    if on_checkpoint:
        on_checkpoint(pd.DataFrame(rows))
    bar = tqdm(total=len(cases), desc=f"{editor.name}, sequential", disable=not progress)
    try:
        for first in range(0, len(cases), size):
            chunk = requests[first:first + size]
            step = editor(model, chunk)
            edit_seconds.append(step.info["seconds"])
            record.extend(step)
            fc = step.info.get("forecast")
            if fc is not None:
                forecasts.append({"n_edits": first + 1, "case_id": cases[first].case_id, **asdict(fc),
                                  "flagged": fc.applied_norm > flag_ratio, "denominator_ratio": fc.denominator_ratio})
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
    settings = {"method": editor.name, "n_edits": len(cases), "every": every, "batch_size": size,
                "flag_ratio": flag_ratio, "layers": record.layers}
    return SequenceRun(editor.name, pd.DataFrame(rows), pd.DataFrame(forecasts), record, edit_seconds,
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
