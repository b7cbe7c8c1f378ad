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
(paper, §2.1). :func:`trace` returns the restored probabilities over (token, layer);
:func:`average_indirect_effects` averages the indirect effects over many facts by token
group (paper, Figure 2).

Speed. The straightforward loop (:func:`trace_straightforward`, the paper's code) runs the
whole model, with logits over the whole vocabulary at every position, once per (token,
layer). :func:`trace` computes the same numbers with far less work:

* one clean and one corrupted run are recorded (block inputs, MLP and attention outputs,
  and the arguments each block receives); a restoration at layer ``l`` re-runs only the
  blocks from ``l`` up (from ``l + 1`` for a hidden state, which is block ``l``'s output),
  starting from the recorded corrupted residual stream;
* all positions and noise samples of one layer go through those blocks as one batch;
* only the last position is projected to the vocabulary (262,144 tokens for Gemma);
* what cannot change is not computed: the states before the first subject token are the
  same in the clean and the corrupted run, and a state at the last layer reaches the
  prediction only at the last token; those restorations score exactly ``P*[o]``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from factlens.cache import cached_tensors
from factlens.models import TokenSpan, view

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


def embedding_std(model: Any, texts: Sequence[str] | None = None) -> float:
    """Standard deviation of the token embeddings as layer 0 receives them (``hook_embed``).

    As the paper's ``collect_embedding_std``: over every coordinate of the embeddings of the
    tokens of ``texts`` (default: the subjects of ROME's known facts). Read at ``hook_embed``
    so that Gemma's ``sqrt(d_model)`` scaling is included. Measured once per model and
    texts, then cached.
    """
    if texts is None:
        from factlens.data import known_facts

        texts = sorted({f.subject for f in known_facts()})
    if not texts:
        raise ValueError("embedding_std needs at least one text to embed")
    v = view(model)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    key = {"model": v.name, "hook": v.embed_hook, "texts": digest, "n_texts": len(texts)}

    def build() -> dict[str, torch.Tensor]:
        rows = [_embeddings(model, torch.tensor([v.token_ids(t)], device=model.cfg.device))[0, len(v.bos):]
                for t in texts]
        return {"std": torch.cat(rows).flatten().double().std().reshape(1)}

    return float(cached_tensors("tracing-embedding-std", key, build)["std"])


def corruption(
    model: Any,
    prompt: str,
    subject: str,
    *,
    samples: int = 10,
    noise: float = 3.0,
    noise_kind: str = "gaussian",
    seed: int = 0,
    std: float | None = None,
    swap_subjects: Sequence[str] = (),
) -> torch.Tensor:
    """What is added to the subject's embeddings in each corrupted run: [samples, |subject|, d_model].

    ``gaussian`` (the paper): ``ε ~ N(0, (noise·σ)²)``, ``σ`` = :func:`embedding_std`.
    ``uniform`` and ``student-t`` (3 degrees of freedom) have the same standard deviation
    with other shapes. ``swap`` replaces the subject's embeddings by those of other
    subjects (``swap_subjects``; those with as many tokens in the prompt), one per sample.
    Repeatable: the draws come from a generator seeded with ``seed``.
    """
    if noise_kind not in NOISE_KINDS:
        raise ValueError(f"noise_kind must be one of {NOISE_KINDS}, got {noise_kind!r}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    v = view(model)
    span = v.subject_span(prompt, subject)
    gen = torch.Generator().manual_seed(seed)
    shape = (samples, len(span), v.d_model)
    if noise_kind == "swap":
        return _swap_delta(model, prompt, subject, span, samples, swap_subjects, gen)
    scale = noise * (embedding_std(model) if std is None else std)
    if noise_kind == "gaussian":
        unit = torch.randn(shape, generator=gen)
    elif noise_kind == "uniform":  # U(-√3, √3) has unit variance
        unit = (2 * torch.rand(shape, generator=gen) - 1) * math.sqrt(3.0)
    else:  # Student's t with 3 degrees of freedom has variance 3
        normal = torch.randn(shape, generator=gen)
        chi2 = (torch.randn((*shape, 3), generator=gen) ** 2).sum(-1)
        unit = normal / torch.sqrt(chi2 / 3) / math.sqrt(3.0)
    return (scale * unit).to(model.cfg.device, _dtype(model))


def _swap_delta(model, prompt, subject, span, samples, swap_subjects, gen) -> torch.Tensor:
    v = view(model)
    ids = torch.tensor([v.token_ids(prompt)], device=model.cfg.device)
    clean = _embeddings(model, ids)[0, span.start:span.stop]
    fits = []
    for other in dict.fromkeys(swap_subjects):
        swapped = prompt.replace(subject, other, 1)
        if other != subject and len(v.token_ids(swapped)) == ids.shape[1] \
                and v.subject_span(swapped, other) == span:
            fits.append(swapped)
    if not fits:
        raise ValueError(
            f"noise_kind='swap' needs swap_subjects that take as many tokens as {subject!r} "
            f"({len(span)}) in the prompt; none of the {len(swap_subjects)} given does"
        )
    picks = torch.randint(len(fits), (samples,), generator=gen).tolist()
    rows = [_embeddings(model, torch.tensor([v.token_ids(fits[k])], device=ids.device))[0, span.start:span.stop]
            for k in picks]
    return torch.stack(rows) - clean


def _dtype(model: Any) -> torch.dtype:
    return next(model.parameters()).dtype


class _Stop(Exception):
    pass


@torch.no_grad()
def _embeddings(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """The embeddings as layer 0 receives them (``hook_embed``), without running the blocks."""
    got: list[torch.Tensor] = []

    def grab(x, hook):
        got.append(x)
        raise _Stop

    try:
        with model.hooks(fwd_hooks=[(view(model).embed_hook, grab)]):
            model(ids)
    except _Stop:
        pass
    return got[0]


# --------------------------------------------------------------------------- fast tracing


class _Runs:
    """The clean and the corrupted run of one prompt, recorded for the restorations.

    ``block_inputs[l]``: the corrupted residual stream entering block ``l`` [S, t, d];
    ``clean[name]``: the clean value at hook ``name`` [1, t, d]; ``corrupt[name]``: the
    corrupted value [S, t, d]; ``block_args[l]``: what block ``l`` was called with (masks,
    rotary embeddings), so that the blocks above a restoration can be run on their own.
    """

    def __init__(self, model: Any, ids: torch.Tensor, span: TokenSpan, delta: torch.Tensor,
                 recorded: Iterable[str]):
        self.model, self.v = model, view(model)
        self.ids, self.span, self.samples = ids, span, delta.shape[0]
        recorded = list(dict.fromkeys(recorded))
        self.block_args: list[tuple[tuple, dict]] = [((), {})] * self.v.n_layers
        self.clean, clean_last = self._record(ids, None, recorded, capture_args=True)
        self.corrupt, corrupt_last = self._record(ids.expand(self.samples, -1), delta, recorded)
        self.block_inputs = [self.corrupt[self.v.resid_pre_hook(l)] for l in range(self.v.n_layers)]
        logits = self.v.unembed(torch.cat([clean_last, corrupt_last])[:, None])[:, 0]
        self.clean_logits, self.corrupt_logits = logits[:1], logits[1:]

    def _record(self, ids, delta, names, capture_args=False):
        v, store = self.v, {}
        resid_pre = [v.resid_pre_hook(l) for l in range(v.n_layers)]

        def keeper(name):
            def keep(x, hook):
                store[name] = x.detach().clone()
            return keep

        hooks = [(n, keeper(n)) for n in dict.fromkeys([*names, *resid_pre])]
        if delta is not None:
            hooks.append((v.embed_hook, _add_at(self.span, delta)))
        handles = []
        if capture_args:
            for layer, block in enumerate(self.model.blocks):
                handles.append(block.register_forward_pre_hook(self._keeper(layer), with_kwargs=True))
        try:
            final = v.final_hidden(ids, fwd_hooks=hooks)
        finally:
            for h in handles:
                h.remove()
        return store, final[:, -1]

    def _keeper(self, layer):
        def keep(module, args, kwargs):
            args = tuple(None if _is_cache(a) else a for a in args[1:])
            kwargs = {k: None if _is_cache(a) else a for k, a in kwargs.items() if k != "hidden_states"}
            self.block_args[layer] = (args, kwargs)
        return keep

    def run_from(self, start: int, resid: torch.Tensor, hooks: list) -> torch.Tensor:
        """Blocks ``start`` .. L-1 on ``resid`` (with ``hooks``; none when ``start`` is L): the
        final-normed last position [b, d]."""
        with self.model.hooks(fwd_hooks=hooks):
            x = resid
            for layer in range(start, self.v.n_layers):
                args, kwargs = self.block_args[layer]
                out = self.model.blocks[layer](x, *args, **kwargs)
                x = out[0] if isinstance(out, tuple) else out
        return self.v.final_norm(x[:, -1:])[:, 0]


def _is_cache(obj: Any) -> bool:
    return type(obj).__name__.endswith("Cache")


def _add_at(span: TokenSpan, delta: torch.Tensor) -> Callable:
    """Hook: add ``delta`` [S, |span|, d] to the subject positions of rows 0..S-1 (the rest of the
    batch is left clean; a batch of k·S rows gets the same noise in every block of S)."""
    def add(x, hook):
        x = x.clone()
        reps = x.shape[0] // delta.shape[0]
        x[:, span.start:span.stop] += delta.repeat(reps, 1, 1)
        return x
    return add


def _set_rows(rows: torch.Tensor, pos: torch.Tensor, values: torch.Tensor) -> Callable:
    """Hook: ``x[rows, pos] = values`` (one position per row)."""
    def put(x, hook):
        x = x.clone()
        x[rows, pos] = values.to(x.dtype)
        return x
    return put


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The layers restored together for an MLP or attention trace centered on ``layer``:
    ``[layer − ⌊w/2⌋, layer + ⌈w/2⌉)`` clipped to the model (the paper's code)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def _site_hook(v, kind: str, layer: int) -> str:
    return {"hidden": v.resid_post_hook, "mlp": v.mlp_out_hook, "attn": v.attn_out_hook}[kind](layer)


def _restored_layers(kind: str, layer: int, window: int, n_layers: int) -> range:
    return range(layer, layer + 1) if kind == "hidden" else window_layers(layer, window, n_layers)


def _check(kind: str, sever: str | None, window: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if sever not in (None, "mlp", "attn"):
        raise ValueError(f"sever must be None, 'mlp' or 'attn', got {sever!r}")
    if sever is not None and kind != "hidden":
        raise ValueError("severing is defined for hidden-state restorations (kind='hidden') only")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")


def _positions(positions, span: TokenSpan, n_tokens: int) -> list[int]:
    if positions is None:
        return list(range(n_tokens))
    if positions == "last_subject":
        return [span.last]
    return sorted({int(p) % n_tokens for p in positions})


def _answer_probs(v, finals: torch.Tensor, answer_id: int, batch_size: int) -> torch.Tensor:
    """softmax(unembed(final-normed h))[o] for each row, in chunks of ``4 * batch_size`` rows."""
    chunks = [v.unembed(f[:, None])[:, 0].softmax(-1)[:, answer_id] for f in finals.split(4 * batch_size)]
    return torch.cat(chunks).float().cpu()


def _answer(v, logits: torch.Tensor, target: str | None) -> int:
    if target is None:
        return int(logits[0].argmax())
    return v.target_ids(target)[0]


@torch.no_grad()
def trace(
    model: Any,
    prompt: str,
    subject: str,
    kind: Kind = "hidden",
    *,
    samples: int = 10,
    noise: float = 3.0,
    window: int = 10,
    noise_kind: str = "gaussian",
    swap_subjects: Sequence[str] = (),
    sever: str | None = None,
    target: str | None = None,
    positions: Sequence[int] | str | None = None,
    seed: int = 0,
    std: float | None = None,
    delta: torch.Tensor | None = None,
    batch_size: int = 256,
) -> Trace:
    """Causal trace of ``prompt``'s answer over (token, layer) (Meng et al. 2022, §2.1).

    ``scores[i, l] = P*,clean h_i^(l)[o]``: the answer's probability in the corrupted run
    with, for ``kind="hidden"``, the residual stream after block ``l`` at token ``i``
    restored; for ``"mlp"`` / ``"attn"``, the MLP / attention outputs of the ``window``
    layers around ``l`` (:func:`window_layers`) at token ``i``. ``sever="mlp"`` / ``"attn"``
    freezes the MLP / attention outputs of the layers above ``l`` at token ``i`` at their
    corrupted values (the paper's Figure 7). The answer ``o`` is the clean run's top token,
    or the first token of ``target``. The noise is ``noise`` × :func:`embedding_std`
    (``std`` overrides the measured value; ``delta`` gives the corruption itself, as
    :func:`corruption` returns it). ``positions``: the tokens to trace (default all;
    ``"last_subject"``); the others are NaN.
    """
    _check(kind, sever, window)
    v = view(model)
    span = v.subject_span(prompt, subject)
    ids = torch.tensor([v.token_ids(prompt)], device=model.cfg.device)
    if delta is None:
        delta = corruption(model, prompt, subject, samples=samples, noise=noise, noise_kind=noise_kind,
                           seed=seed, std=std, swap_subjects=swap_subjects)
    samples, n_tokens, n_layers = delta.shape[0], ids.shape[1], v.n_layers
    sites = [_site_hook(v, kind, l) for l in range(n_layers)]
    severed = [_site_hook(v, sever, l) for l in range(n_layers)] if sever else []
    runs = _Runs(model, ids, span, delta, [*sites, *severed])
    answer_id = _answer(v, runs.clean_logits, target)
    clean_prob = float(runs.clean_logits.softmax(-1)[0, answer_id])
    corrupted_prob = float(runs.corrupt_logits.softmax(-1)[:, answer_id].mean())

    scores = torch.full((n_tokens, n_layers), float("nan"))
    wanted = _positions(positions, span, n_tokens)
    finals, cells = [], []  # final-normed last positions, and the (tokens, layer) they score
    for layer in range(n_layers):
        # states before the subject are never corrupted; at the last layer only the last token counts
        live = [p for p in wanted if p >= span.start and not
                (kind == "hidden" and layer == n_layers - 1 and p != n_tokens - 1)]
        scores[[p for p in wanted if p not in live], layer] = corrupted_prob
        restored = _restored_layers(kind, layer, window, n_layers)
        per_chunk = max(1, batch_size // samples)
        for c in range(0, len(live), per_chunk):
            chunk = live[c:c + per_chunk]
            rows = torch.arange(len(chunk) * samples, device=ids.device)
            pos = torch.tensor(chunk, device=ids.device).repeat_interleave(samples)
            sample = torch.arange(samples, device=ids.device).repeat(len(chunk))
            hooks = [(severed[k], _set_rows(rows, pos, runs.corrupt[severed[k]][sample, pos]))
                     for k in range(layer + 1, n_layers) if severed]
            if kind == "hidden":  # h_i^(l) is block l's output: start above it, from the corrupted stream
                resid = runs.corrupt[sites[layer]][sample].clone()
                resid[rows, pos] = runs.clean[sites[layer]][0, pos]
                finals.append(runs.run_from(layer + 1, resid, hooks))
            else:
                hooks += [(sites[k], _set_rows(rows, pos, runs.clean[sites[k]][0, pos])) for k in restored]
                finals.append(runs.run_from(restored[0], runs.block_inputs[restored[0]][sample], hooks))
            cells.append((chunk, layer))
    # one pass over the unembedding (the largest matrix of a small model) for every restoration
    probs = _answer_probs(v, torch.cat(finals), answer_id, batch_size) if finals else torch.empty(0)
    at = 0
    for chunk, layer in cells:
        n = len(chunk) * samples
        scores[chunk, layer] = probs[at:at + n].reshape(len(chunk), samples).mean(1)
        at += n

    return Trace(prompt=prompt, subject=subject, kind=kind, tokens=v.str_tokens(prompt), subject_span=span,
                 answer=v.tokenizer.decode([answer_id]), answer_id=answer_id, clean_prob=clean_prob,
                 corrupted_prob=corrupted_prob, scores=scores,
                 settings=dict(samples=samples, noise=noise, noise_kind=noise_kind, window=window,
                               sever=sever, seed=seed))


# --------------------------------------------------------------------------- the paper's loop


@torch.no_grad()
def trace_straightforward(
    model: Any,
    prompt: str,
    subject: str,
    kind: Kind = "hidden",
    *,
    delta: torch.Tensor,
    window: int = 10,
    sever: str | None = None,
    target: str | None = None,
    progress: bool = False,
) -> Trace:
    """The same scores as :func:`trace`, computed as the paper's code does (reference and
    benchmark peer): for every (token, layer), one full forward pass of a batch of the clean
    prompt and ``S`` corrupted copies (noise ``delta``, [S, |subject|, d]), with the chosen
    states of the corrupted rows set to those of the clean row, and logits everywhere."""
    _check(kind, sever, window)
    v = view(model)
    span = v.subject_span(prompt, subject)
    ids = torch.tensor([v.token_ids(prompt)], device=model.cfg.device)
    samples, n_tokens, n_layers = delta.shape[0], ids.shape[1], v.n_layers
    batch = ids.expand(samples + 1, -1)
    noise = torch.cat([torch.zeros_like(delta[:1]), delta])
    embed = (v.embed_hook, _add_at(span, noise))
    frozen: dict[int, torch.Tensor] = {}
    if sever:
        def keeper(layer):
            def keep(x, hook):
                frozen[layer] = x.detach().clone()
            return keep
        model.run_with_hooks(batch, fwd_hooks=[embed, *[(_site_hook(v, sever, l), keeper(l)) for l in range(n_layers)]])
    clean_logits = model(ids)[:, -1]
    answer_id = _answer(v, clean_logits, target)

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
                              for k in _restored_layers(kind, layer, window, n_layers)]]
            if sever:
                hooks += [(_site_hook(v, sever, k), from_corrupt_run(token, k)) for k in range(layer + 1, n_layers)]
            logits = model.run_with_hooks(batch, fwd_hooks=hooks)
            scores[token, layer] = logits[1:, -1].softmax(-1)[:, answer_id].mean()
    corrupted = model.run_with_hooks(batch, fwd_hooks=[embed])[1:, -1].softmax(-1)[:, answer_id].mean()
    return Trace(prompt=prompt, subject=subject, kind=kind, tokens=v.str_tokens(prompt), subject_span=span,
                 answer=v.tokenizer.decode([answer_id]), answer_id=answer_id,
                 clean_prob=float(clean_logits.softmax(-1)[0, answer_id]), corrupted_prob=float(corrupted),
                 scores=scores, settings=dict(samples=samples, window=window, sever=sever))


# --------------------------------------------------------------------------- many facts


def known_facts_answered(model: Any, facts: Sequence[Any], batch_size: int = 32,
                         progress: bool = True) -> list[Any]:
    """The facts whose answer the model gives: its top next token after ``fact.prompt`` is the
    first token of ``fact.attribute`` (the paper traces the facts GPT-2 XL knows). Cached per
    model and list of facts."""
    v = view(model)
    text = "\n".join(f"{f.prompt}\t{f.attribute}" for f in facts)
    key = {"model": v.name, "facts": hashlib.sha256(text.encode()).hexdigest()[:16], "n": len(facts)}

    @torch.no_grad()
    def build() -> dict[str, torch.Tensor]:
        answered = []
        for i in tqdm(range(0, len(facts), batch_size), desc="known facts", disable=not progress):
            chunk = facts[i:i + batch_size]
            batch = v.batch([f.prompt for f in chunk])
            top = v.logits_at(batch.ids, batch.last).argmax(-1).tolist()
            answered += [t == v.target_ids(f.attribute)[0] for f, t in zip(chunk, top)]
        return {"answered": torch.tensor(answered, dtype=torch.bool)}

    answered = cached_tensors("tracing-known-facts", key, build)["answered"].tolist() if facts else []
    return [f for f, ok in zip(facts, answered) if ok]


def trace_facts(model: Any, facts: Sequence[Any], kind: Kind = "hidden", *, progress: bool = True,
                seed: int = 0, **options: Any) -> list[Trace]:
    """:func:`trace` every fact (``fact.prompt``, ``fact.subject``); fact ``k`` uses seed ``seed + k``."""
    label = kind if options.get("sever") is None else f"{kind}, {options['sever']} severed"
    return [trace(model, f.prompt, f.subject, kind, seed=seed + k, **options)
            for k, f in enumerate(tqdm(facts, desc=f"tracing ({label})", disable=not progress))]


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


@dataclass
class AverageEffect:
    """Average indirect effect (AIE) by token group × layer, with 95% confidence bands.

    ``mean[g, l]`` averages, over the facts that have group ``g``, each fact's mean IE over
    the group's tokens; ``low`` / ``high``: ``mean ∓ 1.96 · sd / √n``; ``count[g]``: n.
    """

    kind: str
    sever: str | None
    groups: tuple[str, ...]
    mean: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    count: list[int]
    n_facts: int
    clean_prob: float
    corrupted_prob: float

    @property
    def total_effect(self) -> float:
        """ATE: the average of P[o] − P*[o]."""
        return self.clean_prob - self.corrupted_prob

    def row(self, group: str) -> torch.Tensor:
        return self.mean[self.groups.index(group)]

    def peak(self, group: str) -> tuple[int, float]:
        """The layer where the group's AIE is largest, and that AIE."""
        row = self.row(group)
        if torch.isnan(row).all():
            raise ValueError(f"no fact has a traced {group!r}")
        layer = int(torch.nan_to_num(row, nan=-math.inf).argmax())
        return layer, float(row[layer])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sever": self.sever, "groups": list(self.groups),
                "n_facts": self.n_facts, "count": self.count, "clean_prob": self.clean_prob,
                "corrupted_prob": self.corrupted_prob, "total_effect": self.total_effect,
                "aie": self.mean.tolist(), "low": self.low.tolist(), "high": self.high.tolist()}


def average_indirect_effects(traces: Sequence[Trace]) -> AverageEffect:
    """AIE over ``traces`` by token group × layer (the paper's Figure 2)."""
    if not traces:
        raise ValueError("average_indirect_effects needs at least one trace")
    kinds = {(t.kind, t.settings.get("sever")) for t in traces}
    if len(kinds) != 1:
        raise ValueError(f"the traces mix kinds {sorted(kinds, key=str)}; average one kind at a time")
    per_group: dict[str, list[torch.Tensor]] = {g: [] for g in TOKEN_GROUPS}
    for t in traces:
        ie = t.indirect_effect
        for g, where in token_groups(t.subject_span, ie.shape[0]).items():
            if where and not torch.isnan(ie[where]).any():
                per_group[g].append(ie[where].mean(0))
    n_layers = traces[0].scores.shape[1]
    stats = []
    for g in TOKEN_GROUPS:
        if per_group[g]:
            x = torch.stack(per_group[g]).double()
            sd = x.std(0) if len(x) > 1 else torch.zeros(n_layers, dtype=torch.double)
            stats.append((x.mean(0), 1.96 * sd / math.sqrt(len(x))))
        else:
            nan = torch.full((n_layers,), float("nan"), dtype=torch.double)
            stats.append((nan, nan))
    mean = torch.stack([m for m, _ in stats]).float()
    half = torch.stack([h for _, h in stats]).float()
    kind, sever = next(iter(kinds))
    return AverageEffect(kind=kind, sever=sever, groups=TOKEN_GROUPS, mean=mean, low=mean - half,
                         high=mean + half, count=[len(per_group[g]) for g in TOKEN_GROUPS],
                         n_facts=len(traces),
                         clean_prob=sum(t.clean_prob for t in traces) / len(traces),
                         corrupted_prob=sum(t.corrupted_prob for t in traces) / len(traces))
