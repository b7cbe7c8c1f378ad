"""Attribution patching: causal tracing's restoration effects to first order, from one backward pass
(Nanda 2023, "Attribution Patching"; Syed et al. 2023, "Attribution Patching Outperforms Automated
Circuit Discovery"; Kramár et al. 2024, "AtP*").

Causal tracing (:mod:`factlens.locating.tracing`, Meng et al. 2022, §2.1) measures the indirect
effect of every state by re-running the model above it:

    IE_i^(l) = P*,clean h_i^(l)[o] − P*[o],

one (partial) forward pass per token ``i``, layer ``l`` and noise sample. Attribution patching
replaces each re-run by the first-order Taylor expansion of ``P*[o]`` around the corrupted run
(Syed et al. 2023, eq. 2; Kramár et al. 2024, eq. 4, "AtP"):

    IE_i^(l) ≈ (h_i^(l) − h*_i^(l)) · ∂P*[o] / ∂h*_i^(l),

``h`` the clean state, ``h*`` the corrupted one, the gradient taken in the corrupted run, per noise
sample and averaged over the samples as ``P*`` is. One backward pass gives that gradient at every
state at once, so the whole (token × layer) map costs one clean forward pass, one corrupted forward
pass and one backward pass per noise sample (the clean prompt and its ``S`` corrupted copies go as one
batch), against a re-run per site. For ``kind="mlp"`` / ``"attn"`` the trace restores the outputs of a
window of layers together, and the estimate of a window is the sum of its layers' terms
(:func:`window_sums`). That sum is the first-order estimate of restoring each of the window's outputs
*alone*, added up; the joint restoration differs from it already at first order, by the paths from
one restored output through a later one of the window at the same token (the joint restoration
sets the later output, cutting them; each gradient here runs through them). With ``window=1`` the
estimate is the first-order expansion of the trace itself and meets it as the noise shrinks; with
a wider window it does not, whatever the noise (the tests show both).

The metric is the trace's own: the probability ``P[o]`` of the answer token ``o`` (the clean run's top
token, or the first token of a target), not its logarithm. The corruption is the trace's too
(:func:`factlens.locating.tracing.corruption`: noise ``ν = 3σ`` on the subject's embeddings, the
settings' samples and seed), so an estimate and :func:`factlens.locating.tracing.trace` with the
same :class:`~factlens.locating.tracing.TraceSettings` describe the same prompts, noise and samples.

Where the two differ, the model is not linear between ``h*`` and ``h``: a restoration that moves
an attention pattern or the answer's softmax out of saturation is underestimated (Kramár et al.
2024, §3.1, the failure AtP* corrects for attention; not done here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from scipy.stats import spearmanr

from factlens.core.models import Model, view
from factlens.core.view import View
from factlens.locating.tracing import (
    Trace,
    TraceSettings,
    corruption,
    restoration_can_matter,
    restored_layers,
    trace,
)

#: The default settings: the paper's causal trace (hidden states, 10 noise samples, ν = 3σ, seed 0).
PAPER_TRACE = TraceSettings()

_SITES: dict[str, Callable[[View, int], str]] = {
    "hidden": View.resid_post_hook, "mlp": View.mlp_out_hook, "attn": View.attn_out_hook}


def site_hook(v: View, kind: str, layer: int) -> str:
    """Where the state of ``kind`` at ``layer`` is read: ``h^(l)`` (the block's output), or the MLP /
    attention output the block adds to the residual stream (the states the trace restores)."""
    return _SITES[kind](v, layer)


def window_sums(terms: torch.Tensor, kind: str, window: int) -> torch.Tensor:
    """The first-order effect of each restoration (token ``i``, layer ``l``) from the per-layer terms
    ``terms[i, k]``: ``Σ_{k ∈ restored_layers(kind, l)} terms[i, k]`` (the window around ``l`` for
    ``"mlp"`` / ``"attn"``, ``l`` alone for ``"hidden"``)."""
    n_layers = terms.shape[1]
    return torch.stack([terms[:, restored_layers(kind, l, window, n_layers)].sum(1) for l in range(n_layers)], 1)


def attribution_trace(model: Model, prompt: str, subject: str, settings: TraceSettings = PAPER_TRACE, *,
                      target: str | None = None, delta: torch.Tensor | None = None) -> Trace:
    """The first-order estimate of :func:`factlens.locating.tracing.trace` (attribution patching).

    Returns a :class:`~factlens.locating.tracing.Trace` of the same prompt, tokens, subject span, answer,
    ``P[o]`` and ``P*[o]`` as the trace, with ``scores[i, l] = P*[o] + IE~_i^(l)``, the estimated
    restored probability (so ``indirect_effect`` is the estimate ``IE~``; it may leave [0, 1]):

        IE~_i^(l) = 1/S Σ_s Σ_{k ∈ restored_layers(l)} (h_i^(k) − h*_{s,i}^(k)) · ∂P*_s[o] / ∂h*_{s,i}^(k).

    Sites whose restoration cannot change the prediction (``restoration_can_matter``: tokens before
    the subject, the last layer's hidden states at other tokens) score exactly ``P*[o]``, as in the
    trace. ``settings`` and ``delta`` as for ``trace`` (the same noise when given the same);
    severed paths (``settings.sever``) are not estimated.
    """
    if settings.sever is not None:
        raise ValueError("attribution patching estimates plain restorations; severed paths (sever=) need the trace")
    v = view(model)
    settings = settings.for_depth(v.n_layers)
    span = v.subject_span(prompt, subject)
    if delta is None:
        delta = corruption(model, prompt, subject, settings)
    settings = replace(settings, samples=delta.shape[0])
    S, L = delta.shape[0], v.n_layers
    ids = v.batch([prompt]).ids.expand(S + 1, -1)
    noise = torch.cat([torch.zeros_like(delta[:1]), delta])

    def corrupt(x: torch.Tensor, hook: object) -> torch.Tensor:
        x = x.detach().clone()
        x[:, span.start:span.stop] += noise.to(x.dtype)
        return x.requires_grad_()

    sites = [site_hook(v, settings.kind, l) for l in range(L)]
    with v.frozen_except(()), torch.enable_grad():
        got = v.capture(ids, [*sites, v.final_hook], fwd_hooks=[(v.embed_hook, corrupt)])
        last = got[v.final_hook][:, -1]
        log_z, top = v.log_normalizer(last)
        answer_id = int(top[0]) if target is None else v.target_ids(target)[0]
        probs = v.token_log_probs(last, [answer_id], log_z=log_z)[:, 0].exp()
        grads = torch.autograd.grad(probs[1:].sum(), [got[s] for s in sites], allow_unused=True)
    # terms[i, k] = 1/S Σ_s (h_i^(k) − h*_{s,i}^(k)) · ∂P*_s/∂h*_{s,i}^(k): row 0 of each state is the clean run
    terms = torch.stack([
        torch.zeros(ids.shape[1], dtype=torch.float64) if g is None else
        ((got[s][:1] - got[s][1:]).detach() * g[1:]).sum(-1).mean(0).double().cpu()
        for s, g in zip(sites, grads)], 1)
    effects = window_sums(terms, settings.kind, settings.window)
    n_tokens = ids.shape[1]
    for i in range(n_tokens):
        for l in range(L):
            if not restoration_can_matter(settings.kind, i, l, span, n_tokens, L):
                effects[i, l] = 0.0
    probs = probs.detach().double().cpu()
    clean_prob, corrupted_prob = float(probs[0]), float(probs[1:].mean())
    return Trace(prompt=prompt, subject=subject, kind=settings.kind, tokens=v.str_tokens(prompt), subject_span=span,
                 answer=v.tokenizer.decode([answer_id]), answer_id=answer_id, clean_prob=clean_prob,
                 corrupted_prob=corrupted_prob, scores=(corrupted_prob + effects).float(),
                 settings={**settings.record(), "estimate": "attribution patching (first order)"})


# --------------------------------------------------------------------------- estimate against trace


@dataclass(frozen=True)
class Agreement:
    """How an estimated map agrees with the real trace over the sites that can matter.

    Attributes:
        spearman: Spearman's rank correlation of the two indirect-effect maps.
        sites: how many (token, layer) sites were compared (those ``restoration_can_matter`` and
            traced in both; the others are ``P*[o]`` in both by construction).
        estimate_peak, trace_peak: (token, layer) of each map's largest indirect effect.
    """

    spearman: float
    sites: int
    estimate_peak: tuple[int, int]
    trace_peak: tuple[int, int]

    @property
    def same_peak(self) -> bool:
        """Whether both maps peak at the same token and layer."""
        return self.estimate_peak == self.trace_peak

    @property
    def same_peak_token(self) -> bool:
        return self.estimate_peak[0] == self.trace_peak[0]

    @property
    def layer_gap(self) -> int:
        """``|l_estimate − l_trace|`` between the two peaks."""
        return abs(self.estimate_peak[1] - self.trace_peak[1])


def agreement(estimate: Trace, real: Trace) -> Agreement:
    """Compare an estimated map (:func:`attribution_trace`) with the real trace of the same prompt and kind."""
    if (estimate.prompt, estimate.kind, estimate.scores.shape) != (real.prompt, real.kind, real.scores.shape):
        raise ValueError(f"the maps must be of the same prompt and kind: {estimate.prompt!r} ({estimate.kind}, "
                         f"{tuple(estimate.scores.shape)}) against {real.prompt!r} ({real.kind}, "
                         f"{tuple(real.scores.shape)})")
    n_tokens, n_layers = real.scores.shape
    can = torch.tensor([[restoration_can_matter(real.kind, i, l, real.subject_span, n_tokens, n_layers)
                         for l in range(n_layers)] for i in range(n_tokens)])
    sites = can & ~torch.isnan(estimate.scores) & ~torch.isnan(real.scores)
    if int(sites.sum()) < 2:
        raise ValueError("fewer than two sites can be compared (trace more positions)")
    ours, theirs = estimate.indirect_effect[sites].double(), real.indirect_effect[sites].double()
    where = sites.nonzero()

    def peak(values: torch.Tensor) -> tuple[int, int]:
        i, l = where[int(values.argmax())].tolist()
        return i, l

    rho = spearmanr(ours.numpy(), theirs.numpy()).statistic
    return Agreement(spearman=float(rho), sites=int(sites.sum()), estimate_peak=peak(ours), trace_peak=peak(theirs))


@dataclass(frozen=True)
class Comparison:
    """An attribution-patching map and the real trace of one prompt (same noise), their agreement and times."""

    estimate: Trace
    trace: Trace
    agreement: Agreement
    estimate_seconds: float
    trace_seconds: float

    @property
    def speedup(self) -> float:
        """How many times faster the estimate was than the trace."""
        return self.trace_seconds / self.estimate_seconds

    @property
    def shortfall(self) -> float:
        """``IE − IE~`` at the trace's strongest site: how much the first-order estimate misses where the real
        restoration matters most (positive: an underestimate, Kramár et al. 2024's false negatives)."""
        i, l = self.agreement.trace_peak
        return float(self.trace.indirect_effect[i, l] - self.estimate.indirect_effect[i, l])


def compare(model: Model, prompt: str, subject: str, settings: TraceSettings = PAPER_TRACE, *,
            target: str | None = None) -> Comparison:
    """:func:`attribution_trace` and :func:`factlens.locating.tracing.trace` of ``prompt`` with one noise
    draw (``corruption(settings)``, handed to both), each timed (wall clock, the noise drawn beforehand)."""
    delta = corruption(model, prompt, subject, settings.for_depth(view(model).n_layers))
    start = time.perf_counter()
    estimate = attribution_trace(model, prompt, subject, settings, target=target, delta=delta)
    middle = time.perf_counter()
    real = trace(model, prompt, subject, settings, target=target, delta=delta)
    end = time.perf_counter()
    return Comparison(estimate, real, agreement(estimate, real), middle - start, end - middle)
