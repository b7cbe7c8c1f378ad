"""Causal tracing (Meng et al. 2022, §2.1): which hidden states carry a fact to the prediction?

A factual prompt ("The Space Needle is located in the city of", subject "The Space Needle")
is run three times:

* clean: ``P[o]``, the probability of the answer token ``o``;
* corrupted: Gaussian noise ``ε ~ N(0, ν²)`` is added to the embeddings of the subject's
  tokens (``ν`` = 3 × the standard deviation of the embeddings as layer 0 receives them):
  ``P*[o]``, averaged over ``samples`` noise draws;
* corrupted-with-restoration: the same, with one state ``h_i^(l)`` (or the MLP / attention
  outputs of a window of layers around ``l`` at token ``i``) set back to its clean value:
  ``P*,clean h_i^(l)[o]``.

Total effect ``TE = P[o] − P*[o]``; indirect effect ``IE = P*,clean h_i^(l)[o] − P*[o]``
(paper, §2.1). :func:`trace` returns the restored probabilities over (token, layer), for one
intervention declared as a value (:class:`TraceSettings`: what is restored, how the subject is
corrupted); :mod:`factlens.locating.average_effects` averages the indirect effects over many facts
by token group (paper, §2.2 and Figure 2).

Speed. The straightforward loop (:func:`trace_straightforward`, the paper's code) runs the
whole model, with logits over the whole vocabulary at every position, once per (token,
layer). :func:`trace` computes the same numbers with far less work:

* one run of the clean prompt and its ``S`` corrupted copies is recorded
  (``View.record``: block inputs, block arguments, attention keys and values);
* a restoration at token ``i`` and layer ``l`` changes nothing below its first re-run block
  (:func:`first_rerun_block`) and nothing before token ``i``: only positions ``≥ i`` of the
  blocks above are re-run (``View.run_blocks``), attending to the corrupted run's keys and
  values of the earlier positions;
* all restorations of one token, every layer and every noise sample, go through the blocks
  as one batch: the rows of the restorations at layer ``l`` join it at their first block;
* only the last position is read: the last block computes the others' keys and values alone
  (``View.run_blocks(..., last_only=True)``), and only it is projected to the vocabulary;
* what cannot change is not computed (:func:`restoration_can_matter`); those restorations
  score exactly ``P*[o]``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from factlens.core.cache import cached_tensors
from factlens.core.forward import Recording
from factlens.core.models import Model, view
from factlens.core.view import TokenSpan, View
from factlens.evidence import papers

Kind = Literal["hidden", "mlp", "attn"]
KINDS: tuple[str, ...] = ("hidden", "mlp", "attn")
NOISE_KINDS: tuple[str, ...] = ("gaussian", "uniform", "student-t", "swap")
TOKEN_GROUPS: tuple[str, ...] = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


# --------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class TraceSettings:
    """One causal-tracing intervention, declared as a value (Meng et al. 2022, §2.1): what is
    corrupted, how, and what is restored. :func:`trace`, :func:`trace_facts`,
    :func:`trace_straightforward` and the trace explorer take it; the paper's settings are the
    default, ``TraceSettings("mlp", samples=3)`` changes what it names.

    Attributes:
        kind: the state restored at (token ``i``, layer ``l``): ``"hidden"``, ``h_i^(l)``;
            ``"mlp"`` / ``"attn"``, the MLP / attention outputs of the ``window`` layers around ``l``.
        window: the layers restored together for ``"mlp"`` / ``"attn"`` (:func:`window_layers`);
            ``None``: :func:`default_window`, the paper's 10 of 48 scaled to the model's depth.
        sever: ``"mlp"`` / ``"attn"`` keeps those outputs of every layer above ``l`` at token ``i``
            at their corrupted values (the paper's Figure 7); hidden-state restorations only.
        samples: the noise draws ``S`` that ``P*`` averages. Paper: 10.
        noise: ``ν`` in standard deviations of the embeddings. Paper: 3.
        noise_kind: the shape of the noise, one of :data:`NOISE_KINDS` (:func:`corruption`).
        swap_subjects: the other subjects ``noise_kind="swap"`` puts in the subject's place.
        std: the embeddings' standard deviation; ``None``: :func:`embedding_std`, measured.
        seed: the seed of the noise draws.
    """

    kind: Kind = "hidden"
    _: KW_ONLY
    window: int | None = None
    sever: str | None = None
    samples: int = 10
    noise: float = 3.0
    noise_kind: str = "gaussian"
    swap_subjects: tuple[str, ...] = ()
    std: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.sever not in (None, "mlp", "attn"):
            raise ValueError(f"sever must be None, 'mlp' or 'attn', got {self.sever!r}")
        if self.sever is not None and self.kind != "hidden":
            raise ValueError("severing is defined for hidden-state restorations (kind='hidden') only")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if self.noise_kind not in NOISE_KINDS:
            raise ValueError(f"noise_kind must be one of {NOISE_KINDS}, got {self.noise_kind!r}")
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")
        if isinstance(self.swap_subjects, str):
            raise TypeError(f"swap_subjects must be a list of subjects, got the string {self.swap_subjects!r}")
        object.__setattr__(self, "swap_subjects", tuple(self.swap_subjects))

    def for_depth(self, n_layers: int) -> TraceSettings:
        """These settings with the window a model of ``n_layers`` layers restores (:func:`default_window`
        when none is set)."""
        return self if self.window is not None else replace(self, window=default_window(n_layers))

    def record(self) -> dict[str, Any]:
        """What a :class:`Trace` keeps of its settings (``Trace.settings``): samples, noise, noise_kind,
        window, sever and seed."""
        return dict(samples=self.samples, noise=self.noise, noise_kind=self.noise_kind, window=self.window,
                    sever=self.sever, seed=self.seed)


# --------------------------------------------------------------------------- the result


@dataclass
class Trace:
    """One causal trace: restored probabilities ``scores[i, l] = P*,clean h_i^(l)[o]``.

    Rows are the prompt's tokens (BOS first), columns the layers. Positions that were not
    asked for (``positions=``) are NaN.
    """

    prompt: str
    subject: str
    kind: str
    tokens: list[str]
    subject_span: TokenSpan
    answer: str
    answer_id: int
    clean_prob: float
    corrupted_prob: float
    scores: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total_effect(self) -> float:
        """TE = P[o] − P*[o]."""
        return self.clean_prob - self.corrupted_prob

    @property
    def indirect_effect(self) -> torch.Tensor:
        """IE[i, l] = P*,clean h_i^(l)[o] − P*[o]."""
        return self.scores - self.corrupted_prob


# --------------------------------------------------------------------------- the noise


def embedding_std(model: Model, texts: Sequence[str] | None = None) -> float:
    """Standard deviation of the token embeddings as layer 0 receives them (``hook_embed``).

    As the paper's ``collect_embedding_std``: over every coordinate of the embeddings of the
    tokens of ``texts`` (default: the subjects of ROME's known facts). Read where layer 0
    reads them, so that Gemma's ``sqrt(d_model)`` scaling is included. Measured once per
    model and texts, then cached.
    """
    if texts is None:
        from factlens.data import known_facts

        texts = sorted({f.subject for f in known_facts()})
    if not texts:
        raise ValueError("embedding_std needs at least one text to embed")
    v = view(model)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    key = {"model": v.name, "hook": v.embed_hook, "texts": digest, "n_texts": len(texts)}

    @torch.no_grad()
    def build() -> dict[str, torch.Tensor]:
        rows = [v.embeddings(v.batch([t]).ids)[0, len(v.bos):] for t in texts]
        return {"std": torch.cat(rows).flatten().double().std().reshape(1)}

    return float(cached_tensors("tracing-embedding-std", key, build)["std"])


def corruption(model: Model, prompt: str, subject: str, settings: TraceSettings = TraceSettings()) -> torch.Tensor:
    """What is added to the subject's embeddings in each corrupted run: [samples, |subject|, d_model].

    ``gaussian`` (the paper): ``ε ~ N(0, (ν·σ)²)``, ``ν`` = ``settings.noise``, ``σ`` =
    :func:`embedding_std` (or ``settings.std``). ``uniform`` and ``student-t`` (3 degrees of
    freedom) have the same standard deviation with other shapes. ``swap`` replaces the subject's
    embeddings by those of other subjects (``settings.swap_subjects``; those with as many tokens
    in the prompt), one per sample. Repeatable: the draws come from a generator seeded with
    ``settings.seed``.
    """
    v = view(model)
    span = v.subject_span(prompt, subject)
    gen = torch.Generator().manual_seed(settings.seed)
    shape = (settings.samples, len(span), v.d_model)
    if settings.noise_kind == "swap":
        return _swap_delta(v, prompt, subject, settings, gen)
    scale = settings.noise * (embedding_std(model) if settings.std is None else settings.std)
    if settings.noise_kind == "gaussian":
        unit = torch.randn(shape, generator=gen)
    elif settings.noise_kind == "uniform":  # U(-√3, √3) has unit variance
        unit = (2 * torch.rand(shape, generator=gen) - 1) * math.sqrt(3.0)
    else:  # Student's t with 3 degrees of freedom has variance 3
        normal = torch.randn(shape, generator=gen)
        chi2 = (torch.randn((*shape, 3), generator=gen) ** 2).sum(-1)
        unit = normal / torch.sqrt(chi2 / 3) / math.sqrt(3.0)
    return (scale * unit).to(v.device, v.dtype)


@torch.no_grad()
def _swap_delta(v: View, prompt: str, subject: str, settings: TraceSettings, gen: torch.Generator) -> torch.Tensor:
    """The embeddings of other subjects in the subject's place, minus the subject's own."""
    span = v.subject_span(prompt, subject)
    n_tokens = len(v.token_ids(prompt))
    fits = []
    for other in dict.fromkeys(settings.swap_subjects):
        swapped = prompt.replace(subject, other, 1)
        if other != subject and len(v.token_ids(swapped)) == n_tokens and v.subject_span(swapped, other) == span:
            fits.append(swapped)
    if not fits:
        raise ValueError(
            f"noise_kind='swap' needs swap_subjects that take as many tokens as {subject!r} "
            f"({len(span)}) in the prompt; none of the {len(settings.swap_subjects)} given does"
        )
    picks = torch.randint(len(fits), (settings.samples,), generator=gen).tolist()
    embedded = v.embeddings(v.batch([prompt, *fits]).ids)[:, span.start:span.stop]
    return embedded[1:][torch.tensor(picks)] - embedded[0]


# --------------------------------------------------------------------------- the paper's definitions


def default_window(n_layers: int) -> int:
    """The paper's window (10 layers of GPT-2 XL's 48) scaled to a model's depth:
    ``round(10 · L / 48)`` (halves rounded up), at least 1; 4 of Gemma 3 270M's 18 layers.
    The paper's own 10 would span more than half of a small model."""
    window, depth = papers.paper("tracing.window").value, papers.paper("tracing.n_layers").value
    return max(1, math.floor(window * n_layers / depth + 0.5))


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The layers restored together for an MLP or attention trace centered on ``layer``:
    ``[layer − ⌊w/2⌋, layer + ⌈w/2⌉)`` clipped to the model (the paper's code)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def restored_layers(kind: str, layer: int, window: int, n_layers: int) -> range:
    """The layers whose state at token ``i`` is set back to clean in the restoration (i, ``layer``):
    ``h_i^(l)`` alone for a hidden state, the window's MLP or attention outputs otherwise."""
    return range(layer, layer + 1) if kind == "hidden" else window_layers(layer, window, n_layers)


def first_rerun_block(kind: str, layer: int, window: int, n_layers: int) -> int:
    """The lowest block whose output the restoration (i, ``layer``) changes: the block above
    ``h^(l)`` (the output of block ``l``) for a hidden state, the window's first layer otherwise."""
    return layer + 1 if kind == "hidden" else window_layers(layer, window, n_layers).start


def severed_layers(layer: int, n_layers: int) -> range:
    """The layers whose MLP (or attention) output at token ``i`` stays corrupted when the path
    above a restored ``h_i^(l)`` is severed (the paper's Figure 7): every layer above ``l``."""
    return range(layer + 1, n_layers)


def restoration_can_matter(kind: str, token: int, layer: int, span: TokenSpan, n_tokens: int,
                           n_layers: int) -> bool:
    """False where ``P*,clean h_i^(l)[o] = P*[o]`` exactly: the states before the subject are the
    same in the clean and the corrupted run, and a hidden state of the last layer reaches the
    prediction only at the last token."""
    if token < span.start:
        return False
    return not (kind == "hidden" and layer == n_layers - 1 and token != n_tokens - 1)


def token_groups(span: TokenSpan, n_tokens: int) -> dict[str, list[int]]:
    """The paper's token groups (Figure 2 rows): positions of each in a prompt of ``n_tokens``."""
    last = n_tokens - 1
    return {
        "first subject token": [span.start],
        "middle subject tokens": list(range(span.start + 1, span.last)),
        "last subject token": [span.last],
        "first subsequent token": [span.stop] if span.stop < last else [],
        "further tokens": list(range(span.stop + 1, last)),
        "last token": [last],
    }


def _site_hook(v: View, kind: str, layer: int) -> str:
    """Where the state of ``kind`` at ``layer`` is read and set: h^(l), or the MLP / attention output."""
    return {"hidden": v.resid_post_hook, "mlp": v.mlp_out_hook, "attn": v.attn_out_hook}[kind](layer)


def _traced_tokens(positions: Sequence[int | str] | None, span: TokenSpan, n_tokens: int) -> list[int]:
    """The token positions to trace: all, the given ones, or those of the named token groups."""
    if positions is None:
        return list(range(n_tokens))
    if isinstance(positions, str):
        raise TypeError(f"positions must be a list (e.g. [{positions!r}]), got the string {positions!r}")
    groups = token_groups(span, n_tokens)
    unknown = [p for p in positions if isinstance(p, str) and p not in groups]
    if unknown:
        raise ValueError(f"unknown token groups {unknown}; the groups are {list(groups)}")
    picked = [q for p in positions for q in (groups[p] if isinstance(p, str) else [int(p) % n_tokens])]
    return sorted(set(picked))


# --------------------------------------------------------------------------- fast tracing


class _Patches:
    """Forward hooks that set, at one token, some rows of a state to given values; what they set
    is changed between blocks (``now``), so the hooks are installed once per trace."""

    def __init__(self) -> None:
        self.now: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(self, name: str):
        def put(x: torch.Tensor, hook: Any) -> torch.Tensor:
            if name not in self.now:
                return x
            rows, values = self.now[name]
            x = x.clone()
            x[rows, 0] = values.to(x.dtype)
            return x
        return put


class _CorruptedRuns:
    """The clean prompt (recorded row 0) and its ``S`` corrupted copies (rows 1..S, noise ``delta``),
    recorded once; :meth:`restored` re-runs the blocks above the restorations of one token."""

    def __init__(self, v: View, prompt: str, subject: str, delta: torch.Tensor, settings: TraceSettings):
        self.v, self.prompt, self.subject, self.settings = v, prompt, subject, settings
        self.kind, self.sever, self.window = settings.kind, settings.sever, settings.window
        self.span = span = v.subject_span(prompt, subject)
        self.samples = delta.shape[0]
        ids = v.batch([prompt]).ids.expand(self.samples + 1, -1)
        noise = torch.cat([torch.zeros_like(delta[:1]), delta])

        def corrupt(x: torch.Tensor, hook: Any) -> torch.Tensor:
            x = x.clone()
            x[:, span.start:span.stop] += noise.to(x.dtype)
            return x

        layers = range(v.n_layers)
        self.sites = [_site_hook(v, self.kind, l) for l in layers] if self.kind != "hidden" else []
        self.severed = [_site_hook(v, self.sever, l) for l in layers] if self.sever else []
        self.rec: Recording = v.record(ids, fwd_hooks=[(v.embed_hook, corrupt)], names=[*self.sites, *self.severed])
        self.patches = _Patches()
        last = v.final_norm(self.rec.resid[v.n_layers][:, -1])
        self.clean_final, self.corrupt_final = last[:1], last[1:]

    @property
    def n_tokens(self) -> int:
        return self.rec.n_tokens

    def hooks(self) -> list:
        return [(name, self.patches.hook(name)) for name in (*self.sites, *self.severed)]

    def restored(self, token: int, layers: Sequence[int]) -> torch.Tensor:
        """The final-normed last position of every restoration (``token``, l) for l in ``layers``,
        noise sample by noise sample: [len(layers) · S, d_model] (row ``k·S + s``: layer ``layers[k]``,
        sample ``s``). The rows of layer ``l`` join the batch at :func:`first_rerun_block`."""
        v, rec, S, L = self.v, self.rec, self.samples, self.v.n_layers
        joining = {}
        for l in layers:
            joining.setdefault(first_rerun_block(self.kind, l, self.window, L), []).append(l)
        order = [l for block in sorted(joining) for l in joining[block]]
        x = rec.resid[0][:0, token:]
        sample_of_row = torch.empty(0, dtype=torch.long)
        row_layers: list[int] = []
        for block in range(min(joining), L + 1):
            if block in joining:
                x = torch.cat([x, *[self._restored_input(token, l, block) for l in joining[block]]])
                sample_of_row = torch.cat([sample_of_row, torch.arange(S).repeat(len(joining[block]))])
                row_layers += [l for l in joining[block] for _ in range(S)]
            if block == L:
                break
            # the last block runs at the last position alone: what is set at an earlier token there is never read
            last = block == L - 1 and token < self.n_tokens - 1
            self.patches.now = {} if last else self._patches_at(token, block, row_layers, sample_of_row)
            x = v.run_blocks(rec, x, range(block, block + 1), start=token, rows=1 + sample_of_row, last_only=last,
                             hooks=bool(self.sites or self.severed))  # a hidden state needs no hook
        self.patches.now = {}
        finals = v.final_norm(x[:, -1])
        position = {l: k for k, l in enumerate(order)}
        back = torch.tensor([position[l] * S + s for l in layers for s in range(S)])
        return finals[back]

    def _restored_input(self, token: int, layer: int, block: int) -> torch.Tensor:
        """The stream entering ``block`` at positions ``token ..`` for the S rows of restoration
        (``token``, ``layer``): the corrupted run's, with ``h_token^(layer)`` clean for a hidden state."""
        x = self.rec.resid[block][1:, token:].clone()
        if self.kind == "hidden":
            x[:, 0] = self.rec.resid[block][0, token]
        return x

    def _patches_at(self, token: int, block: int, row_layers: list[int],
                    sample_of_row: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """What the hooks set in ``block``: the window's restored outputs (clean), the severed
        outputs (corrupted, of each row's sample)."""
        now = {}
        if self.kind != "hidden":
            rows = torch.tensor([r for r, l in enumerate(row_layers)
                                 if block in restored_layers(self.kind, l, self.window, self.v.n_layers)],
                                dtype=torch.long)
            if len(rows):
                clean = self.rec.captured[self.sites[block]][0, token]
                now[self.sites[block]] = (rows, clean.expand(len(rows), -1))
        if self.sever:
            rows = torch.tensor([r for r, l in enumerate(row_layers) if block in severed_layers(l, self.v.n_layers)],
                                dtype=torch.long)
            if len(rows):
                corrupted = self.rec.captured[self.severed[block]][1 + sample_of_row[rows], token]
                now[self.severed[block]] = (rows, corrupted)
        return now


@dataclass
class _Restored:
    """One prompt's clean, corrupted and restored runs, read at the last position (``finals``:
    [1 + S + restorations, d_model], final-normed), before the unembedding that scores them."""

    prompt: str
    subject: str
    settings: TraceSettings  # its samples: the rows of ``delta``
    span: TokenSpan
    n_tokens: int
    traced: list[int]
    cells: list[tuple[int, list[int]]]  # the (token, layers) each block of restorations scores
    finals: torch.Tensor
    target: str | None


def _restore(runs: _CorruptedRuns, target: str | None, positions: Sequence[int | str] | None,
             batch_size: int) -> _Restored:
    """Every restoration of the traced tokens run above the recorded clean and corrupted runs."""
    v, span, S, T, L = runs.v, runs.span, runs.samples, runs.n_tokens, runs.v.n_layers
    finals, cells = [runs.clean_final, runs.corrupt_final], []
    traced = _traced_tokens(positions, span, T)
    with v.model.hooks(fwd_hooks=runs.hooks()):
        for token in traced:
            live = [l for l in range(L) if restoration_can_matter(runs.kind, token, l, span, T, L)]
            per_batch = max(1, batch_size // S)
            for chunk in (live[k:k + per_batch] for k in range(0, len(live), per_batch)):
                finals.append(runs.restored(token, chunk))
                cells.append((token, chunk))
    return _Restored(runs.prompt, runs.subject, runs.settings, span, T, traced, cells, torch.cat(finals), target)


def _scored(v: View, restored: Sequence[_Restored]) -> list[Trace]:
    """The traces of ``restored``, with one pass over the unembedding (the largest matrix of a small
    model) for all of their rows: the answer ``o`` is the clean run's top token (or the first
    token of the target) and each row scores ``softmax(unembed(h))[o]``."""
    if not restored:
        return []
    log_z, top = v.log_normalizer(torch.cat([r.finals for r in restored]))
    traces, at = [], 0
    for r in restored:
        S, rows = r.settings.samples, slice(at, at + len(r.finals))
        answer_id = int(top[at]) if r.target is None else v.target_ids(r.target)[0]
        probs = v.token_log_probs(r.finals, [answer_id], log_z=log_z[rows])[:, 0].exp().float().cpu()
        clean_prob, corrupted_prob = float(probs[0]), float(probs[1:S + 1].mean())
        scores = torch.full((r.n_tokens, v.n_layers), float("nan"))
        scores[r.traced] = corrupted_prob  # what cannot change (restoration_can_matter) scores P*[o]
        for (token, layers), p in zip(r.cells, probs[S + 1:].split([len(c) * S for _, c in r.cells])):
            scores[token, layers] = p.reshape(len(layers), S).mean(1)
        traces.append(Trace(prompt=r.prompt, subject=r.subject, kind=r.settings.kind, tokens=v.str_tokens(r.prompt),
                            subject_span=r.span, answer=v.tokenizer.decode([answer_id]), answer_id=answer_id,
                            clean_prob=clean_prob, corrupted_prob=corrupted_prob, scores=scores,
                            settings=r.settings.record()))
        at += len(r.finals)
    return traces


@torch.no_grad()
def trace(model: Model, prompt: str, subject: str, settings: TraceSettings = TraceSettings(), *,
          target: str | None = None, positions: Sequence[int | str] | None = None, delta: torch.Tensor | None = None,
          batch_size: int = 256) -> Trace:
    """Causal trace of ``prompt``'s answer over (token, layer) (Meng et al. 2022, §2.1).

    ``scores[i, l] = P*,clean h_i^(l)[o]``: the answer's probability in the corrupted run
    with the state of ``settings.kind`` at token ``i`` and layer ``l`` restored (:class:`TraceSettings`
    says which, and how the subject is corrupted). The answer ``o`` is the clean run's top token,
    or the first token of ``target``. ``delta`` gives the corruption itself, as :func:`corruption`
    returns it (its rows are the samples). ``positions``: the tokens to trace, as positions or
    names of :data:`TOKEN_GROUPS` (default all); the others are NaN. ``batch_size``: the most
    rows re-run together.
    """
    v = view(model)
    settings = settings.for_depth(v.n_layers)
    if delta is None:
        delta = corruption(model, prompt, subject, settings)
    runs = _CorruptedRuns(v, prompt, subject, delta, replace(settings, samples=delta.shape[0]))
    return _scored(v, [_restore(runs, target, positions, batch_size)])[0]


@torch.no_grad()
def trace_facts(model: Model, facts: Sequence[Any], settings: TraceSettings = TraceSettings(), *,
                target: str | None = None, positions: Sequence[int | str] | None = None, full_maps: int | None = None,
                batch_size: int = 256, rows_per_pass: int = 2048, progress: bool = True) -> list[Trace]:
    """:func:`trace` every fact (``fact.prompt``, ``fact.subject``); fact ``k`` uses seed ``settings.seed + k``.

    The same options as :func:`trace`; with ``full_maps = n``, the first ``n`` facts are traced
    at every token (for the maps of the paper's Figure 2) and the others at ``positions`` only
    (the rows that the claims read, at a fraction of the cost). The facts share the passes over
    the unembedding, ``rows_per_pass`` restorations at a time: a pass costs about as much for
    a few rows as for a hundred, the matrix being read from memory either way."""
    v = view(model)
    settings = settings.for_depth(v.n_layers)
    label = settings.kind if settings.sever is None else f"{settings.kind}, {settings.sever} severed"
    traces, waiting = [], []
    for k, f in enumerate(tqdm(facts, desc=f"tracing ({label})", disable=not progress)):
        fact_settings = replace(settings, seed=settings.seed + k)
        runs = _CorruptedRuns(v, f.prompt, f.subject, corruption(model, f.prompt, f.subject, fact_settings),
                              fact_settings)
        waiting.append(_restore(runs, target, None if full_maps is not None and k < full_maps else positions,
                                batch_size))
        if sum(len(r.finals) for r in waiting) >= rows_per_pass:
            traces += _scored(v, waiting)
            waiting = []
    return traces + _scored(v, waiting)


# --------------------------------------------------------------------------- the paper's loop


@torch.no_grad()
def trace_straightforward(model: Model, prompt: str, subject: str, settings: TraceSettings = TraceSettings(), *,
                          delta: torch.Tensor, target: str | None = None, progress: bool = False) -> Trace:
    """The same scores as :func:`trace`, computed as the paper's code does (reference and
    benchmark peer): for every (token, layer), one full forward pass of a batch of the clean
    prompt and ``S`` corrupted copies (noise ``delta``, [S, |subject|, d]), with the chosen
    states of the corrupted rows set to those of the clean row, and logits everywhere."""
    v = view(model)
    settings = replace(settings.for_depth(v.n_layers), samples=delta.shape[0])
    kind, window, sever = settings.kind, settings.window, settings.sever
    span = v.subject_span(prompt, subject)
    ids = v.batch([prompt]).ids
    samples, n_tokens, n_layers = delta.shape[0], ids.shape[1], v.n_layers
    batch = ids.expand(samples + 1, -1)
    noise = torch.cat([torch.zeros_like(delta[:1]), delta])

    def corrupt(x, hook):
        x = x.clone()
        x[:, span.start:span.stop] += noise
        return x

    embed = (v.embed_hook, corrupt)
    frozen: dict[int, torch.Tensor] = {}
    if sever:
        sites = {_site_hook(v, sever, l): l for l in range(n_layers)}
        got = v.capture(batch, sites, fwd_hooks=[embed])
        frozen = {layer: got[name] for name, layer in sites.items()}
    clean_logits = model(ids)[:, -1]
    answer_id = int(clean_logits[0].argmax()) if target is None else v.target_ids(target)[0]

    def from_clean_row(token):
        def put(x, hook):
            x = x.clone()
            x[1:, token] = x[0, token]
            return x
        return put

    def from_corrupt_run(token, layer):
        def put(x, hook):
            x = x.clone()
            x[1:, token] = frozen[layer][1:, token]
            return x
        return put

    scores = torch.empty(n_tokens, n_layers)
    for token in tqdm(range(n_tokens), desc="tokens", disable=not progress):
        for layer in range(n_layers):
            hooks = [embed, *[(_site_hook(v, kind, k), from_clean_row(token))
                              for k in restored_layers(kind, layer, window, n_layers)]]
            if sever:
                hooks += [(_site_hook(v, sever, k), from_corrupt_run(token, k))
                          for k in severed_layers(layer, n_layers)]
            logits = model.run_with_hooks(batch, fwd_hooks=hooks)
            scores[token, layer] = logits[1:, -1].softmax(-1)[:, answer_id].mean()
    corrupted = model.run_with_hooks(batch, fwd_hooks=[embed])[1:, -1].softmax(-1)[:, answer_id].mean()
    return Trace(prompt=prompt, subject=subject, kind=kind, tokens=v.str_tokens(prompt), subject_span=span,
                 answer=v.tokenizer.decode([answer_id]), answer_id=answer_id,
                 clean_prob=float(clean_logits.softmax(-1)[0, answer_id]), corrupted_prob=float(corrupted),
                 scores=scores, settings=settings.record())
