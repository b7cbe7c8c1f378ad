"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al. 2023).

ROME writes one fact into one layer. MEMIT writes a batch of N facts ``(s_i, r_i, o_i)`` at once,
spread over a range of critical layers ``ℛ = {l_1, ..., L}`` (Algorithm 1):

1. For each fact, the *target residual* at the last critical layer ``L`` (eq. 16)::

       z_i = h_i^L + δ_i,   δ_i = argmin_δ  (1/P) Σ_j −log P_G(h_i^L += δ)[o_i | x_j ⊕ p(s_i, r_i)]

   (plus ROME's KL and decay terms), where ``h_i^L`` is the residual stream at the subject's last
   token after layer ``L``. We find ``δ_i`` with ROME's optimizer (``factlens.editing.v_star.compute_value``
   at layer ``L``): for GPT-2, GPT-J and Llama, adding ``δ`` to layer ``L``'s MLP output *is*
   adding it to ``h^L``; for Gemma, whose MLP output passes a post-feedforward norm first,
   ``z_i = h_i^L + norm(v_i + δ_i) − norm(v_i)`` (see :func:`compute_z`).
2. For each layer ``l`` of ``ℛ`` in ascending order, on the model as the lower layers left it:
   the keys ``k_i^l`` at the subject's last token (averaged over the context templates, eq. 19 and
   MEMIT's ``compute_ks``), the residual each fact still needs spread over the remaining layers
   ``r_i^l = (z_i − h_i^L) / (L − l + 1)`` (eq. 20), and the update that writes it with the least
   change to the preserved keys (eq. 14)::

       ΔW^l = R^l (K^l)ᵀ (λ C^l + K^l (K^l)ᵀ)⁻¹

   with ``C^l = E[k kᵀ]`` the keys' second moment (``factlens.editing.second_moment.layer_stats``) and ``λ``
   the ``mom2_update_weight`` of MEMIT's code. It is the solution of the normal equations
   ``ΔW (λC + K Kᵀ) = R Kᵀ`` of ``min ‖ΔW K − R‖² + λ ‖ΔW C^{1/2}‖²`` (eq. 9-14).

Where the MLP output reaches the residual stream through a norm (Gemma's post-feedforward
RMSNorm), ``r_i^l`` is a change of the residual stream and the layer's value must change so that
``norm(v + Δv) = norm(v) + r``: :func:`value_changes` finds the nearest such ``Δv`` by least squares
(exactly ``r`` where there is no norm, as in the paper's models).

:class:`MEMIT` is the editor (``factlens.editing.requests.Editor``): ``MEMIT(hparams)(model, requests)``
runs both steps and returns one ``Edit`` that restores every edited layer bit for bit. :func:`spread`
is step 2 with a pluggable solver; ``factlens.editing.alphaedit`` uses it with AlphaEdit's projected
solve. A batch with two requests for the same subject and prompt (relation) is an error: one key
cannot be mapped to two values (``factlens.editing.requests.check_requests``).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from factlens.core.models import Model, model_entry, view
from factlens.core.registry import ModelEntry
from factlens.editing import rome, second_moment, v_star
from factlens.editing.requests import Edit, Editor, EditRequest, check_requests

# --------------------------------------------------------------------------- hyperparameters


@dataclass(frozen=True)
class MEMITHyperParams:
    """MEMIT's hyperparameters (names as in ``hparams/MEMIT/*.json`` of MEMIT's code).

    Attributes:
        layers: the critical layers ``ℛ``, ascending; ``z`` is optimized at the last one.
            GPT-J: 3-8 of 28; GPT-2 XL: 13-17 of 48.
        mom2_update_weight: ``λ``, the weight of the preserved keys' second moment in eq. 14.
            GPT-J: 15,000; GPT-2 XL: 20,000.
        context_templates: ``((length, count), ...)`` of the random prefixes for ``z`` and the keys;
            MEMIT's code: 5 prefixes of 10 tokens, beside the prompt itself.
        v_lr, v_steps, kl_factor, weight_decay, clamp_norm_factor, essence_prompt: the optimization
            of ``δ`` (``factlens.editing.v_star.compute_value``). MEMIT's code clamps ``‖δ‖`` to 0.75
            ``‖h^L‖``; ROME's optimizer clamps to a multiple of the MLP output's norm ``‖v‖``.
        mom2_samples, mom2_corpus: the keys ``C`` is estimated on (``factlens.editing.second_moment.layer_stats``).
        seed: seed of the sampled prefixes.
    """

    layers: tuple[int, ...]
    mom2_update_weight: float = 15_000.0
    context_templates: tuple[tuple[int, int], ...] = ((10, 5),)
    v_lr: float = 0.5
    v_steps: int = 25
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    essence_prompt: str = "{} is a"
    mom2_samples: int = 100_000
    mom2_corpus: str = "wikitext"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers must be a non-empty ascending tuple of distinct layers, got {self.layers}")
        if self.mom2_update_weight <= 0:
            raise ValueError(f"mom2_update_weight (λ) must be positive, got {self.mom2_update_weight}")

    def z_hparams(self) -> rome.ROMEHyperParams:
        """The settings of ``δ``'s optimization, as ROME's hyperparameters at the last critical layer."""
        return rome.ROMEHyperParams(
            layer=self.layers[-1], context_templates=self.context_templates, v_lr=self.v_lr,
            v_steps=self.v_steps, kl_factor=self.kl_factor, weight_decay=self.weight_decay,
            clamp_norm_factor=self.clamp_norm_factor, mom2_samples=self.mom2_samples,
            mom2_corpus=self.mom2_corpus, essence_prompt=self.essence_prompt, seed=self.seed)


def default_hparams(model: Model | ModelEntry) -> MEMITHyperParams:
    """MEMIT's hyperparameters for ``model``, a loaded model or a registry entry (``factlens.core.registry``,
    where every model's settings live, with their reasons); a model the registry does not list gets four
    layers ending at ROME's layer, ROME's settings for ``δ`` and ``C``, and GPT-J's λ scaled to the MLP's width."""
    settings = model_entry(model).settings("MEMIT")
    return MEMITHyperParams(**settings.arguments(rome.default_hparams(model)))


# --------------------------------------------------------------------------- keys and residuals


def _template_groups(hp: MEMITHyperParams) -> list[int]:
    """Sizes of the template groups: the prompt itself, then one group per (length, count)."""
    return [1] + [count for _, count in hp.context_templates]


@dataclass(frozen=True)
class LayerReading:
    """What one forward pass reads for MEMIT at layer ``l`` (one row per request): ``keys`` ``k_i^l``
    ``[n, d_mlp]``, averaged over the templates; ``values``, the MLP output ``v_i^l`` at the
    subject's last token of the prompt itself ``[n, d_model]``; ``residual``, ``h_i^L`` there ``[n, d_model]``."""

    keys: torch.Tensor
    values: torch.Tensor
    residual: torch.Tensor


@torch.no_grad()
def read_layer(model: Model, requests: Sequence[EditRequest], layer: int, hp: MEMITHyperParams,
               templates: Sequence[str]) -> LayerReading:
    """The :class:`LayerReading` of layer ``layer``: one forward pass over every (request, template)
    prompt up to layer ``layer``, one over the prompts themselves up to ``L``.

    ``k_i^l`` is the MLP key at the subject's last token, averaged within each group of templates
    and then over the groups (the prompt alone, each prefix length), as MEMIT's ``compute_ks``
    does; ``v_i^l`` and ``h_i^L`` are read on the prompt itself (template ``"{}"``).
    """
    v = view(model)

    def read(texts: list[str], subjects: list[str], names: list[str]) -> list[torch.Tensor]:
        batch = v.batch(texts)
        got = v.capture(batch.ids, names)
        rows = torch.arange(len(texts), device=batch.ids.device)
        at = torch.tensor([v.subject_span(t, s).last for t, s in zip(texts, subjects)], device=batch.ids.device)
        return [got[n][rows, at].float() for n in names]

    prompts = [p for r in requests for p in r.prefixed(templates)]
    subjects = [r.subject for r in requests for _ in templates]
    (keys,) = read(prompts, subjects, [v.key_hook(layer)])
    groups = keys.view(len(requests), len(templates), -1).split(_template_groups(hp), dim=1)
    K = torch.stack([g.mean(1) for g in groups], 0).mean(0)
    values, resid = read([r.text for r in requests], [r.subject for r in requests],
                         [v.value_hook(layer), v.resid_post_hook(hp.layers[-1])])
    return LayerReading(K, values, resid)


def value_changes(model: Model, layer: int, values: torch.Tensor, wanted: torch.Tensor,
                  iterations: int = 100) -> torch.Tensor:
    """``Δv`` per row with ``norm(v + Δv) ≈ norm(v) + r``: how layer ``layer``'s MLP output must change
    for the residual stream to change by ``r`` (``wanted``), where ``norm`` is what the block applies
    to the MLP output (``View.mlp_post_norm``). Without a norm (GPT-2, GPT-J, Llama) it is ``r`` itself.

    With Gemma's RMSNorm, ``norm(x) = g ⊙ x / rms(x)`` can only rotate the output, so ``Δv`` is the
    least-squares solution ``argmin ‖norm(v + Δv) − norm(v) − r‖²`` (L-BFGS from ``Δv = 0``), scaled
    so that ``‖v + Δv‖ = ‖v‖``: the norm lets through only the output's direction, and a value that
    keeps its magnitude turns the same way for every key that ``ΔW`` reaches partly (as ROME's
    additive ``δ`` does). MEMIT's next layers see and spread whatever part of ``r`` it could not write.
    """
    v = view(model)
    values = values.detach().float()
    wanted = wanted.detach().float()
    with torch.no_grad():
        normed = v.mlp_post_norm(layer, values)
        if torch.equal(normed, values):
            return wanted.clone()
        target = normed + wanted
        scale = target.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # each row's residual in units of its size
    change = torch.zeros_like(values, requires_grad=True)
    optimizer = torch.optim.LBFGS([change], max_iter=iterations, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  history_size=20, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = ((v.mlp_post_norm(layer, values + change) - target) / scale).pow(2).sum()
        value.backward()
        return value

    with v.frozen_except([]):
        optimizer.step(loss)
    with torch.no_grad():
        moved = values + change
        return moved * (values.norm(dim=-1, keepdim=True) / moved.norm(dim=-1, keepdim=True)) - values


# --------------------------------------------------------------------------- z, the target residual


def compute_z(model: Model, request: EditRequest, hp: MEMITHyperParams) -> torch.Tensor:
    """``z = h^L + δ`` (eq. 16): the residual stream at the subject's last token after the last
    critical layer ``L`` that makes the model say ``request.target`` ([d_model]).

    ``δ`` is optimized at layer ``L``'s MLP output by ``factlens.editing.v_star.compute_value`` (the loss of
    eq. 16 with ROME's KL and decay terms), so ``z = h^L + norm(v + δ) − norm(v)`` with ``v`` the MLP
    output of the prompt itself (``norm`` the identity for GPT-2, GPT-J, Llama). The optimization is
    computed once (the cache keeps ``δ`` by model and weights, request, ``L``, settings and templates);
    what remains is one forward pass of the prompt, so ``z`` is the same bit for bit.
    """
    v = view(model)
    zhp = hp.z_hparams()
    templates = rome.templates_for(model, zhp)
    value = v_star.compute_value(model, request, zhp.layer, zhp, templates)
    last = v.subject_span(request.text, request.subject).last
    with torch.no_grad():
        got = v.capture(v.batch([request.text]).ids, [v.value_hook(zhp.layer), v.resid_post_hook(zhp.layer)])
        v0 = got[v.value_hook(zhp.layer)][0, last].float()
        h0 = got[v.resid_post_hook(zhp.layer)][0, last].float()
        moved = v.mlp_post_norm(zhp.layer, (v0 + value.delta.to(v0))[None])[0] - v.mlp_post_norm(zhp.layer, v0[None])[0]
    return h0 + moved


def compute_zs(model: Model, requests: Sequence[EditRequest], hp: MEMITHyperParams | None = None, *,
               progress: bool = False) -> torch.Tensor:
    """:func:`compute_z` of each request on the model as it is now: ``[n, d_model]``.

    MEMIT's and AlphaEdit's code cache these per case (``--use_cache``) and reuse them in later
    batches; ``dict(zip(requests, zs))`` is the ``zs`` of :class:`MEMIT` and ``AlphaEdit`` that does the same.
    (Across calls and builds, each ``z``'s optimization is kept in the cache: :func:`compute_z`.)
    """
    hp = hp or default_hparams(model)
    requests = check_requests(requests)
    rows = [compute_z(model, r, hp) for r in tqdm(requests, desc="MEMIT z", disable=not progress, leave=False)]
    return torch.stack(rows)


def z_seconds(model: Model, requests: Sequence[EditRequest], hp: MEMITHyperParams) -> float:
    """How long the optimizations of the requests' ``z`` took on the model as it is now, in seconds, as
    measured when each was computed (the cache keeps the time beside ``δ``; a request not computed yet
    is computed now): a warm cache reports the cost of ``z``, not of reading files."""
    zhp = hp.z_hparams()
    templates = rome.templates_for(model, zhp)
    return sum(v_star.compute_value(model, r, zhp.layer, zhp, templates).seconds for r in requests)


def targets(model: Model, requests: Sequence[EditRequest], hp: MEMITHyperParams,
            known: Mapping[EditRequest, torch.Tensor], *, progress: bool = False) -> torch.Tensor:
    """``z`` of each request, ``[n, d_model]``: ``known[request]`` where it is given (precomputed, e.g. on
    the unedited model), else :func:`compute_z` on the model as it is now."""
    missing = [r for r in requests if r not in known]
    computed = dict(zip(missing, compute_zs(model, missing, hp, progress=progress))) if missing else {}
    return torch.stack([known[r] if r in known else computed[r] for r in requests])


# --------------------------------------------------------------------------- the update (eq. 14)


def memit_update(C: torch.Tensor, K: torch.Tensor, R: torch.Tensor, mom2_update_weight: float) -> torch.Tensor:
    """``ΔWᵀ`` for ``ΔW = R Kᵀ (λC + K Kᵀ)⁻¹`` (eq. 14), in float64: ``[d_mlp, d_model]``.

    ``K`` is ``[n, d_mlp]`` (one key per row), ``R`` ``[n, d_model]`` (the value each key still
    needs), ``C`` ``[d_mlp, d_mlp]``. The result satisfies the normal equations
    ``ΔW (λC + K Kᵀ) = R Kᵀ``; it is returned transposed, in the library's value layout.
    """
    if K.shape[0] != R.shape[0] or C.shape != (K.shape[1], K.shape[1]):
        raise ValueError(f"shapes do not fit: C {tuple(C.shape)}, K {tuple(K.shape)}, R {tuple(R.shape)}")
    Kd, Rd = K.double(), R.double().to(K.device)
    A = mom2_update_weight * C.double().to(K.device) + Kd.T @ Kd
    return torch.linalg.solve(A, Kd.T @ Rd)


Solver = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def spread(model: Model, method: str, requests: Sequence[EditRequest], zs: torch.Tensor, hp: MEMITHyperParams,
           solve: Solver, *, progress: bool = False) -> Edit:
    """Algorithm 1, step 2: write ``z`` over the critical layers, lowest first; return the ``Edit``
    (named ``method``), whose ``info["steps"]`` holds per layer its keys ``K``, value changes ``R`` and the
    norm of what was still missing before it (``gap_norm``). If anything fails, the weights are restored
    before the error propagates.

    At layer ``l`` (the ``i``-th of ``ℛ``): keys ``K``, values ``v^l`` and residuals ``h^L`` on the model
    as the lower layers left it (:func:`read_layer`), ``r = (z − h^L) / (|ℛ| − i)`` (eq. 20), the value
    changes ``R`` that write ``r`` from ``v^l`` (:func:`value_changes`), and ``ΔWᵀ = solve(l, K, R)``,
    added to the weight.
    """
    v = view(model)
    templates = rome.templates_for(model, hp.z_hparams())
    record = Edit(model, method, requests, layers=hp.layers)
    steps = []
    try:
        for i, layer in enumerate(tqdm(hp.layers, desc=f"{method} layers", disable=not progress, leave=False)):
            reading = read_layer(model, requests, layer, hp, templates)
            K, gap = reading.keys, zs.to(reading.residual) - reading.residual
            R = value_changes(model, layer, reading.values, gap / (len(hp.layers) - i))
            dV = solve(layer, K, R)
            weight = v.mlp_out_weight(layer)
            with torch.no_grad():
                v.set_mlp_out_weight(layer, weight.detach() + dV.to(weight.dtype))
            steps.append({"layer": layer, "K": K.cpu(), "R": R.cpu(), "gap_norm": float(gap.norm(dim=-1).mean())})
    except BaseException:
        record.undo()
        raise
    record.info["steps"] = steps
    return record


# --------------------------------------------------------------------------- the editor


@dataclass(eq=False)
class BatchEditor(Editor):
    """What MEMIT and AlphaEdit share: one batch of requests written over the critical layers
    ``hparams.layers``, towards the target residuals ``zs`` (a dict from request to its precomputed ``z``,
    :func:`compute_zs`; a request not in it gets one computed on the model as it is, :func:`targets`).
    The record's ``info`` holds ``zs``, the ``hparams`` and the ``seconds`` taken, beside what
    :meth:`write_batch` puts there."""

    zs: Mapping[EditRequest, torch.Tensor] = field(default_factory=dict, kw_only=True)
    progress: bool = field(default=False, kw_only=True)
    max_requests: ClassVar[int | None] = None  # any batch

    def write(self, model: Model, requests: list[EditRequest]) -> Edit:
        hp = self.hparams or self.default_hparams(model)
        v = view(model)
        for layer in hp.layers:
            v.check_layer(layer)
        start = time.perf_counter()
        record, zs = self.write_batch(model, requests, hp)
        record.info.update(zs=zs.detach().cpu(), hparams=asdict(hp), seconds=time.perf_counter() - start)
        return record

    @abstractmethod
    def default_hparams(self, model: Model) -> Any:
        """The method's settings for ``model`` when the editor was given none."""

    @abstractmethod
    def write_batch(self, model: Model, requests: list[EditRequest], hp: Any) -> tuple[Edit, torch.Tensor]:
        """Write the requests with settings ``hp`` (layers checked); return the record and the targets ``zs``."""


@dataclass(eq=False)
class MEMIT(BatchEditor):
    """MEMIT as an editor: ``MEMIT(hparams)(model, requests)`` writes the requests in one batch (Algorithm 1);
    returns one ``Edit`` over the critical layers.

    ``hparams`` defaults to :func:`default_hparams` of the model edited. ``stats`` maps a layer to its ``C``
    (a layer not in it: ``factlens.editing.second_moment.layer_stats``, cached); ``zs`` as in
    :class:`BatchEditor`. The record's ``info`` holds ``steps`` (:func:`spread`) too.
    """

    hparams: MEMITHyperParams | None = None
    stats: Mapping[int, torch.Tensor] = field(default_factory=dict)
    name: str = "MEMIT"

    def default_hparams(self, model: Model) -> MEMITHyperParams:
        return default_hparams(model)

    def write_batch(self, model: Model, requests: list[EditRequest],
                    hp: MEMITHyperParams) -> tuple[Edit, torch.Tensor]:
        Cs = {layer: self.stats[layer] if layer in self.stats else second_moment.layer_stats(
            model, layer, corpus=hp.mom2_corpus, samples=hp.mom2_samples, progress=False) for layer in hp.layers}
        zs = targets(model, requests, hp, self.zs, progress=self.progress)

        def solve(layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
            return memit_update(Cs[layer], K, R, hp.mom2_update_weight)

        return spread(model, self.name, requests, zs, hp, solve, progress=self.progress), zs


__all__ = ["BatchEditor", "MEMIT", "MEMITHyperParams", "compute_z", "compute_zs", "default_hparams", "LayerReading",
           "memit_update", "read_layer", "spread", "targets", "value_changes", "z_seconds"]
