"""Aggregating memories (Geva et al. 2021, section 5): a layer composes its memories, and the
residual stream refines the prediction layer by layer.

* :func:`read_layers` runs prefixes and reads, at their last token, every layer's memory
  coefficients, the FF output's top token (Geva's projection, as the memories') and the
  residual's predictions before and after the FF (the logit lens);
* :func:`composition_counts` (section 5.1): is the layer's top token the token of some single
  active memory, counting every non-zero memory with its sign; :func:`mass_fraction`: how few
  memories carry most of the output;
* :func:`refinement_counts` (section 5.2): is the residual's top token already the final one,
  and when the FF changes it, to what;
* :func:`aggregation`: all of it per layer.

The memories themselves (coefficients, values and the tokens they promote) are in
:mod:`factlens.memories.keys`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from factlens.core.models import Model, view
from factlens.memories.keys import Corpus
from factlens.memories.values import ValueTokens, value_tokens


@dataclass
class LayerReadout:
    """Per example and layer, what section 5 needs (all [n_examples, n_layers] unless noted).

    ``coefficients``: [n, n_layers, d_mlp], the memory coefficients m; ``ff_top``: the top token
    of the FF output by Geva's projection, ``argmax(FF(x) E)`` with ``FF(x) = sum_i m_i v_i``
    (the value hook, before any norm), which section 5.1 compares with the memories' own;
    ``added_top``: the top token of what the block adds to the residual (Gemma: after its
    post-feedforward norm) through the logit lens; ``before_top``/``before_second``: the
    residual's top two tokens before the FF (after attention); ``after_top``: after it;
    ``final_top``: [n], the model's prediction. The residual is read with the logit lens
    (final norm, then unembedding).
    """

    coefficients: torch.Tensor
    ff_top: torch.Tensor
    added_top: torch.Tensor
    before_top: torch.Tensor
    before_second: torch.Tensor
    after_top: torch.Tensor
    final_top: torch.Tensor


@torch.no_grad()
def read_layers(model: Model, corpus: Corpus, prefixes: torch.Tensor, batch_size: int = 16,
                progress: bool = True) -> LayerReadout:
    """Run each prefix and read, at its last token, every layer's memories and predictions."""
    v = view(model)
    layers = range(v.n_layers)
    names = [h for l in layers for h in (v.key_hook(l), v.value_hook(l), v.mlp_out_hook(l), v.resid_post_hook(l))]
    parts: dict[str, list] = {n: [] for n in ("m", "ff", "added", "b1", "b2", "a1")}
    for s in tqdm(range(0, len(prefixes), batch_size), desc="reading layers", disable=not progress):
        batch = v.batch([corpus.prefix(t, p) for t, p in prefixes[s : s + batch_size].tolist()])
        acts = v.capture(batch.ids, names)
        at = (torch.arange(len(batch.ids), device=batch.ids.device), batch.last.to(batch.ids.device))
        m, ff, added, after = (torch.stack([acts[hook(l)][at] for l in layers], 1)  # [b, n_layers, ...]
                               for hook in (v.key_hook, v.value_hook, v.mlp_out_hook, v.resid_post_hook))
        before2 = v.to_logits(after - added).topk(2, -1).indices
        parts["m"].append(m.cpu())
        parts["ff"].append(v.unembed(ff).argmax(-1).cpu())
        parts["added"].append(v.to_logits(added).argmax(-1).cpu())
        parts["b1"].append(before2[..., 0].cpu())
        parts["b2"].append(before2[..., 1].cpu())
        parts["a1"].append(v.to_logits(after).argmax(-1).cpu())
    after_top = torch.cat(parts["a1"])
    return LayerReadout(torch.cat(parts["m"]), torch.cat(parts["ff"]), torch.cat(parts["added"]),
                        torch.cat(parts["b1"]), torch.cat(parts["b2"]), after_top, after_top[:, -1])


def composition_counts(coefficients: torch.Tensor, layer_top: torch.Tensor, tokens: ValueTokens) -> dict:
    """Section 5.1 for one layer: ``coefficients`` [n, d_mlp], ``layer_top`` [n] (the FF output's
    top token, Geva's projection), ``tokens`` the top tokens of the layer's values and of their
    negations (:func:`value_tokens`).

    A memory is active when m_i != 0 (it adds m_i v_i), and it promotes ``argmax(v_i E)`` when
    m_i > 0 and ``argmax(-v_i E)`` when m_i < 0 (a gated MLP's coefficients take both signs).
    ``composed``: the fraction of examples whose layer top token is the token of no active
    memory (``composed_examples`` per example, 1/0); ``single``: the rest (one memory already
    promotes it), with ``single_tokens`` counting which tokens those are; ``active_fraction``:
    the share of active memories; ``negative_fraction``: the share of memories with m_i < 0.
    """
    active = coefficients != 0
    matches = active & (tokens.promoted(coefficients) == layer_top[:, None])
    single = matches.any(1)
    return {
        "active_fraction": float(active.float().mean()),
        "negative_fraction": float((coefficients < 0).float().mean()),
        "composed": float((~single).float().mean()),
        "composed_examples": (~single).float(),
        "single": float(single.float().mean()),
        "single_tokens": Counter(layer_top[single].tolist()),
    }


def mass_fraction(coefficients: torch.Tensor, value_norms: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Per example ([n, d_mlp] coefficients), the smallest share of memories whose contributions
    ``|m_i| ||v_i||`` add up to ``mass`` of the layer's total: how concentrated the layer's output
    is (our measure, not the paper's; with a ReLU it would never exceed the non-zero share)."""
    size = (coefficients.abs() * value_norms).sort(-1, descending=True).values
    share = size.cumsum(-1) / size.sum(-1, keepdim=True).clamp(min=torch.finfo(size.dtype).tiny)
    return ((share < mass).sum(-1) + 1).float() / coefficients.shape[-1]


def large_fraction(coefficients: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Per example and layer (``coefficients`` [n, n_layers, d_mlp]), the share of memories whose
    coefficient is large: ``|m_i|`` above ``threshold`` times the largest ``|m_i|`` of that layer for
    that example. A stand-in for the paper's active memories (a ReLU's ``m_i > 0``): a gated GELU
    gives no exact zero, so "non-zero" counts every memory; a memory far below the layer's largest
    adds next to nothing, as a ReLU's zero adds nothing (the threshold is ours, not the paper's)."""
    size = coefficients.abs()
    top = size.amax(-1, keepdim=True).clamp(min=torch.finfo(size.dtype).tiny)
    return (size > threshold * top).float().mean(-1)


def composition_matrix(agg: dict[str, dict]) -> tuple[list[int], torch.Tensor]:
    """The layers whose composition :func:`aggregation` counted and, per example and layer, 1 where the
    layer's top token is the token of no single active memory: ``(layers, [n_examples, n_layers])``."""
    layers = sorted(agg["composed_examples"])
    return layers, torch.stack([agg["composed_examples"][l] for l in layers], 1)


def veto_counts(readout: LayerReadout) -> torch.Tensor:
    """Per example, over every layer: ``[changed, to the FF's own top]``, the number of layers where the
    FF changes the residual's top token and, of those, where the new top is the FF's own top token
    (:func:`refinement_counts`, counted per example so that examples are the units)."""
    changed = readout.after_top != readout.before_top
    to_ff = changed & (readout.after_top == readout.added_top)
    return torch.stack([changed.sum(1), to_ff.sum(1)], 1).double()


def refinement_counts(before_top: torch.Tensor, before_second: torch.Tensor, after_top: torch.Tensor,
                      ff_top: torch.Tensor, final_top: torch.Tensor) -> dict[str, float]:
    """Section 5.2 for one layer, all tensors [n]:

    ``final``: fraction whose residual top token (after the layer) is already the model's
    final prediction; ``changed``: fraction where the FF changes the residual's top token;
    among those, the new top is the FF's own top (``to_ff_top``), the residual's runner-up
    before the FF (``to_runner_up``; the "veto"), or another token (``to_other``); the three
    sum to 1 (the FF's top wins when it is also the runner-up).
    """
    changed = after_top != before_top
    n_changed = int(changed.sum())
    to_ff = changed & (after_top == ff_top)
    to_second = changed & ~to_ff & (after_top == before_second)
    frac = (lambda mask: float(mask.sum()) / n_changed) if n_changed else (lambda mask: float("nan"))
    return {
        "final": float((after_top == final_top).float().mean()),
        "changed": float(changed.float().mean()),
        "to_ff_top": frac(to_ff),
        "to_runner_up": frac(to_second),
        "to_other": frac(changed & ~to_ff & ~to_second),
    }


def aggregation(model: Model, readout: LayerReadout, composition_layers: Iterable[int] | None = None,
                progress: bool = True) -> dict[str, dict]:
    """Per layer ``{measure: {layer: value}}``: :func:`refinement_counts` (the residual, with what
    the block adds as the FF's top), :func:`composition_counts` for ``composition_layers``
    (default: all), and ``mass_fraction``, the mean of :func:`mass_fraction`.

    Composition needs the top tokens of all the layer's values (:func:`value_tokens`, cached):
    a [d_mlp, d_model] x [d_model, d_vocab] product, the costly part on a CPU.
    """
    v = view(model)
    out: dict[str, dict] = {}
    for l in range(v.n_layers):
        ref = refinement_counts(readout.before_top[:, l], readout.before_second[:, l], readout.after_top[:, l],
                                readout.added_top[:, l], readout.final_top)
        for name, value in ref.items():
            out.setdefault(name, {})[l] = value
    layers = range(v.n_layers) if composition_layers is None else composition_layers
    for l in tqdm(list(layers), desc="value tokens", disable=not progress):
        comp = composition_counts(readout.coefficients[:, l], readout.ff_top[:, l], value_tokens(model, l))
        norms = v.mlp_out_weight(l).detach().norm(dim=-1).cpu()
        comp["mass_fraction"] = float(mass_fraction(readout.coefficients[:, l], norms).mean())
        for name, value in comp.items():
            out.setdefault(name, {})[l] = value
    return out
