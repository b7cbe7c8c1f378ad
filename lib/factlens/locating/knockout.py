"""How the attribute reaches the last token (Geva et al. 2023, "Dissecting Recall of Factual Associations
in Auto-Regressive Language Models", EMNLP): attention knockout and attribute extraction.

Attention knockout (the paper's "Attention Knockout" and its information-flow experiment, Figure 2).
To ask whether information flows from source positions ``S`` to the last position ``N`` at layer
``l``, the edges ``N → j``, ``j ∈ S``, are cut by setting their attention scores to ``−∞`` before the
softmax, in every head:

    M^(l)_{N j} = −∞ for j ∈ S,   A^(l) = softmax(Q^(l) K^(l)ᵀ / √d + M^(l)),

so the last position spreads its attention over the other positions only. The edges are cut in a
window of ``k`` consecutive layers around ``l`` (the paper's code: ``k = 9`` of GPT-2 XL's 48 layers,
the window placed as causal tracing's, :func:`factlens.locating.tracing.window_layers`), for three
source sets: the subject's positions, the other positions before the last one ("non-subject") and
the last position itself; the effect is the relative change of the probability of the model's own
top answer, ``(p_knocked − p) / p`` (the paper plots it × 100, in percent). The scores are set at
``attn.hook_attn_scores`` (``View.attn_scores_hook``), where TransformerLens' bridges hand the
pre-softmax scores, causal and sliding-window masks applied and grouped keys repeated per query head,
on to the softmax.

Our prompts start with the tokenizer's beginning-of-sequence token (GPT-2's ``<|endoftext|>`` too);
the paper's inputs had none, so the non-subject set here is the prompt's own tokens: the BOS token is
never knocked out (:func:`source_positions`).

Attribute extraction (the paper's "attribute extraction" by the attention and MLP sublayers, with its
"extraction rate"). The output a sublayer adds to the residual stream at the last position, ``a^(l)``
(attention) or ``m^(l)`` (MLP), is projected to the vocabulary, and an *extraction event* is the
answer being its top token:

    extracted^(l) = [argmax_t (a^(l) W_U)_t = o],

``o`` the model's own top prediction. The paper projects with the embedding matrix ``E`` (GPT-2's
tied unembedding) and no final norm; so does :func:`attribute_extraction` by default, with
``View.unembed``'s ``W_U`` (plus ``b_U`` where a model has one); ``ExtractionSettings(final_norm=True)``
projects through the final norm first, as the logit lens does (a labelled variant: a norm with
per-dimension weights changes which token is on top).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from factlens.core.models import Model, view
from factlens.core.view import TokenSpan, View
from factlens.locating.tracing import window_layers

#: The source sets whose edges to the last position are knocked out (the paper's Figure 2).
SOURCE_SETS: tuple[str, ...] = ("subject", "non-subject", "last")
#: The paper's knockout window: 9 consecutive layers of GPT-2 XL's 48 (its code's ``window = 9``).
PAPER_WINDOW, PAPER_DEPTH = 9, 48
SUBLAYERS: tuple[str, ...] = ("attn", "mlp")


def knockout_window(n_layers: int) -> int:
    """The paper's window (9 of GPT-2 XL's 48 layers) scaled to a model's depth: ``round(9 · L / 48)``
    (halves rounded up), at least 1; 3 of Gemma 3 270M's 18 layers."""
    return max(1, math.floor(PAPER_WINDOW * n_layers / PAPER_DEPTH + 0.5))


@dataclass(frozen=True)
class KnockoutSettings:
    """One attention-knockout experiment (Geva et al. 2023), declared as a value.

    Attributes:
        window: the consecutive layers knocked out together, around each layer ``l``
            (:func:`factlens.locating.tracing.window_layers`); ``None``: :func:`knockout_window`.
        sources: the source sets knocked out, some of :data:`SOURCE_SETS`.
    """

    _: KW_ONLY
    window: int | None = None
    sources: tuple[str, ...] = SOURCE_SETS

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if isinstance(self.sources, str):
            raise TypeError(f"sources must be a list of source sets, got the string {self.sources!r}")
        unknown = [s for s in self.sources if s not in SOURCE_SETS]
        if unknown or not self.sources:
            raise ValueError(f"sources must be some of {SOURCE_SETS}, got {tuple(self.sources)}")
        object.__setattr__(self, "sources", tuple(self.sources))

    def for_depth(self, n_layers: int) -> KnockoutSettings:
        """These settings with the window a model of ``n_layers`` layers uses."""
        return self if self.window is not None else replace(self, window=knockout_window(n_layers))


def source_positions(span: TokenSpan, n_tokens: int, first: int = 1) -> dict[str, list[int]]:
    """The positions of each source set in a prompt of ``n_tokens`` tokens whose prompt text starts at
    position ``first`` (after the BOS token): the subject's, the other positions before the last
    ("non-subject"), and the last one."""
    last = n_tokens - 1
    if span.stop > last:
        raise ValueError("the prompt must go on after the subject: the last position is where the attribute is read")
    return {"subject": list(span),
            "non-subject": [j for j in range(first, last) if j not in span],
            "last": [last]}


def knockout_hooks(v: View, blocked: torch.Tensor, query: int) -> list[tuple[str, Any]]:
    """Forward hooks that cut attention edges ``query → j`` (Geva et al. 2023's knockout): in row ``b``
    of the batch, at layer ``l``, every key ``j`` with ``blocked[b, l, j]`` gets the score ``−∞`` before
    the softmax, in every head. ``blocked``: bool [batch, n_layers, n_tokens]. A query left with no key
    to attend to (every visible key blocked) is an error."""
    if blocked.ndim != 3 or blocked.shape[1] != v.n_layers:
        raise ValueError(f"blocked must be [batch, {v.n_layers} layers, tokens], got {tuple(blocked.shape)}")

    def hook_for(layer: int):
        def knock(scores: torch.Tensor, hook: Any) -> torch.Tensor:
            cut = blocked[:, layer].to(scores.device)[:, None, :]  # [b, 1, key]
            row = scores[:, :, query].masked_fill(cut, -torch.inf)
            if not (row > torch.finfo(row.dtype).min).any(-1).all():
                raise ValueError(f"at layer {layer} every key position {query} can attend to is blocked; "
                                 "leave at least one edge")
            scores = scores.clone()
            scores[:, :, query] = row
            return scores
        return knock

    return [(v.attn_scores_hook(l), hook_for(l)) for l in range(v.n_layers)]


@dataclass
class Knockout:
    """One prompt's attention knockout: ``probs[source][l]`` is the probability of the answer with the
    edges from the last position to that source set cut in the window of layers around ``l``."""

    prompt: str
    subject: str
    tokens: list[str]
    subject_span: TokenSpan
    answer: str
    answer_id: int
    base_prob: float
    window: int
    positions: dict[str, list[int]]
    probs: dict[str, torch.Tensor]

    @property
    def relative_change(self) -> dict[str, torch.Tensor]:
        """``(p_knocked − p) / p`` per source set and layer (the paper's Figure 2 shows it × 100)."""
        return {s: (p - self.base_prob) / self.base_prob for s, p in self.probs.items()}


@torch.no_grad()
def knockout(model: Model, prompt: str, subject: str, settings: KnockoutSettings = KnockoutSettings()) -> Knockout:
    """Attention knockout of ``prompt`` (Geva et al. 2023, Figure 2): for each source set of ``settings``
    and each layer ``l``, the probability of the model's own top answer with the edges from the last
    position to that set cut in the window of layers around ``l``. One forward pass: a row per
    (set, layer), plus the unblocked prompt."""
    v = view(model)
    settings = settings.for_depth(v.n_layers)
    span = v.subject_span(prompt, subject)
    ids = v.batch([prompt]).ids
    n_tokens, L = ids.shape[1], v.n_layers
    positions = source_positions(span, n_tokens, len(v.bos))
    blocked = torch.zeros(1 + len(settings.sources) * L, L, n_tokens, dtype=torch.bool)
    for s, source in enumerate(settings.sources):
        for l in range(L):
            for k in window_layers(l, settings.window, L):
                blocked[1 + s * L + l, k, positions[source]] = True
    final = v.final_hidden(ids.expand(len(blocked), -1), knockout_hooks(v, blocked, n_tokens - 1))[:, -1]
    log_z, top = v.log_normalizer(final)
    answer_id = int(top[0])
    probs = v.token_log_probs(final, [answer_id], log_z=log_z)[:, 0].exp().double().cpu()
    return Knockout(prompt=prompt, subject=subject, tokens=v.str_tokens(prompt), subject_span=span,
                    answer=v.tokenizer.decode([answer_id]), answer_id=answer_id, base_prob=float(probs[0]),
                    window=settings.window, positions={s: positions[s] for s in settings.sources},
                    probs={s: probs[1 + i * L:1 + (i + 1) * L] for i, s in enumerate(settings.sources)})


def knockout_facts(model: Model, facts: Sequence[Any], settings: KnockoutSettings = KnockoutSettings(), *,
                   progress: bool = True) -> list[Knockout]:
    """:func:`knockout` of every fact (``fact.prompt``, ``fact.subject``)."""
    return [knockout(model, f.prompt, f.subject, settings)
            for f in tqdm(facts, desc="attention knockout", disable=not progress)]


def mean_relative_change(knockouts: Sequence[Knockout]) -> dict[str, torch.Tensor]:
    """The relative change of the answer's probability per source set and layer, averaged over facts
    (the paper's Figure 2, in fractions): {source set: [n_layers]}."""
    if not knockouts:
        raise ValueError("no knockouts to average")
    return {s: torch.stack([k.relative_change[s] for k in knockouts]).mean(0) for s in knockouts[0].probs}


def band_change(knockouts: Sequence[Knockout], source: str, layers: Sequence[int] | range) -> torch.Tensor:
    """Per fact, the relative change of the answer's probability averaged over ``layers`` (windows centred there)
    for one source set: [n_facts]."""
    chosen = list(layers)
    if not chosen:
        raise ValueError("no layers to average over")
    return torch.stack([k.relative_change[source][chosen].mean() for k in knockouts])


def drop_depth(k: Knockout, source: str) -> float:
    """Where knocking out ``source`` drops the answer, as a relative depth: the mean of ``l / (L − 1)`` weighted by
    the drop ``max(0, −Δ_l)`` of the relative change at each layer ``l``; NaN when no window lowers the answer."""
    drop = (-k.relative_change[source]).clamp(min=0).double()
    if not drop.sum() > 0:
        return math.nan
    depth = torch.arange(len(drop), dtype=torch.float64) / max(1, len(drop) - 1)
    return float((drop * depth).sum() / drop.sum())


@dataclass(frozen=True)
class KnockedOut:
    """One prompt's answer with the edges from the last position to ``source`` cut in ``layers`` (the knockout
    explorer's): the answer (the unblocked run's top token), its probability before and after, the top tokens
    after with their probabilities."""

    answer: str
    source: str
    layers: tuple[int, ...]
    base_prob: float
    prob: float
    top_after: list[tuple[str, float]]

    @property
    def relative_change(self) -> float:
        return (self.prob - self.base_prob) / self.base_prob


@torch.no_grad()
def knock_out(model: Model, prompt: str, subject: str, source: str, layers: Sequence[int], k: int = 5) -> KnockedOut:
    """Cut the edges from the last position to ``source`` (one of :data:`SOURCE_SETS`) in the given ``layers``, all
    at once, and read the model's own answer's probability before and after (one forward pass of two rows)."""
    if source not in SOURCE_SETS:
        raise ValueError(f"source must be one of {SOURCE_SETS}, got {source!r}")
    v = view(model)
    chosen = tuple(sorted({v.check_layer(int(layer)) for layer in layers}))
    if not chosen:
        raise ValueError("choose at least one layer to knock out")
    span = v.subject_span(prompt, subject)
    ids = v.batch([prompt]).ids
    n_tokens = ids.shape[1]
    positions = source_positions(span, n_tokens, len(v.bos))[source]
    if not positions:
        raise ValueError(f"the prompt has no {source} positions to knock out")
    blocked = torch.zeros(2, v.n_layers, n_tokens, dtype=torch.bool)
    for layer in chosen:
        blocked[1, layer, positions] = True
    final = v.final_hidden(ids.expand(2, -1), knockout_hooks(v, blocked, n_tokens - 1))[:, -1]
    log_z, top = v.log_normalizer(final)
    answer_id = int(top[0])
    probs = v.token_log_probs(final, [answer_id], log_z=log_z)[:, 0].exp().double().cpu()
    after = v.unembed(final[1:])[0].float().softmax(-1).topk(k)
    decode = v.tokenizer.decode
    return KnockedOut(answer=decode([answer_id]), source=source, layers=chosen, base_prob=float(probs[0]),
                      prob=float(probs[1]), top_after=[(decode([int(t)]), float(p))
                                                       for p, t in zip(after.values, after.indices)])


# --------------------------------------------------------------------------- attribute extraction


@dataclass(frozen=True)
class ExtractionSettings:
    """How sublayer outputs are projected to the vocabulary (Geva et al. 2023, attribute extraction).

    Attributes:
        final_norm: project through the final norm first (the logit lens); the paper does not (``False``).
        batch_size: prompts per forward pass.
    """

    _: KW_ONLY
    final_norm: bool = False
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass
class Extraction:
    """What the sublayers of many prompts write at the last position: ``tops[sublayer][f, l]`` is the top
    token of sublayer ``sublayer``'s output at layer ``l`` projected to the vocabulary, ``answers[f]`` the
    model's top prediction; an extraction event (``hits``) is the two being equal."""

    prompts: list[str]
    answers: torch.Tensor
    tops: dict[str, torch.Tensor]
    settings: ExtractionSettings

    @property
    def n(self) -> int:
        return len(self.prompts)

    @property
    def hits(self) -> dict[str, torch.Tensor]:
        """Extraction events: ``hits[sublayer][f, l] = (tops[sublayer][f, l] == answers[f])``, [n, n_layers]."""
        return {s: top == self.answers[:, None] for s, top in self.tops.items()}

    def rate(self, sublayer: str) -> torch.Tensor:
        """The extraction rate per layer: the share of prompts with an extraction event there, [n_layers]."""
        return self.hits[_sublayer(sublayer)].double().mean(0)

    def any_layer_rate(self, sublayer: str, layers: Sequence[int] | range | None = None) -> float:
        """The share of prompts with an extraction event in at least one of ``layers`` (default all; the
        paper's per-example rate)."""
        hits = self.hits[_sublayer(sublayer)]
        chosen = list(range(hits.shape[1])) if layers is None else list(layers)
        return float(hits[:, chosen].any(1).double().mean())


def _sublayer(name: str) -> str:
    if name not in SUBLAYERS:
        raise ValueError(f"sublayer must be one of {SUBLAYERS}, got {name!r}")
    return name


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    return (items[k:k + size] for k in range(0, len(items), size))


@torch.no_grad()
def attribute_extraction(model: Model, prompts: Sequence[str], settings: ExtractionSettings = ExtractionSettings(), *,
                         progress: bool = False) -> Extraction:
    """Extraction events of every attention and MLP sublayer at the last position of each prompt
    (Geva et al. 2023): ``argmax_t (x W_U)_t = o`` for the sublayer's output ``x`` (``View.attn_out_hook``
    / ``View.mlp_out_hook``: what it adds to the residual stream) and the model's top answer ``o``; through
    the final norm first with ``settings.final_norm``."""
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of prompts, got the string {prompts!r}")
    if not prompts:
        raise ValueError("attribute_extraction needs at least one prompt")
    v = view(model)
    L = v.n_layers
    names = {"attn": [v.attn_out_hook(l) for l in range(L)], "mlp": [v.mlp_out_hook(l) for l in range(L)]}
    answers: list[torch.Tensor] = []
    tops: dict[str, list[torch.Tensor]] = {s: [] for s in SUBLAYERS}
    chunks = list(_chunks(list(prompts), settings.batch_size))
    for chunk in tqdm(chunks, desc="attribute extraction", disable=not progress):
        batch = v.batch(chunk)
        got = v.capture(batch.ids, [*names["attn"], *names["mlp"], v.final_hook])
        rows, last = torch.arange(len(chunk)), batch.last.to(batch.ids.device)
        answers.append(v.log_normalizer(got[v.final_hook][rows, last])[1].cpu())
        outputs = torch.stack([got[n][rows, last] for s in SUBLAYERS for n in names[s]], 1)  # [b, 2L, d]
        if settings.final_norm:
            outputs = v.final_norm(outputs)
        projected_top = v.log_normalizer(outputs.reshape(-1, v.d_model))[1].reshape(len(chunk), 2, L).cpu()
        for k, s in enumerate(SUBLAYERS):
            tops[s].append(projected_top[:, k])
    return Extraction(prompts=list(prompts), answers=torch.cat(answers),
                      tops={s: torch.cat(t) for s, t in tops.items()}, settings=settings)
