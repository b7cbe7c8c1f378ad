"""The two log-probability terms of ROME's ``v*`` loss (Meng et al. 2022, eq. 4) and their gradient,
in one pass over the unembedding.

Eq. 4 reads the next-token distribution ``P = softmax(W h + b)`` at a few positions: ``log P[o*_t]``
at each target position (the NLL term) and the whole of ``P`` at the essence position (the KL term
against the unedited model's ``Q``). With Gemma's 262,144 × 640 unembedding the straightforward
computation (logits, a log-softmax, autograd: ``v_star.RewritePrompts.log_probs``) reads ``W`` twice
per step, once forward and once backward, and writes out the logits and their gradient. Here each
chunk of the vocabulary is read once, while it is in the processor's cache, for both:

* the logits of the chunk, ``z_c = W_c h`` (+ ``b_c``), and a running log-sum-exp per row (a
  running maximum ``m``, ``S = Σ_j exp(z_j − m)`` rescaled by ``exp(m_old − m_new)`` when ``m`` grows);
* ``B = Σ_j exp(z_j − m) W_j``, rescaled the same way, so that ``E_P[W] = B / S`` at the end. The
  gradient of ``log P[t] = z_t − log Z`` with respect to ``h`` is ``W_t − E_P[W]``.
* for the essence row, with ``d_j = z_j − z⁰_j`` (``z⁰``: the unedited logits, kept from the first
  evaluation, the only time the whole of ``Q`` is needed): ``KL(P ‖ Q) = E_P[d] − (log Z − log Z⁰)``
  and its gradient ``Σ_j P_j (d_j − E_P[d]) W_j``, from one more accumulated row ``Σ_j exp(z_j − m) d_j W_j``
  (``∂KL/∂z_j = P_j (log P_j − log Q_j − KL)``); ``KL(Q ‖ P) = −E_Q[d] + (log Z − log Z⁰)`` with
  gradient ``E_P[W] − E_Q[W]`` (``∂/∂z_j = P_j − Q_j``).

At the first evaluation ``d = 0`` exactly, so the KL term and its gradient are exactly 0, as in the
straightforward computation. Otherwise the numbers equal it up to the order of float summation
(``tests/test_v_star.py``). The weight may be a bfloat16 copy (``ROMEHyperParams.unembedding_bf16``):
products in bfloat16, every sum in float32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

#: Vocabulary rows per chunk: a chunk of Gemma's unembedding (4,096 × 640 float32, 10 MiB) stays in the
#: cache between its two products (``bench/README.md``: 2,048 to 16,384 measured).
VOCAB_CHUNK = 4096


@dataclass
class Essence:
    """The unedited model's distribution at the essence position, ``log Q = z⁰ − log Z⁰``, filled by the
    first evaluation (:func:`rewrite_terms` with an empty one) and read by the later ones."""

    logits: torch.Tensor | None = None       # z⁰ [d_vocab], float32
    log_z: torch.Tensor | None = None        # log Z⁰, a scalar
    q: torch.Tensor | None = None            # Q [d_vocab] (for KL(Q ‖ P) only)
    mean_row: torch.Tensor | None = None     # E_Q[W] [d_model] (for KL(Q ‖ P) only)

    @property
    def empty(self) -> bool:
        return self.logits is None


def _product(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x wᵀ (+ bias)`` for ``x`` [n, k] with few rows and ``w`` [m, k] (or a transposed view): through
    oneDNN where PyTorch has it, which on an AMD EPYC took a third to a half of MKL's time for these
    shapes (``bench/README.md``), the same float32 arithmetic; ``torch.nn.functional.linear`` otherwise."""
    if x.device.type == "cpu" and _onednn_linear():
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
    return torch.nn.functional.linear(x, w, bias)


@functools.cache
def _onednn_linear() -> bool:
    """Whether PyTorch's oneDNN linear (an operator of its compiler's, not a public API) is here and
    computes ``x wᵀ + b`` on a small example, in both layouts of ``w``."""
    try:
        x, w, b = torch.randn(3, 5), torch.randn(7, 5), torch.randn(7)
        for weight in (w, w.T.contiguous().T):
            got = torch.ops.mkldnn._linear_pointwise(x, weight, b, "none", [], "")
            if not torch.allclose(got, torch.nn.functional.linear(x, weight, b), atol=1e-5):
                return False
        return True
    except (AttributeError, RuntimeError):
        return False


class _RewriteTerms(torch.autograd.Function):
    """``(log P[t_i] for each target row [R − 1], KL of the last row)`` of final-normed states ``h``
    [R, d_model]; the gradient with respect to ``h`` is computed in the forward pass (see the module)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, essence: Essence, edited_first: bool, chunk: int):
        n, d_vocab = hidden.shape[0], weight.shape[0]
        first_call = essence.empty
        h = hidden.detach().to(weight.dtype)
        m = torch.full((n,), -torch.inf, device=hidden.device)
        s = torch.zeros(n, device=hidden.device)
        rows = torch.zeros(n + 1, hidden.shape[1], device=hidden.device)  # B of each row, then Σ e d W
        s_d = hidden.new_zeros(())                                       # Σ exp(z_j − m) d_j, essence row
        q_d = hidden.new_zeros(())                                       # Σ Q_j d_j
        target_logit = torch.empty(n - 1, device=hidden.device)
        by_chunk = [[(i, t - first) for i, t in enumerate(targets.tolist()) if first <= t < first + chunk]
                    for first in range(0, d_vocab, chunk)]
        kept = torch.empty(d_vocab, device=hidden.device) if first_call else None
        for k, first in enumerate(range(0, d_vocab, chunk)):
            w = weight[first:first + chunk]
            z = _product(h, w, None if bias is None else bias[first:first + chunk]).float()  # [R, C]
            for i, j in by_chunk[k]:
                target_logit[i] = z[i, j]
            new_m = torch.maximum(m, z.max(1).values)
            scale = (m - new_m).exp()
            e = (z - new_m[:, None]).exp()                               # [R, C]
            s = s * scale + e.sum(1)
            if first_call:
                kept[first:first + chunk] = z[-1]
                d = None
            else:
                d = z[-1] - essence.logits[first:first + chunk]
                if not edited_first:
                    q_d = q_d + essence.q[first:first + chunk] @ d
            ed = e[-1] * d if d is not None and edited_first else torch.zeros_like(e[-1])
            s_d = s_d * scale[-1] + ed.sum()
            rows.mul_(torch.cat([scale, scale[-1:]])[:, None])
            rows += _product(torch.cat([e, ed[None]]).to(weight.dtype), w.T).float()
            m = new_m
        log_z = m + s.log()
        mean = rows[:n] / s[:, None]                                     # E_P[W] per row
        target_rows = weight[targets].float()
        if first_call:
            essence.logits, essence.log_z = kept, log_z[-1]
            if not edited_first:
                essence.q, essence.mean_row = (kept - log_z[-1]).exp(), mean[-1].clone()
            kl, kl_grad = hidden.new_zeros(()), torch.zeros_like(mean[-1])
        elif edited_first:
            mean_d = s_d / s[-1]
            kl = mean_d - (log_z[-1] - essence.log_z)
            kl_grad = (rows[n] - mean_d * rows[n - 1]) / s[-1]
        else:
            kl = -q_d + (log_z[-1] - essence.log_z)
            kl_grad = mean[-1] - essence.mean_row
        ctx.save_for_backward(target_rows - mean[:-1], kl_grad)
        return target_logit - log_z[:-1], kl

    @staticmethod
    def backward(ctx: Any, grad_log_probs: torch.Tensor, grad_kl: torch.Tensor):
        target_grad, kl_grad = ctx.saved_tensors
        grad = torch.cat([grad_log_probs[:, None] * target_grad, (grad_kl * kl_grad)[None]])
        return grad, None, None, None, None, None, None


def rewrite_terms(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  essence: Essence, *, edited_first: bool = True,
                  chunk: int = VOCAB_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4's terms from the final-normed states ``hidden`` [R, d_model], target rows first and the
    essence row last: ``log P[targets[i] | row i]`` [R − 1] and ``KL(P ‖ Q)`` of the last row
    (``edited_first``; else ``KL(Q ‖ P)``), a scalar, against the unedited ``Q`` kept in ``essence``
    (filled by the first call, whose KL is 0). ``weight`` [d_vocab, d_model] and ``bias``: the
    unembedding (``View.unembedding_map``), or ``weight`` a lower-precision copy. Differentiable with
    respect to ``hidden`` only; one pass over ``weight``, ``chunk`` rows at a time."""
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("rewrite_terms differentiates with respect to the hidden states only; "
                         "freeze the unembedding (View.frozen_except)")
    if hidden.shape[0] != len(targets) + 1:
        raise ValueError(f"{hidden.shape[0]} rows for {len(targets)} targets: "
                         "give the target rows, then the essence row")
    return _RewriteTerms.apply(hidden.float(), targets, weight, bias, essence, edited_first, chunk)


__all__ = ["VOCAB_CHUNK", "Essence", "rewrite_terms"]
