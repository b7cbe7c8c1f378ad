"""The fine-tuning baselines of the ROME paper (Meng et al. 2022, section 4.2): FT and FT+L.

Both write an :class:`~factlens.rome.EditRequest` by gradient descent on one layer's MLP
output weight (the matrix ROME edits, ``view.mlp_out_parameter``), every other weight frozen:

* **FT** minimises the negative log-likelihood of the new object after the prompt,
  ``L(W) = −(1/T) Σ_t log P_W(o*_t | p, o*_<t)``, with Adam;
* **FT+L** does the same under the paper's L∞ constraint ``‖W − W₀‖_∞ ≤ ε``
  (Zhu et al. 2020): after every step each entry of ``W`` is clamped to ``[W₀ − ε, W₀ + ε]``.

They take the same request as ``factlens.rome.apply`` and return the same
:class:`~factlens.rome.Edit`, so ``edit.undo()`` restores the weight bit for bit and
``with ft(model, request):`` undoes on exit. Unlike ROME they see only the one prompt: no
random prefixes, no key statistics, no term that keeps the subject's other knowledge.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
import torch
from tqdm.auto import tqdm

from factlens import rome
from factlens.models import Model, view


@dataclass(frozen=True)
class FTHyperParams:
    """Hyperparameters of FT / FT+L (names as in ROME's ``hparams/FT/*.json``).

    Attributes:
        layer: the MLP whose output weight is tuned. We tune the layer ROME edits
            (``rome.default_hparams``), so that the comparison isolates the update rule.
        lr: Adam learning rate. ROME's code: 5e-4.
        steps: at most this many Adam steps. ROME's code: 25.
        norm_constraint: ε of FT+L's ``‖W − W₀‖_∞ ≤ ε``; ``None`` for unconstrained FT.
            ROME's code: 5e-4 for GPT-2 XL. See :func:`default_hparams` for the default model.
        stop_loss: stop early once the loss is below this. ROME's code: 1e-2.
    """

    layer: int
    lr: float = 5e-4
    steps: int = 25
    norm_constraint: float | None = None
    stop_loss: float = 1e-2

    @property
    def method(self) -> str:
        return "FT" if self.norm_constraint is None else "FT+L"


# ε for FT+L per model. GPT-2 XL: the paper's 5e-4. The default model's output weights are
# about as large as GPT-2 XL's (an entry's standard deviation is about 0.03 for both), so
# the same ε keeps the change equally small relative to the weights.
_EPSILON: dict[str, float] = {"gpt2-xl": 5e-4, "gemma-3-270m": 5e-4}


def default_hparams(model: Model, *, constrained: bool = False) -> FTHyperParams:
    """FT (``constrained=False``) or FT+L hyperparameters for ``model``: ROME's code's
    values, at the layer ROME edits on this model."""
    layer = rome.default_hparams(model).layer
    eps = _EPSILON.get(view(model).name, 5e-4) if constrained else None
    return FTHyperParams(layer=layer, norm_constraint=eps)


def fine_tune(model: Model, request: rome.EditRequest, *, hparams: FTHyperParams | None = None,
              layer: int | None = None, progress: bool = False) -> rome.Edit:
    """Fine-tune layer ``hparams.layer``'s MLP output weight ``W`` on ``request``; return the edit.

    Minimises ``−(1/T) Σ_t log P_W(o*_t | p, o*_<t)`` (teacher forced over the target's ``T``
    tokens) with Adam, for at most ``hparams.steps`` steps; with ``hparams.norm_constraint = ε``
    (FT+L) ``W ← clip(W, W₀ − ε, W₀ + ε)`` after every step. ROME's code scores every target
    token at the prompt's last position; we teacher-force, which is the same for one-token
    targets. ``layer`` overrides ``hparams.layer``. ``edit.info`` holds the loss per step,
    the target probability reached and the seconds taken. If the optimization fails, the
    weight is restored before the error propagates.
    """
    v = view(model)
    hp = hparams or default_hparams(model)
    if layer is not None:
        hp = replace(hp, layer=layer)
    v.check_layer(hp.layer)  # IndexError for a layer out of range, before any work
    v.subject_span(request.text, request.subject)  # same checks as ROME: the subject is in the prompt
    target = v.target_ids(request.target)
    if hp.norm_constraint is not None and hp.norm_constraint <= 0:
        raise ValueError(f"norm_constraint must be a positive ε (or None for FT), got {hp.norm_constraint}")

    start = time.perf_counter()
    prompt = v.token_ids(request.text)
    ids = v.batch([prompt + target]).ids
    positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target), device=ids.device)
    target_t = torch.tensor(target, device=ids.device)

    record = rome.Edit(model, hp.layer, hp.method, request)
    weight = v.mlp_out_parameter(hp.layer)
    values = v.mlp_out_weight(hp.layer)  # the same storage, in the [d_mlp, d_model] layout of record.original
    losses: list[float] = []
    try:
        with v.frozen_except([weight]):
            optimizer = torch.optim.Adam([weight], lr=hp.lr)
            for _ in tqdm(range(hp.steps), desc=hp.method, disable=not progress, leave=False):
                optimizer.zero_grad()
                hidden = v.final_hidden(ids)[0, positions]
                logp = v.unembed(hidden[:, None])[:, 0].float().log_softmax(-1)
                loss = -logp[torch.arange(len(target)), target_t].mean()
                losses.append(loss.item())
                if loss.item() < hp.stop_loss:
                    break
                loss.backward()
                optimizer.step()
                if hp.norm_constraint is not None:
                    with torch.no_grad():
                        eps = hp.norm_constraint
                        values.copy_(torch.clamp(values, record.original - eps, record.original + eps))
    except BaseException:
        record.undo()
        raise
    record.info.update(losses=losses, target_prob=float(torch.exp(-torch.tensor(losses[-1] * len(target)))),
                       seconds=time.perf_counter() - start, hparams=asdict(hp))
    return record


def ft(model: Model, request: rome.EditRequest, *, layer: int | None = None,
       hparams: FTHyperParams | None = None, progress: bool = False) -> rome.Edit:
    """FT: unconstrained fine-tuning of one MLP output weight (:func:`fine_tune`)."""
    return fine_tune(model, request, hparams=hparams or default_hparams(model), layer=layer, progress=progress)


def ft_l(model: Model, request: rome.EditRequest, *, layer: int | None = None,
         hparams: FTHyperParams | None = None, progress: bool = False) -> rome.Edit:
    """FT+L: fine-tuning under ``‖W − W₀‖_∞ ≤ ε`` (:func:`fine_tune`)."""
    hp = hparams or default_hparams(model, constrained=True)
    if hp.norm_constraint is None:
        raise ValueError("FT+L needs hparams.norm_constraint (ε); use ft() for unconstrained fine-tuning")
    return fine_tune(model, request, hparams=hp, layer=layer, progress=progress)
