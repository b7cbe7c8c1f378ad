"""Knowledge neurons (Dai et al. 2022) as an editing baseline, the "KN" row of ROME's Table 4.

**Attribution** (Dai et al., eq. 3-4). The knowledge neurons of a fact are the intermediate FFN
neurons whose activation carries the model's answer. With ``w̄_i^l`` neuron ``i``'s activation in
layer ``l`` at the position that predicts the object (for a left-to-right model, the prompt's last
token; here the MLP key, ``View.key_hook``), its integrated gradient is::

    Attr(w_i^l) = w̄_i^l ∫₀¹ ∂P(y | x, w^l = α w̄^l) / ∂w_i^l dα  ≈  (w̄_i^l / m) Σ_{k=0}^{m-1} ∂P(y | x, α_k w̄^l) / ∂w_i^l

with ``α_k`` evenly spaced in [0, 1] (``m = 20``; the layer's neurons are scaled together, as the
paper's code and ROME's baseline do). The knowledge neurons are those with
``Attr > t · max Attr`` (``t = 0.2``, ROME's ``adaptive_threshold``; the paper's refinement over
paraphrases is off in ROME's configuration, ``refine: false``).

**Editing** (Dai et al., section 5.1). Each knowledge neuron's value slot (its row of the MLP output
matrix ``V``, the matrix ROME edits) is moved from the old object's word embedding to the new
one's: ``v_i ← v_i − λ₁ E[o] + λ₂ E[o*]`` with ``λ₁ = λ₂ = 2`` (ROME's baseline code; ``o`` is the
model's top prediction before the edit, and a target of several tokens adds each token's embedding
once).

:class:`KnowledgeNeurons` is the editor (``factlens.editing.requests.Editor``): it takes the same
``EditRequest`` as ROME and returns the ``Edit`` that restores every changed layer bit for bit. Where we differ
from ROME's baseline code: the attributed answer ``y`` is the model's own top prediction after the
prompt (the request carries no true object; on a fact the model knows, it is the true object),
and the neuron is the MLP's activation after the nonlinearity (Dai et al.'s definition; ROME's
GPT-2 code hooks the input projection's output).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch

from factlens.core.models import Model, view
from factlens.editing.requests import Edit, Editor, EditRequest


@dataclass(frozen=True)
class KNHyperParams:
    """Knowledge neurons' settings (ROME's ``hparams/KN/gpt2-xl.json``).

    Attributes:
        steps: ``m``, the integrated gradient's Riemann steps. ROME: 20.
        adaptive_threshold: ``t``: a neuron is a knowledge neuron when its attribution exceeds
            ``t`` times the largest. ROME: 0.2 (the paper: 0.2 to 0.3).
        scale: ``λ₁ = λ₂``, the multiple of the embeddings moved into each value slot. ROME's code: 2.
        batch_size: at most this many integrated-gradient steps per re-run.
    """

    steps: int = 20
    adaptive_threshold: float = 0.2
    scale: float = 2.0
    batch_size: int = 120

    def __post_init__(self) -> None:
        if self.steps < 1 or not 0 < self.adaptive_threshold <= 1:
            raise ValueError(f"steps must be >= 1 and adaptive_threshold in (0, 1], got {self.steps}, "
                             f"{self.adaptive_threshold}")


def _replace_first(values: torch.Tensor):
    """A hook that writes ``values`` at the first re-run position of every row."""
    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        x[:, 0] = values.to(x.dtype)
        return x
    return hook


def attribution(model: Model, prompt: str, answer_id: int, *, steps: int = 20, layers: list[int] | None = None,
                batch_size: int = 120) -> torch.Tensor:
    """Integrated-gradient attributions of every MLP neuron to ``P(answer | prompt)`` at the prompt's
    last token (Dai et al., eq. 3-4): ``[n_layers, d_mlp]`` (rows of ``layers`` only; others zero).

    Scaling layer ``l``'s activations at the last token changes nothing below ``l`` and nothing at
    earlier positions, so the prompt is run once (``View.record``) and each of the ``steps`` rows of
    layer ``l`` re-runs only the last position from block ``l`` up (``View.run_from``).
    """
    v = view(model)
    layers = list(range(v.n_layers)) if layers is None else [v.check_layer(l) for l in layers]
    ids = v.batch([prompt]).ids
    last = ids.shape[1] - 1
    recording = v.record(ids, names=[v.key_hook(l) for l in layers], layers=range(min(layers), v.n_layers))
    alphas = torch.linspace(0, 1, steps, device=ids.device)
    scores = torch.zeros(v.n_layers, v.d_mlp)
    with v.frozen_except([]):
        for layer in layers:
            baseline = recording.captured[v.key_hook(layer)][0, last].float()
            for chunk in alphas.split(batch_size):
                scaled = (chunk[:, None] * baseline).requires_grad_(True)
                hidden = v.run_from(recording, layer, start=last, rows=[0] * len(chunk),
                                    fwd_hooks=[(v.key_hook(layer), _replace_first(scaled))])
                probs = v.unembed(hidden[:, -1:])[:, 0].float().softmax(-1)[:, answer_id]
                (grad,) = torch.autograd.grad(probs.sum(), scaled)
                scores[layer] += grad.sum(0).detach().cpu()
            scores[layer] *= baseline.cpu() / steps
    return scores


def knowledge_neurons(scores: torch.Tensor, adaptive_threshold: float = 0.2) -> list[tuple[int, int]]:
    """``(layer, neuron)`` of every attribution above ``adaptive_threshold`` times the largest, best first."""
    top = float(scores.max())
    if top <= 0:
        return []
    picked = (scores > adaptive_threshold * top).nonzero().tolist()
    return sorted(((int(l), int(i)) for l, i in picked), key=lambda n: -float(scores[n[0], n[1]]))


@dataclass(eq=False)
class KnowledgeNeurons(Editor):
    """Knowledge neurons as an editor: ``KnowledgeNeurons(hparams)(model, [request])`` attributes the model's
    answer to the prompt, moves the knowledge neurons' value slots from its embedding to the target's, and
    returns the ``Edit`` (``.undo()`` reverts).

    ``edit.info`` holds the ``neurons`` (layer, index), the old object token (``old_token``), their
    ``attributions``, the ``seconds`` taken and the ``hparams``. A fact with no positively attributed
    neuron changes nothing.
    """

    hparams: KNHyperParams = field(default_factory=KNHyperParams)
    name: str = "KN"
    max_requests: ClassVar[int | None] = 1

    def write(self, model: Model, requests: list[EditRequest]) -> Edit:
        (request,) = requests
        v = view(model)
        hp = self.hparams
        target = v.target_ids(request.target)
        start = time.perf_counter()
        ids = v.batch([request.text]).ids
        with torch.no_grad():
            old = int(v.logits_at(ids, [ids.shape[1] - 1])[0].argmax())
        scores = attribution(model, request.text, old, steps=hp.steps, batch_size=hp.batch_size)
        neurons = knowledge_neurons(scores, hp.adaptive_threshold)
        layers = sorted({l for l, _ in neurons})
        record = Edit(model, self.name, [request], layers=layers)
        E = v.embedding_matrix().detach()
        new = E[target].sum(0) if len(target) > 1 else hp.scale * E[target[0]]
        move = new - hp.scale * E[old]
        with torch.no_grad():
            for layer in layers:
                values = v.mlp_out_weight(layer).detach().clone()
                rows = [i for l, i in neurons if l == layer]
                values[rows] += move.to(values)
                v.set_mlp_out_weight(layer, values)
        record.info.update(neurons=neurons, old_token=v.tokenizer.decode([old]),
                           attributions=[float(scores[l, i]) for l, i in neurons],
                           seconds=time.perf_counter() - start, hparams=asdict(hp))
        return record
