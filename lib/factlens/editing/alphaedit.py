"""AlphaEdit: null-space constrained knowledge editing (Fang et al. 2025).

MEMIT's update balances writing the new keys ``K₁`` against keeping the preserved ones ``K₀``
(eq. 15 of AlphaEdit, eq. 14 of MEMIT): ``ΔW = R K₁ᵀ (K_p K_pᵀ + K₁ K₁ᵀ + K₀ K₀ᵀ)⁻¹``. Every edit
moves the preserved keys' outputs a little, and over hundreds of edits the model drifts.
AlphaEdit instead projects the update onto the null space of the preserved keys, so that
``ΔW K₀ = 0`` exactly, and drops the preservation term:

* the projector (eq. 8-9): ``P = Û Ûᵀ``, with ``Û`` the eigenvectors of ``K₀ K₀ᵀ`` (here ``C``, the
  same second moment ROME and MEMIT use, ``factlens.editing.second_moment.layer_stats``) whose eigenvalues are below
  ``nullspace_threshold`` (the code's SVD of ``C`` and its threshold, 2·10⁻² for GPT-2 XL);
* the update (eq. 14), with ``K_p`` the keys of the edits made before in a sequence::

      ΔW = R K₁ᵀ P (K_p K_pᵀ P + K₁ K₁ᵀ P + α I)⁻¹

  solved as the code does, ``ΔWᵀ = (P (K₁ K₁ᵀ + K_p K_pᵀ) + α I)⁻¹ P K₁ Rᵀ``, with ``α`` the code's
  ``L2`` (10; the paper writes ``I``).

For any ``k₀`` with ``P k₀ = 0``, ``(P(…) + αI)ᵀ k₀ = α k₀``, hence ``ΔW k₀ = 0``: the preserved keys'
outputs do not move. Everything else is MEMIT's (``factlens.editing.memit``): the targets ``z``, the keys,
the spreading over the critical layers (:func:`factlens.editing.memit.spread`). :class:`AlphaEdit` is the
editor; its :class:`AlphaEditState` holds the projectors and ``K_p K_pᵀ``, which a sequence of batches shares.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from factlens.core.models import Model, model_entry, view
from factlens.core.registry import ModelEntry
from factlens.editing import memit, rome, second_moment
from factlens.editing.requests import Edit, Editor, EditRequest


@dataclass(frozen=True)
class AlphaEditHyperParams:
    """AlphaEdit's hyperparameters (``hparams/AlphaEdit/*.json`` of its code).

    Attributes:
        memit: the MEMIT settings it shares: critical layers, ``z``'s optimization, ``C``
            (``mom2_update_weight`` is not used: the projection replaces ``λC``).
        nullspace_threshold: eigenvalues of ``C`` below this span the null space. GPT-2 XL: 2·10⁻².
            It is absolute, so it depends on the scale of the model's keys; see :func:`default_hparams`.
        l2: ``α``, the ridge term of the solve (the code's ``L2``; the paper's eq. 14: 1). GPT-2 XL: 10.
    """

    memit: memit.MEMITHyperParams
    nullspace_threshold: float = 2e-2
    l2: float = 10.0

    def __post_init__(self) -> None:
        if self.nullspace_threshold <= 0 or self.l2 <= 0:
            raise ValueError(f"nullspace_threshold and l2 must be positive, got {self.nullspace_threshold}, {self.l2}")

    @property
    def layers(self) -> tuple[int, ...]:
        return self.memit.layers


def default_hparams(model: Model | ModelEntry) -> AlphaEditHyperParams:
    """AlphaEdit's settings for ``model``, a loaded model or a registry entry: MEMIT's
    (:func:`factlens.editing.memit.default_hparams`), the null space's threshold and ``α``
    (``factlens.core.registry``, where every model's settings live, with their reasons; the code's for
    a model it does not list)."""
    settings = model_entry(model).settings("AlphaEdit")
    return AlphaEditHyperParams(memit=memit.default_hparams(model), **settings.arguments())


def null_space_projector(C: torch.Tensor, threshold: float) -> torch.Tensor:
    """``P = Û Ûᵀ`` (eq. 8-9): the projector onto the eigenvectors of ``C`` with eigenvalue below
    ``threshold`` (float64, ``[d, d]``). ``C`` is symmetric, so its SVD is its eigendecomposition."""
    values, vectors = torch.linalg.eigh(C.double())
    small = vectors[:, values < threshold]
    return small @ small.T


def alphaedit_update(P: torch.Tensor, KpKp: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
                     l2: float) -> torch.Tensor:
    """``ΔWᵀ = (P (K₁ K₁ᵀ + K_p K_pᵀ) + α I)⁻¹ P K₁ Rᵀ`` (eq. 14 as the code solves it): ``[d_mlp, d_model]``,
    float64. ``K`` is ``[n, d_mlp]``, ``R`` ``[n, d_model]``, ``KpKp`` the previous edits' ``Σ k kᵀ``."""
    Kd, Rd = K.double(), R.double().to(K.device)
    P, KpKp = P.to(Kd), KpKp.to(Kd)
    A = P @ (Kd.T @ Kd + KpKp) + l2 * torch.eye(P.shape[0], dtype=Kd.dtype, device=Kd.device)
    return torch.linalg.solve(A, P @ Kd.T @ Rd)


@dataclass
class AlphaEditState:
    """What a sequence of AlphaEdit batches shares: the projector ``P`` of each critical layer (computed
    once from ``C``) and ``K_p K_pᵀ``, the sum of the outer products of every key edited so far."""

    projectors: dict[int, torch.Tensor]
    previous: dict[int, torch.Tensor] = field(default_factory=dict)
    n_edits: int = 0

    @classmethod
    def create(cls, model: Model, hp: AlphaEditHyperParams | None = None,
               stats: dict[int, torch.Tensor] | None = None) -> AlphaEditState:
        """Projectors from each layer's ``C`` (``stats``, default ``factlens.editing.second_moment.layer_stats``,
        whose projectors are kept in the model's ``View.state``); no previous edits."""
        hp = hp or default_hparams(model)
        m = hp.memit
        kept = view(model).state.null_space_projectors
        projectors = {}
        for layer in hp.layers:
            if stats is not None and layer in stats:
                projectors[layer] = null_space_projector(stats[layer], hp.nullspace_threshold)
                continue
            key = (layer, m.mom2_corpus, m.mom2_samples, hp.nullspace_threshold)
            if key not in kept:  # one eigendecomposition per layer and model
                C = second_moment.layer_stats(model, layer, corpus=m.mom2_corpus, samples=m.mom2_samples,
                                              progress=False)
                kept[key] = null_space_projector(C, hp.nullspace_threshold)
            projectors[layer] = kept[key]
        d = view(model).d_mlp
        return cls(projectors, {layer: torch.zeros(d, d, dtype=torch.float64) for layer in hp.layers})

    def null_dimensions(self) -> dict[int, int]:
        """The dimension of each layer's null space (the rank of ``P``)."""
        return {layer: int(round(float(P.trace()))) for layer, P in self.projectors.items()}


@dataclass(eq=False)
class AlphaEdit(Editor):
    """AlphaEdit as an editor: ``AlphaEdit(hparams)(model, requests)`` writes the requests in one batch,
    MEMIT's way with the projected solve (eq. 14); returns one ``Edit`` over the critical layers.

    ``hparams`` defaults to :func:`default_hparams` of the model edited. ``state`` carries the projectors
    and the previous edits' keys across the batches of a sequence (created at the first call when not
    given): after each batch, its keys (recomputed on the edited model, as the code does) are added to it,
    so use a fresh editor for a fresh sequence. ``zs`` as in :class:`factlens.editing.memit.MEMIT`.
    """

    hparams: AlphaEditHyperParams | None = None
    state: AlphaEditState | None = None
    zs: Mapping[EditRequest, torch.Tensor] = field(default_factory=dict)
    name: str = "AlphaEdit"
    progress: bool = False
    max_requests: ClassVar[int | None] = None  # any batch

    def write(self, model: Model, requests: list[EditRequest]) -> Edit:
        v = view(model)
        hp = self.hparams or default_hparams(model)
        for layer in hp.layers:
            v.check_layer(layer)
        start = time.perf_counter()
        if self.state is None:
            self.state = AlphaEditState.create(model, hp)
        state = self.state
        missing = [layer for layer in hp.layers if layer not in state.projectors]
        if missing:
            raise ValueError(f"the AlphaEdit state has no projector for layers {missing}; create it with the same "
                             "hparams")
        zs = memit.targets(model, requests, hp.memit, self.zs, progress=self.progress)

        def solve(layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
            return alphaedit_update(state.projectors[layer], state.previous[layer], K, R, hp.l2)

        record = memit.spread(model, self.name, requests, zs, hp.memit, solve, progress=self.progress)
        templates = rome.templates_for(model, hp.memit.z_hparams())
        for layer in hp.layers:
            K = memit.read_layer(model, requests, layer, hp.memit, templates).keys
            state.previous[layer] = state.previous[layer] + (K.double().T @ K.double()).cpu()
        state.n_edits += len(requests)
        record.info.update(zs=zs.detach().cpu(), hparams=asdict(hp), seconds=time.perf_counter() - start)
        return record
