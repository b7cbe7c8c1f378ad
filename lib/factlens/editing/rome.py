"""ROME: Rank-One Model Editing (Meng et al. 2022, section 3).

The output matrix ``W`` of a middle-layer MLP is read as a linear associative memory
that maps keys ``k`` (the MLP's hidden activations, ``view.key_hook``) to values ``v``
(what the down projection writes, ``view.value_hook``), with ``W K ≈ V``.
ROME writes one new association ``(k*, v*)`` with the least change to the others
(paper eq. 2)::

    Ŵ = W + Λ (C⁻¹ k*)ᵀ,    Λ = (v* − W k*) / ((C⁻¹ k*)ᵀ k*),    C = K Kᵀ

so that ``Ŵ k* = v*`` while every key orthogonal to ``C⁻¹ k*`` is mapped as before.

* ``factlens.editing.second_moment.layer_stats`` estimates ``C`` (the uncentred second moment of
  the keys) from a text corpus, streamed and cached;
* :func:`compute_key` is ``k*``, the key at the subject's last token averaged over random
  text prefixes (eq. 3);
* ``factlens.editing.v_star.compute_value`` is ``v*``, optimized so the model says the new object
  (eq. 4);
* :func:`rank_one_update` is eq. 2.

Hyperparameters are chosen on CounterFact's tuning split (:func:`tuning_cases`, every tenth
case id); numbers are reported on the rest (:func:`evaluation_cases`).

:class:`ROME` is the editor (``factlens.editing.requests.Editor``): ``ROME(hparams)(model, [request])``
runs the three steps and returns the ``Edit`` that undoes the change bit for bit; ``with`` it undoes
on exit. Every edit also reports its :class:`Forecast`, the size of the update it applies, which
predicts the edits that break a model (Gupta et al. 2024; ``factlens.editing.sequences``).

Notation: the library stores the values as a [d_mlp, d_model] matrix ``V`` (one value vector
per row, ``view.mlp_out_weight``); ROME's ``W`` is its transpose ([d_model, d_mlp], ``W k = v``).
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from factlens.core.cache import cached_tensors
from factlens.core.models import Model, model_entry, view
from factlens.core.registry import ModelEntry
from factlens.editing import second_moment, v_star
from factlens.editing.requests import Edit, Editor, EditRequest

if TYPE_CHECKING:
    from factlens.data import CounterFactCase


# --------------------------------------------------------------------------- hyperparameters


@dataclass(frozen=True)
class ROMEHyperParams:
    """ROME's hyperparameters (names as in the paper's code, ``hparams/ROME/*.json``).

    Attributes:
        layer: the MLP whose output weight is edited. GPT-2 XL: 17 of 48, where causal
            tracing peaks for the last subject token.
        context_templates: ``((length, count), ...)``: ``count`` random prefixes of ``length``
            tokens sampled from the model, over which ``k*`` is averaged and ``v*`` optimized
            (eq. 3, 4). The unprefixed prompt is always included. Paper: ((5, 10), (10, 10)).
        v_lr: Adam learning rate for the residual ``δ = v* − v``. Paper: 0.5.
        v_steps: at most this many steps for ``v*`` (see ``v_star.compute_value`` for the early stop). Paper: 20.
        kl_factor: weight of the essence term, D_KL(P_edited[x | "{subject} is a"] ‖ P[x | ...]). Paper: 0.0625.
        weight_decay: weight of ``‖δ‖ / ‖v‖²`` in the loss. Paper: 0.5.
        clamp_norm_factor: ``‖δ‖`` is clamped to this multiple of ``‖v‖`` after every step. Paper: 4.
        mom2_samples: the number of *keys* (token positions of the corpus) that ``C`` averages.
            ROME's code names its 100,000 ``mom2_n_samples`` the same way, but counts Wikipedia
            *texts* of up to 1,024 tokens, each token a key (``factlens.editing.second_moment``).
        mom2_corpus: the corpus ``C`` is estimated on (``factlens.data.corpus``).
        essence_prompt: the KL prompt's template. Paper: "{} is a".
        damping: ``C + damping · mean(diag C) · I`` is solved (:func:`rank_one_update`), so that a
            C from fewer keys than its size stays invertible; too small to matter otherwise.
        seed: seed of the sampled prefixes.
        unembedding_bf16: ``v*``'s loss reads the unembedding in bfloat16 (a copy made per optimization;
            every sum stays in float32): faster, not exact (``bench/README.md`` gives its ``v*`` cosine
            and ES/PS/NS against float32, the default and the reference).

    Where ROME's reference code (kmeng01/rome: ``rome/compute_v.py``, ``rome/rome_main.py``)
    departs from the paper's equations or from our choices, an option says which is used
    (:data:`CODE_CHOICES`; :func:`as_in_code` sets them as the code has them):

        kl_edited_first: the KL term is ``D_KL(P_edited ‖ P_unedited)`` (True: eq. 4 and the
            code) or the reverse.
        kl_at_subject: the KL term reads the distribution at the subject's last token of the
            essence prompt (True: the code) or at its end, ``P[x | p']`` (False: eq. 4's text).
        norm_of_unprefixed: ``‖v‖`` in the decay term and the clamp is the unprefixed prompt's
            value (True: the code) or the mean over the rewriting prompts.
        unprefixed_key_in_update: eq. 2's denominator uses the unprefixed prompt's key ``k₀``,
            so that ``Ŵ k₀ = v₀ + δ`` (True: the code), or ``k*``, so that ``Ŵ k* = W k* + δ``
            (False: eq. 2 as written, and r-ROME's fix of the code's disabling edits).
        prefix_from_bos: the context templates are sampled from the start of text, ``length``
            tokens counting the BOS (True: ROME's code), or after the words "The", "Therefore",
            "Because", "I", "You" (False: MEMIT's code).
        stop_on_total_loss: the optimization stops once the whole loss is below 0.05 (True:
            the code) or once NLL + KL term is (False; the decay term alone can stay above it).
    """

    layer: int
    context_templates: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    v_lr: float = 0.5
    v_steps: int = 20
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    mom2_samples: int = 100_000
    mom2_corpus: str = "wikitext"
    essence_prompt: str = "{} is a"
    damping: float = 1e-6
    seed: int = 0
    kl_edited_first: bool = True
    kl_at_subject: bool = False
    norm_of_unprefixed: bool = True
    unprefixed_key_in_update: bool = False
    prefix_from_bos: bool = False
    stop_on_total_loss: bool = False
    unembedding_bf16: bool = False


#: How ROME's reference code computes each optional part of ``v*`` and the update: option ->
#: (the code's value, what it does, where). :func:`as_in_code` applies them.
CODE_CHOICES: dict[str, tuple[Any, str]] = {
    "kl_edited_first": (True, "KL(edited ‖ unedited), compute_v.py's kl_div(init, new)"),
    "kl_at_subject": (True, "KL read at the subject's last token of \"{} is a\" (compute_v.py's lookup_idxs)"),
    "norm_of_unprefixed": (True, "‖v‖ of the unprefixed prompt in the decay and the clamp "
                                 "(compute_v.py's target_init)"),
    "unprefixed_key_in_update": (True, "the unprefixed prompt's key in eq. 2's denominator (compute_v.py's cur_input)"),
    "prefix_from_bos": (True, "10 + 10 context prefixes sampled from the start of text (rome_main.py)"),
    "stop_on_total_loss": (True, "stop once the whole loss, decay included, is below 0.05 (compute_v.py)"),
}

#: ROME's code samples its context templates as ((5, 10), (10, 10)) from the start of text.
CODE_CONTEXT_TEMPLATES: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))


def as_in_code(hp: ROMEHyperParams, *options: str) -> ROMEHyperParams:
    """``hp`` with ``options`` (default: every one of :data:`CODE_CHOICES`) set as ROME's
    reference code has them; ``prefix_from_bos`` also takes the code's 10 + 10 prefixes."""
    unknown = [o for o in options if o not in CODE_CHOICES]
    if unknown:
        raise ValueError(f"unknown options {unknown}; ROME's code differs in: {', '.join(CODE_CHOICES)}")
    chosen = options or tuple(CODE_CHOICES)
    changes: dict[str, Any] = {o: CODE_CHOICES[o][0] for o in chosen}
    if "prefix_from_bos" in chosen:
        changes["context_templates"] = CODE_CONTEXT_TEMPLATES
    return replace(hp, **changes)


def code_comparison(hp: ROMEHyperParams) -> dict[str, ROMEHyperParams]:
    """The settings that isolate each difference from ROME's code: ``{option: hp with that option
    switched}`` for every option of :data:`CODE_CHOICES` (to the code's choice where ``hp``
    differs from the code, away from it where ``hp`` follows the code), and ``"all"``: every
    option as the code has it (:func:`as_in_code`)."""
    variants = {}
    for option, (code_value, _) in CODE_CHOICES.items():
        follows = getattr(hp, option) == code_value
        variants[option] = replace(hp, **{option: not code_value}) if follows else as_in_code(hp, option)
    variants["all"] = as_in_code(hp)
    return variants


def default_hparams(model: Model | ModelEntry) -> ROMEHyperParams:
    """The hyperparameters for ``model``, a loaded model or a registry entry (``factlens.core.registry``,
    where every model's settings live, with their reasons); a model the registry does not list gets the
    paper's values at the layer a third of the way up (where tracing usually peaks)."""
    return ROMEHyperParams(**model_entry(model).settings("ROME").arguments())


# --------------------------------------------------------------------------- tuning and evaluation cases

#: CounterFact cases whose ``case_id`` is a multiple of this are the tuning split (2,192 of the
#: 21,919 cases): the default model's hyperparameters (layer, clamp) are chosen on them, and no
#: reported number is measured on them. Every other case is for evaluation.
TUNING_STRIDE = 10


def is_tuning_case(case_id: int) -> bool:
    """Whether the CounterFact case ``case_id`` belongs to the tuning split (``case_id % 10 == 0``)."""
    return int(case_id) % TUNING_STRIDE == 0


def tuning_cases(cases: Iterable[CounterFactCase]) -> list[CounterFactCase]:
    """The cases hyperparameters are chosen on (:data:`TUNING_STRIDE`), in their order.

    The split is a rule on the case id, not a sample, so it is the same for every subset,
    file format and order of CounterFact; :func:`evaluation_cases` is its complement.
    """
    return [c for c in cases if is_tuning_case(c.case_id)]


def evaluation_cases(cases: Iterable[CounterFactCase]) -> list[CounterFactCase]:
    """The cases reported numbers are measured on: every case not in :func:`tuning_cases`, in
    their order. Draw evaluation samples from these (``random.Random(seed).sample(...)``)."""
    return [c for c in cases if not is_tuning_case(c.case_id)]


# --------------------------------------------------------------------------- the key k*


_PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def context_templates(model: Model, spec: Sequence[tuple[int, int]] = ((5, 10), (10, 10)),
                      seed: int = 0, *, from_bos: bool = False) -> list[str]:
    """``["{}", "<prefix 1>. {}", ...]``: random text prefixes sampled from the model itself.

    For each ``(length, count)``, ``count`` prefixes sampled from the model's top 5 next tokens
    (seeded): continuations of ``length`` tokens after the words "The", "Therefore",
    "Because", "I", "You" in turn, as MEMIT's code samples them; or, with ``from_bos``, texts
    of ``length`` tokens from the start of text (the BOS counted, as ROME's ``generate_fast``
    counts its prompt), with blank lines as spaces, as ROME's code samples them.
    """
    v = view(model)
    if from_bos and not v.bos:
        raise ValueError(f"{v.name}'s tokenizer has no beginning-of-sequence token to sample prefixes from; "
                         "use prefix_from_bos=False")
    generator = torch.Generator().manual_seed(seed)
    templates = ["{}"]
    for length, count in spec:
        if from_bos:
            rows, steps = [list(v.bos) for _ in range(count)], length - 1
        else:
            rows, steps = [v.token_ids(_PREFIX_STARTS[i % len(_PREFIX_STARTS)]) for i in range(count)], length
        for _ in range(steps):
            batch = v.batch(rows)
            logits = v.logits_at(batch.ids, batch.last).float().cpu()
            top = logits.topk(5, dim=-1)
            picks = torch.multinomial(top.values.softmax(-1), 1, generator=generator)[:, 0]
            for i, r in enumerate(rows):
                r.append(int(top.indices[i, picks[i]]))
        for r in rows:
            text = v.tokenizer.decode(r[len(v.bos):], skip_special_tokens=True)
            if from_bos:
                text = unicodedata.normalize("NFKD", text).replace("\n\n", " ")
            templates.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return templates


def templates_for(model: Model, hp: ROMEHyperParams) -> list[str]:
    """The prefix templates of ``hp`` (:func:`context_templates`), sampled once per model and spec."""
    kept = view(model).state.context_templates
    key = (tuple(map(tuple, hp.context_templates)), hp.seed, hp.prefix_from_bos)
    if key not in kept:
        kept[key] = context_templates(model, hp.context_templates, hp.seed, from_bos=hp.prefix_from_bos)
    return kept[key]


#: The cache's kind (its folder) for ``k*``, and what an entry holds (its version changes whenever
#: :func:`compute_key` changes what it returns for the same inputs).
KEY_CACHE_KIND = "k_star"
_KEY_WHAT = "rome.compute_key, version 1: k_star"


def compute_key(model: Model, request: EditRequest, layer: int, templates: Sequence[str] = ("{}",)) -> torch.Tensor:
    """``k* = (1/N) Σ_j k(x_j + s)`` (paper eq. 3): the MLP key at the subject's last token,
    averaged over the prompts ``x_j + s`` (each prefix template filled with the request's prompt).

    Computed once: the cache (``$FACTLENS_CACHE_DIR/k_star``) returns it, bit for bit, for the same
    model and weights (``View.cache_key``), prompt, subject, layer and templates (the target plays no part)."""
    v = view(model)
    key = {**v.cache_key(), "what": _KEY_WHAT, "prompt": request.prompt, "subject": request.subject, "layer": layer,
           "templates": list(templates)}
    entry = cached_tensors(KEY_CACHE_KIND, key, lambda: {"k_star": _key(model, request, layer, templates)})
    return entry["k_star"].to(v.device)


@torch.no_grad()
def _key(model: Model, request: EditRequest, layer: int, templates: Sequence[str]) -> torch.Tensor:
    """:func:`compute_key`'s forward pass."""
    v = view(model)
    prompts = request.prefixed(templates)
    last = torch.tensor([v.subject_span(p, request.subject).last for p in prompts])
    keys = v.capture(v.batch(prompts).ids, [v.key_hook(layer)])[v.key_hook(layer)]
    return keys[torch.arange(len(prompts)), last].mean(0)


# --------------------------------------------------------------------------- the update


def update_direction(C: torch.Tensor, k_star: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """``C⁻¹ k*`` (float64, on ``k*``'s device), the key-space direction of ROME's update (paper
    eq. 2), solving ``(C + damping · mean(diag C) · I) u = k*``."""
    Cd = C.double().to(k_star.device)
    if damping:
        Cd = Cd + damping * Cd.diagonal().mean() * torch.eye(Cd.shape[0], dtype=Cd.dtype, device=Cd.device)
    return torch.linalg.solve(Cd, k_star.double())


def rank_one_update(W: torch.Tensor, C: torch.Tensor, k_star: torch.Tensor, v_star: torch.Tensor,
                    damping: float = 0.0, *, key: torch.Tensor | None = None) -> torch.Tensor:
    """``Ŵ = W + Λ (C⁻¹ k*)ᵀ`` with ``Λ = (v* − W k*) / ((C⁻¹ k*)ᵀ k*)`` (paper eq. 2).

    ``W`` is [d_out, d_in] (``W k = v``), ``C`` [d_in, d_in], ``k*`` [d_in], ``v*`` [d_out].
    Then ``Ŵ k* = v*`` exactly (up to rounding) and ``Ŵ k = W k`` for every ``k`` with
    ``(C⁻¹ k*)ᵀ k = 0``. ``damping`` adds ``damping · mean(diag C) · I`` to ``C`` before
    solving (0: none), for a ``C`` estimated from fewer keys than its size.

    ``key``: another key ``k`` to map to ``v*`` in the same direction,
    ``Λ = (v* − W k) / ((C⁻¹ k*)ᵀ k)``, so that ``Ŵ k = v*``: ROME's code passes the
    unprefixed prompt's key here (``compute_v.py``), which r-ROME (Gupta et al. 2024) traces
    disabling edits to.
    """
    if W.shape != (v_star.shape[0], k_star.shape[0]) or C.shape != (k_star.shape[0],) * 2:
        raise ValueError(f"shapes do not fit: W {tuple(W.shape)}, C {tuple(C.shape)}, "
                         f"k* {tuple(k_star.shape)}, v* {tuple(v_star.shape)}")
    k = (k_star if key is None else key).double()
    u = update_direction(C, k_star, damping)
    Lam = (v_star.double() - W.double() @ k) / (u @ k)
    return (W.double() + torch.outer(Lam, u)).to(W.dtype)


# --------------------------------------------------------------------------- the update's size (disabling edits)


@dataclass(frozen=True)
class Forecast:
    """What predicts a disabling ROME edit (Gupta et al. 2024, r-ROME), computed before the edit is applied.

    ROME's code writes ``ΔW = (v* − W k₀) uᵀ / (uᵀ k₀)``: the direction ``u = C⁻¹k*`` comes from the key
    averaged over prefixed prompts, the denominator from the unprefixed prompt's key ``k₀``
    (``unprefixed_key_in_update``). Where ``k₀`` is far from ``k*`` (typically when the subject is the
    prompt's first token, so that its key without a prefix is unlike any prefixed one), ``uᵀk₀`` is
    small and ``ΔW`` huge.

    ``denominator`` is ``uᵀk*`` and ``denominator_unprefixed`` ``uᵀk₀``; ``update_norm`` and
    ``update_norm_unprefixed`` are ``‖ΔW‖_F / ‖W‖_F`` of the update with each denominator;
    ``applied_norm`` the one the edit applies; ``subject_first`` whether the subject is the prompt's
    first token after BOS.
    """

    subject: str
    denominator: float
    denominator_unprefixed: float
    update_norm: float
    update_norm_unprefixed: float
    applied_norm: float
    subject_first: bool

    @property
    def denominator_ratio(self) -> float:
        """``uᵀk₀ / uᵀk*``: 1 when the unprefixed key agrees with the averaged one; small or negative
        values multiply ROME's code's update by its inverse."""
        return self.denominator_unprefixed / self.denominator if self.denominator else math.nan


def forecast(W: torch.Tensor, C: torch.Tensor, k_star: torch.Tensor, k0: torch.Tensor, delta: torch.Tensor, *,
             subject: str, subject_first: bool, unprefixed_key_in_update: bool = False,
             damping: float = 0.0) -> Forecast:
    """The :class:`Forecast` of a ROME edit from its parts: ``W`` [d_model, d_mlp] (ROME's layout),
    ``C``, the averaged key ``k*``, the unprefixed key ``k₀`` and the value change ``δ = v* − W k*``;
    the applied update uses ``k₀``'s denominator with ``unprefixed_key_in_update``.

    ``‖ΔW‖_F = ‖δ‖ ‖u‖ / |uᵀk|`` for a rank-one ``ΔW = δ uᵀ / (uᵀk)`` (ROME's code's residual
    ``v* − W k₀`` is ``δ`` too, since its ``v*`` starts from the unprefixed prompt's value).
    """
    u = update_direction(C, k_star, damping)
    d_star, d_zero = float(u @ k_star.double()), float(u @ k0.double())
    size = float(delta.double().norm() * u.norm() / W.double().norm())
    norm_star = size / abs(d_star) if d_star else math.inf
    norm_zero = size / abs(d_zero) if d_zero else math.inf
    applied = norm_zero if unprefixed_key_in_update else norm_star
    return Forecast(subject, d_star, d_zero, norm_star, norm_zero, applied, subject_first)


# --------------------------------------------------------------------------- the editor


@dataclass(eq=False)
class ROME(Editor):
    """ROME as an editor: ``ROME(hparams)(model, [request])`` writes one fact; returns its ``Edit``.

    ``hparams`` defaults to :func:`default_hparams` of the model edited. ``stats`` is ``C`` for
    ``hparams.layer`` (default: ``second_moment.layer_stats`` with ``hparams.mom2_samples`` keys of
    ``hparams.mom2_corpus``, cached); ``torch.eye(d_mlp)`` gives the C = I ablation. ``partial``: see
    ``v_star.compute_value`` (False: the straightforward computation of ``v*``). ``name`` is the
    method's name in tables and results.

    One edit: ``k*`` (eq. 3), ``v*`` (eq. 4), the :func:`forecast` of the update, and eq. 2
    (:func:`rank_one_update`), which maps ``k*`` to ``W k* + δ``, or with ``unprefixed_key_in_update``
    the unprefixed prompt's key ``k₀`` to ``W k₀ + δ`` (ROME's code). ``edit.info`` holds ``k_star``,
    ``v_star``, ``delta``, the loss curve (``losses``), the Adam ``steps`` taken, the target probability
    reached by the optimization, the update's ``denominator`` ``(C⁻¹ k*)ᵀ k``, the ``forecast``, the
    ``hparams`` and the ``seconds`` the edit takes (C excluded; ``v*``'s optimization counted as long as
    it took when it was computed, also when the cache returns it, so that a warm cache reports the
    cost of an edit rather than of reading a file, as ``second_moment.layer_stats_seconds`` does).
    ``k*`` and ``v*`` are computed once (:func:`compute_key`, ``v_star.compute_value``): an edit that
    differs only in ``C``, the damping or the key mix reads them back from the cache.
    """

    hparams: ROMEHyperParams | None = None
    stats: torch.Tensor | None = None
    name: str = "ROME"
    partial: bool = True
    progress: bool = False
    max_requests: ClassVar[int | None] = 1  # one fact per edit (paper, section 5)

    def write(self, model: Model, requests: list[EditRequest]) -> Edit:
        (request,) = requests
        v = view(model)
        hp = self.hparams or default_hparams(model)
        v.check_layer(hp.layer)  # IndexError for a layer out of range, before any work
        v.subject_span(hp.essence_prompt.replace("{}", request.subject), request.subject)  # the KL term's prompt
        C = self.stats if self.stats is not None else second_moment.layer_stats(
            model, hp.layer, corpus=hp.mom2_corpus, samples=hp.mom2_samples, progress=self.progress)
        start = time.perf_counter()
        templates = templates_for(model, hp)
        k_star = compute_key(model, request, hp.layer, templates)
        k0 = compute_key(model, request, hp.layer)
        key = k0 if hp.unprefixed_key_in_update else k_star
        tic = time.perf_counter()
        value = v_star.compute_value(model, request, hp.layer, hp, templates, progress=self.progress,
                                     partial=self.partial)
        value_wall = time.perf_counter() - tic  # the optimization, or reading it from the cache
        W = v.mlp_out_weight(hp.layer).detach().T  # ROME's W: [d_model, d_mlp]
        C = C.to(W.device)
        first = v.subject_span(request.text, request.subject).start == len(v.bos)
        fc = forecast(W, C, k_star, k0, value.delta, subject=request.subject, subject_first=first,
                      unprefixed_key_in_update=hp.unprefixed_key_in_update, damping=hp.damping)
        with torch.no_grad():
            # v* is the down projection's output, bias included; W alone must map the key to W k + δ
            W_hat = rank_one_update(W, C, k_star, W @ key + value.delta, hp.damping, key=key)  # eq. 2
        record = Edit(model, self.name, [request], layers=[hp.layer])
        v.set_mlp_out_weight(hp.layer, W_hat.T)
        denominator = fc.denominator_unprefixed if hp.unprefixed_key_in_update else fc.denominator
        record.info.update(k_star=k_star, v_star=value.v_star, delta=value.delta, losses=value.losses,
                           steps=value.steps, target_prob=value.target_prob, denominator=denominator, forecast=fc,
                           seconds=time.perf_counter() - start - value_wall + value.seconds, hparams=asdict(hp))
        return record
