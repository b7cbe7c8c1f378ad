"""ROME: Rank-One Model Editing (Meng et al. 2022, section 3).

The output matrix ``W`` of a middle-layer MLP is read as a linear associative memory
that maps keys ``k`` (the MLP's hidden activations, ``view.key_hook``) to values ``v``
(what the down projection writes, ``view.value_hook``), with ``W K ≈ V``.
ROME writes one new association ``(k*, v*)`` with the least change to the others
(paper eq. 2)::

    Ŵ = W + Λ (C⁻¹ k*)ᵀ,    Λ = (v* − W k*) / ((C⁻¹ k*)ᵀ k*),    C = K Kᵀ

so that ``Ŵ k* = v*`` while every key orthogonal to ``C⁻¹ k*`` is mapped as before.

* :func:`layer_stats` estimates ``C`` (the uncentred second moment of the keys) from a
  text corpus, streamed and cached (``factlens.second_moment``);
* :func:`compute_key` is ``k*``, the key at the subject's last token averaged over random
  text prefixes (eq. 3);
* :func:`compute_value` is ``v*``, optimized so the model says the new object (eq. 4);
* :func:`rank_one_update` is eq. 2.

Hyperparameters are chosen on CounterFact's tuning split (:func:`tuning_cases`, every tenth
case id); numbers are reported on the rest (:func:`evaluation_cases`).

:func:`apply` runs the three steps and returns an :class:`Edit`, the record of one change
of a layer's MLP output weight that can be undone bit for bit; ``with edit(model, request)``
undoes it on exit. :class:`Edit` is generic: the baselines (``factlens.baselines``) return
it too.

Notation: the library stores the values as a [d_mlp, d_model] matrix ``V`` (one value vector
per row, ``view.mlp_out_weight``); ROME's ``W`` is its transpose ([d_model, d_mlp], ``W k = v``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from factlens.models import Model, view
from factlens.second_moment import (  # noqa: F401  (ROME's statistics, re-exported: rome.layer_stats)
    collect_layer_stats,
    layer_stats,
    layer_stats_seconds,
    precompute_layer_stats,
)

if TYPE_CHECKING:
    from factlens.data import CounterFactCase

# --------------------------------------------------------------------------- requests and edits


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt.format(subject)`` followed by ``target``.

    ``prompt`` is a template with ``{}`` where the subject goes ("{} plays the sport of"),
    ``target`` the new object (" basketball"; several tokens allowed, a leading space is
    added when missing).
    """

    prompt: str
    subject: str
    target: str

    def __post_init__(self) -> None:
        if self.prompt.count("{}") != 1:
            raise ValueError(
                f"the prompt must be a template with exactly one '{{}}' where the subject goes, "
                f"e.g. '{{}} plays the sport of'; got {self.prompt!r}"
            )
        if not self.subject or not self.subject.strip():
            raise ValueError("the subject is empty: give the entity whose fact changes, e.g. 'LeBron James'")
        if not self.target or not self.target.strip():
            raise ValueError("the target is empty: give the new object to write, e.g. 'football'")

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)

    @classmethod
    def from_counterfact(cls, case: CounterFactCase) -> EditRequest:
        """The requested rewrite of a ``factlens.data.CounterFactCase`` (its ``target_new``)."""
        return cls(prompt=case.prompt, subject=case.subject, target=case.target_new)


class Edit:
    """The record of one change to layer ``layer``'s MLP output weight (any editing method).

    Construct it *before* changing the weight: it clones the weight as it is then
    (``original``). :meth:`undo` copies that clone back, so the model is restored bit for bit;
    it is idempotent. As a context manager it undoes on exit, also when the body raises.
    Stacked edits of one layer must be undone in reverse order (each restores the weight it saw).
    """

    def __init__(self, model: Model, layer: int, method: str, request: EditRequest | None,
                 info: dict[str, Any] | None = None):
        self.model = model
        self.layer = layer
        self.method = method
        self.request = request
        self.original: torch.Tensor = view(model).mlp_out_weight(layer).detach().clone()
        self.info: dict[str, Any] = dict(info or {})
        self.undone = False

    def delta(self) -> torch.Tensor:
        """The change made to the values, ``V̂ − V`` ([d_mlp, d_model]; zero once undone)."""
        return view(self.model).mlp_out_weight(self.layer).detach() - self.original

    def undo(self) -> None:
        """Restore the weight exactly as it was when this edit was recorded (idempotent)."""
        if not self.undone:
            view(self.model).set_mlp_out_weight(self.layer, self.original)
            self.undone = True

    def __enter__(self) -> Edit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def __repr__(self) -> str:
        state = "undone" if self.undone else "applied"
        return f"Edit({self.method}, layer {self.layer}, {self.request!r}, {state})"


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
        v_steps: at most this many steps for ``v*`` (see :func:`compute_value` for the early stop). Paper: 20.
        kl_factor: weight of the essence term, KL(P[x | "{subject} is a"] before ‖ after). Paper: 0.0625.
        weight_decay: weight of ``‖δ‖ / ‖v‖²`` in the loss. Paper: 0.5.
        clamp_norm_factor: ``‖δ‖`` is clamped to this multiple of ``‖v‖`` after every step. Paper: 4.
        mom2_samples: number of keys (token positions of the corpus) in ``C``. The paper uses
            100,000 Wikipedia articles (tens of millions of tokens); see :func:`layer_stats`.
        mom2_corpus: the corpus ``C`` is estimated on (``factlens.data.corpus``).
        essence_prompt: the KL prompt's template. Paper: "{} is a".
        damping: ``C + damping · mean(diag C) · I`` is solved (:func:`rank_one_update`), so that a
            C from fewer keys than its size stays invertible; too small to matter otherwise.
        seed: seed of the sampled prefixes.
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


# Defaults per model. For GPT-2 XL (and its smaller siblings, GPT-J) the paper's values. For the
# default model (Gemma 3 270M, 18 layers): layer 6, a third of the way up as 17 of 48 is in
# GPT-2 XL, where the tracing chapter's MLP effect at the last subject token is strong; the
# editing chapter's layer sweep reports the best layer on its cases beside it. 3 + 3 prefixes
# (the paper: 10 + 10) cut the cost of v* on a CPU by two thirds (one edit: about 10 steps of
# a forward and backward pass over 7 prompts + the essence prompt). Clamp ‖δ‖ ≤ 1·‖v‖, not 4:
# Gemma's post-feedforward RMSNorm rescales the MLP output, so a δ four times ‖v‖ overrides
# the output direction of every key that overlaps k* a little (on the Curie example of the
# editing chapter, clamp 4 or 2 turns Millikan and Einstein to "medicine" too; 1 leaves
# them, with the same efficacy and paraphrase). 20,000 keys for C: ten times the MLP's width (2,048), see the chapter's
# convergence study.
_DEFAULTS: dict[str, ROMEHyperParams] = {
    "gpt2-xl": ROMEHyperParams(layer=17),
    "gpt2-medium": ROMEHyperParams(layer=8),
    "gpt2-large": ROMEHyperParams(layer=12),
    "EleutherAI/gpt-j-6B": ROMEHyperParams(layer=5, v_lr=0.5),
    "gemma-3-270m": ROMEHyperParams(layer=6, context_templates=((5, 3), (10, 3)), clamp_norm_factor=1.0,
                                    mom2_samples=20_000),
}


def default_hparams(model: Model) -> ROMEHyperParams:
    """The hyperparameters for ``model`` (its factlens name); unknown models get the paper's
    values at the layer a third of the way up (where tracing usually peaks)."""
    v = view(model)
    known = _DEFAULTS.get(v.name)
    if known is not None and known.layer < v.n_layers:
        return known
    return ROMEHyperParams(layer=max(0, v.n_layers // 3), mom2_samples=min(100_000, 20 * v.d_mlp))


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
                      seed: int = 0) -> list[str]:
    """``["{}", "<prefix 1>. {}", ...]``: random text prefixes sampled from the model itself.

    For each ``(length, count)``, ``count`` continuations of the words "The", "Therefore",
    "Because", "I", "You" in turn, ``length`` tokens each, sampled from the model's top 5
    next tokens (seeded), as MEMIT's code samples them.
    """
    v = view(model)
    generator = torch.Generator().manual_seed(seed)
    templates = ["{}"]
    for length, count in spec:
        rows = [v.token_ids(_PREFIX_STARTS[i % len(_PREFIX_STARTS)]) for i in range(count)]
        for _ in range(length):
            batch = v.batch(rows)
            logits = v.logits_at(batch.ids, batch.last).float().cpu()
            top = logits.topk(5, dim=-1)
            picks = torch.multinomial(top.values.softmax(-1), 1, generator=generator)[:, 0]
            for i, r in enumerate(rows):
                r.append(int(top.indices[i, picks[i]]))
        for r in rows:
            text = v.tokenizer.decode(r[len(v.bos):], skip_special_tokens=True)
            templates.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return templates


def templates_for(model: Model, hp: ROMEHyperParams) -> list[str]:
    """The prefix templates of ``hp`` (:func:`context_templates`), sampled once per model and spec."""
    memo = view(model).memo
    key = ("rome.context_templates", tuple(map(tuple, hp.context_templates)), hp.seed)
    if key not in memo:
        memo[key] = context_templates(model, hp.context_templates, hp.seed)
    return memo[key]


def _prefixed_texts(request: EditRequest, templates: Sequence[str]) -> list[str]:
    """``x_j + p`` with the subject filled in: each template around the request's prompt."""
    return [t.replace("{}", request.prompt).replace("{}", request.subject) for t in templates]


@torch.no_grad()
def compute_key(model: Model, request: EditRequest, layer: int, templates: Sequence[str] = ("{}",)) -> torch.Tensor:
    """``k* = (1/N) Σ_j k(x_j + s)`` (paper eq. 3): the MLP key at the subject's last token,
    averaged over the prompts ``x_j + s`` (each prefix template filled with the request's prompt)."""
    v = view(model)
    prompts = _prefixed_texts(request, templates)
    last = torch.tensor([v.subject_span(p, request.subject).last for p in prompts])
    keys = v.capture(v.batch(prompts).ids, [v.key_hook(layer)])[v.key_hook(layer)]
    return keys[torch.arange(len(prompts)), last].mean(0)


# --------------------------------------------------------------------------- the value v*


@dataclass(frozen=True)
class RewritePrompts:
    """The prompts of eq. 4 in one right-padded batch, and where the loss reads them.

    Rows ``0 … N−1`` are the rewriting prompts ``x_j + p`` followed by the new object's tokens
    ``o*`` (teacher forced: ``o*_t`` is scored at the position before it); row ``N`` is the
    essence prompt ``p'`` ("{subject} is a"). ``z = v + δ`` is written at ``subject_last``
    in every row.
    """

    ids: torch.Tensor               # [N + 1, t]
    subject_last: torch.Tensor      # [N + 1]: the subject's last token in each row
    target: torch.Tensor            # [T]: o*'s token ids
    target_rows: torch.Tensor       # [N·T]: the row of each scored position
    target_positions: torch.Tensor  # [N·T]: the position whose next token must be o*_t
    essence_position: int           # where the KL term reads P[x | p']
    n: int                          # N, the number of rewriting prompts

    @classmethod
    def build(cls, model: Model, request: EditRequest, templates: Sequence[str],
              essence_prompt: str) -> RewritePrompts:
        v = view(model)
        target = v.target_ids(request.target)
        rewriting = _prefixed_texts(request, templates)
        essence = essence_prompt.replace("{}", request.subject)
        # each prompt's ids followed by the target's ids exactly (no retokenization)
        heads = [v.token_ids(p) for p in rewriting]
        rows = [h + target for h in heads] + [v.token_ids(essence)]
        last = [v.subject_span(p, request.subject).last for p in [*rewriting, essence]]
        t = len(target)
        return cls(
            ids=v.batch(rows).ids,
            subject_last=torch.tensor(last, device=v.device),
            target=torch.tensor(target, device=v.device),
            target_rows=torch.arange(len(heads)).repeat_interleave(t),
            target_positions=torch.tensor([len(h) - 1 + j for h in heads for j in range(t)]),
            essence_position=len(rows[-1]) - 1,
            n=len(heads),
        )

    def log_probs(self, model: Model, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the final-normed hidden states [N + 1, t, d]: ``log P[o*_t | x_j + p, o*_<t]``
        as [N, T], and ``log P[x | p']`` as [1, d_vocab] (only these positions are unembedded)."""
        v = view(model)
        new = v.unembed(hidden[self.target_rows, self.target_positions][:, None])[:, 0].float().log_softmax(-1)
        new = new[torch.arange(len(self.target_rows)), self.target.repeat(self.n)].view(self.n, -1)
        essence = v.unembed(hidden[-1:, self.essence_position][:, None])[:, 0].float().log_softmax(-1)
        return new, essence


def _write_at(rows: torch.Tensor, positions: torch.Tensor, delta: torch.Tensor):
    """A hook that adds ``δ`` to the value at ``(rows[i], positions[i])``: ``z = v + δ``."""
    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        x[rows, positions] = x[rows, positions] + delta
        return x
    return hook


@torch.no_grad()
def _values_before(model: Model, prompts: RewritePrompts, layer: int) -> torch.Tensor:
    """``v``: the value at the subject's last token of each row before any change, [N + 1, d_model]."""
    v = view(model)
    values = v.capture(prompts.ids, [v.value_hook(layer)])[v.value_hook(layer)]
    return values[torch.arange(len(prompts.subject_last), device=values.device), prompts.subject_last]


@dataclass
class ValueResult:
    """What :func:`compute_value` found: ``v* = v + δ`` and how the optimization went."""

    v_star: torch.Tensor          # the down projection's output to write (bias included)
    v: torch.Tensor               # its output before the edit, averaged over the prompts
    delta: torch.Tensor           # v* − v
    losses: list[dict[str, float]] = field(default_factory=list)  # per step: nll, kl, decay, total
    target_prob: float = 0.0      # mean P(target) over the prompts at the last step


def compute_value(model: Model, request: EditRequest, layer: int, hp: ROMEHyperParams,
                  templates: Sequence[str] = ("{}",), progress: bool = False) -> ValueResult:
    """``v* = argmin_z  (1/N) Σ_j −log P_G(m_i:=z)[o* | x_j + p]  +  kl · D_KL(P_G[x | p'] ‖ P_G(m_i:=z)[x | p'])``
    (paper eq. 4), plus ``weight_decay · ‖δ‖ / ‖v‖²``.

    ``z = v + δ`` replaces the output of layer ``layer``'s down projection at the subject's
    last token in every prompt ``x_j + p`` (the prefixed prompts followed by the target's
    first tokens) and in the essence prompt ``p'`` ("{subject} is a"); ``δ`` is optimized with
    Adam and clamped to ``clamp_norm_factor · ‖v‖`` after every step, for at most ``v_steps``
    steps, stopping once NLL + KL term is below 0.05 (ROME's code stops on the whole loss; on
    small models the decay term alone stays above that). The model's weights do not change here.
    """
    v = view(model)
    prompts = RewritePrompts.build(model, request, templates, hp.essence_prompt)
    rows = torch.arange(prompts.n + 1, device=v.device)
    v_before = _values_before(model, prompts, layer)[:prompts.n].mean(0)
    v_norm = v_before.norm()
    delta = torch.zeros(v.d_model, device=v.device, requires_grad=True)
    hooks = [(v.value_hook(layer), _write_at(rows, prompts.subject_last, delta))]
    optimizer = torch.optim.Adam([delta], lr=hp.v_lr)
    losses: list[dict[str, float]] = []
    essence_before: torch.Tensor | None = None  # log P_G[x | p'], the unedited model's
    target_prob = 0.0
    with v.frozen_except([]):
        for _ in tqdm(range(hp.v_steps), desc="v*", disable=not progress, leave=False):
            optimizer.zero_grad()
            log_p_new, log_p_essence = prompts.log_probs(model, v.final_hidden(prompts.ids, fwd_hooks=hooks))
            if essence_before is None:
                essence_before = log_p_essence.detach().clone()
            nll = -log_p_new.mean(1).mean()
            kl = torch.nn.functional.kl_div(log_p_essence, essence_before, log_target=True, reduction="batchmean")
            decay = hp.weight_decay * delta.norm() / v_norm**2
            loss = nll + hp.kl_factor * kl + decay
            target_prob = log_p_new.detach().sum(1).exp().mean().item()
            losses.append({k: x.item() for k, x in (("nll", nll), ("kl", kl), ("decay", decay), ("total", loss))})
            if (nll + hp.kl_factor * kl).item() < 5e-2:  # the fact is written; the decay term alone never gets there
                break
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                max_norm = hp.clamp_norm_factor * v_norm
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    d = delta.detach().clone()
    return ValueResult(v_star=v_before + d, v=v_before, delta=d, losses=losses, target_prob=target_prob)


# --------------------------------------------------------------------------- the update


def update_direction(C: torch.Tensor, k_star: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """``C⁻¹ k*`` (float64, on ``k*``'s device), the key-space direction of ROME's update (paper
    eq. 2), solving ``(C + damping · mean(diag C) · I) u = k*``."""
    Cd = C.double().to(k_star.device)
    if damping:
        Cd = Cd + damping * Cd.diagonal().mean() * torch.eye(Cd.shape[0], dtype=Cd.dtype, device=Cd.device)
    return torch.linalg.solve(Cd, k_star.double())


def rank_one_update(W: torch.Tensor, C: torch.Tensor, k_star: torch.Tensor, v_star: torch.Tensor,
                    damping: float = 0.0) -> torch.Tensor:
    """``Ŵ = W + Λ (C⁻¹ k*)ᵀ`` with ``Λ = (v* − W k*) / ((C⁻¹ k*)ᵀ k*)`` (paper eq. 2).

    ``W`` is [d_out, d_in] (``W k = v``), ``C`` [d_in, d_in], ``k*`` [d_in], ``v*`` [d_out].
    Then ``Ŵ k* = v*`` exactly (up to rounding) and ``Ŵ k = W k`` for every ``k`` with
    ``(C⁻¹ k*)ᵀ k = 0``. ``damping`` adds ``damping · mean(diag C) · I`` to ``C`` before
    solving (0: none), for a ``C`` estimated from fewer keys than its size.
    """
    if W.shape != (v_star.shape[0], k_star.shape[0]) or C.shape != (k_star.shape[0],) * 2:
        raise ValueError(f"shapes do not fit: W {tuple(W.shape)}, C {tuple(C.shape)}, "
                         f"k* {tuple(k_star.shape)}, v* {tuple(v_star.shape)}")
    u = update_direction(C, k_star, damping)
    Lam = (v_star.double() - W.double() @ k_star.double()) / (u @ k_star.double())
    return (W.double() + torch.outer(Lam, u)).to(W.dtype)


# --------------------------------------------------------------------------- apply / edit


def apply(model: Model, request: EditRequest, *, layer: int | None = None,
          hparams: ROMEHyperParams | None = None, stats: torch.Tensor | None = None,
          progress: bool = False) -> Edit:
    """Write ``request`` into ``model`` with ROME; return the :class:`Edit` (``.undo()`` reverts).

    ``layer`` overrides ``hparams.layer``; ``hparams`` defaults to :func:`default_hparams`.
    ``stats`` is ``C`` for that layer (default: :func:`layer_stats` with ``hparams.mom2_samples``
    keys of ``hparams.mom2_corpus``, cached); ``torch.eye(d_mlp)`` gives the C = I ablation.
    ``edit.info`` holds ``k_star``, ``v_star``, the loss curve, the target probability
    reached by the optimization and the seconds taken.
    """
    v = view(model)
    hp = hparams or default_hparams(model)
    if layer is not None:
        hp = replace(hp, layer=layer)
    v.check_layer(hp.layer)  # IndexError for a layer out of range, before any work
    for prompt in (request.text, hp.essence_prompt.replace("{}", request.subject)):
        v.subject_span(prompt, request.subject)  # SubjectNotFoundError early
    v.target_ids(request.target)
    C = stats if stats is not None else layer_stats(model, hp.layer, corpus=hp.mom2_corpus,
                                                    samples=hp.mom2_samples, progress=progress)
    start = time.perf_counter()
    templates = templates_for(model, hp)
    k_star = compute_key(model, request, hp.layer, templates)
    value = compute_value(model, request, hp.layer, hp, templates, progress=progress)
    W = v.mlp_out_weight(hp.layer).T  # ROME's W: [d_model, d_mlp]
    with torch.no_grad():
        # v* is the down projection's output, bias included; W alone must map k* to W k* + δ
        W_hat = rank_one_update(W, C.to(W.device), k_star, W @ k_star + value.delta, damping=hp.damping)
    record = Edit(model, hp.layer, "ROME", request)
    v.set_mlp_out_weight(hp.layer, W_hat.T)
    record.info.update(k_star=k_star, v_star=value.v_star, delta=value.delta, losses=value.losses,
                       target_prob=value.target_prob, seconds=time.perf_counter() - start,
                       hparams=asdict(hp))
    return record


def edit(model: Model, request: EditRequest, **kwargs: Any) -> Edit:
    """``with edit(model, request) as e:`` ROME applied for the body, undone on exit (also
    when the body raises). Same arguments as :func:`apply`."""
    return apply(model, request, **kwargs)


# --------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(model: Model, prompts: Iterable[str], max_new_tokens: int = 30, *,
             top_k: int | None = None, seed: int = 0) -> list[str]:
    """Continue each prompt by ``max_new_tokens`` tokens: greedy, or sampled from the top
    ``top_k`` tokens with a seeded generator. Returns the continuations (prompt not included)."""
    v = view(model)
    generator = torch.Generator().manual_seed(seed)
    prompts = list(prompts)
    rows = [v.token_ids(p) for p in prompts]
    start = [len(r) for r in rows]
    for _ in range(max_new_tokens):
        batch = v.batch(rows)
        logits = v.logits_at(batch.ids, batch.last).float().cpu()
        if top_k is None:
            nxt = logits.argmax(-1)
        else:
            top = logits.topk(top_k, dim=-1)
            nxt = top.indices.gather(1, torch.multinomial(top.values.softmax(-1), 1, generator=generator))[:, 0]
        for r, t in zip(rows, nxt.tolist()):
            r.append(t)
    return [v.tokenizer.decode(r[s:], skip_special_tokens=True) for r, s in zip(rows, start)]

