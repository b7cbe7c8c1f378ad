"""Partial forward passes: record one run of a batch, then re-run the blocks from layer l up.

Two facts of a causal (decoder-only) transformer make most interventions cheap:

* a change at layer ``l`` leaves every block below ``l`` as it was, so the blocks above can be
  run on their own from the recorded residual stream ``h^(l-1)`` (the input of block ``l``);
* a change at token position ``i`` or later leaves every position before ``i`` as it was, at
  every layer: position ``j`` only attends to positions ``≤ j``. The blocks need only be
  re-run on positions ``≥ i``, their attention reading the keys and values of the positions
  before ``i`` from the recording.

Causal tracing restores one state ``h_i^(l)`` of a corrupted run (Meng et al. 2022, §2.1), and
ROME's ``v*`` adds ``δ`` at the subject's last token of layer ``l`` (eq. 4): both change
positions ``≥ i`` at layers ``≥ l`` only. Fine-tuning one layer's MLP changes every position
from layer ``l`` up (``start=0``).

:func:`record` runs the model once and keeps, for each block, its input residual stream, the
arguments it was called with (attention masks, rotary embeddings, position ids: whatever the
architecture passes) and the keys and values its attention computed (after rotary
embeddings, before grouped-query heads are repeated). :func:`run_blocks` re-runs blocks on a
new residual stream for positions ``start ..`` only; the bridge's own blocks do the work, so
every TransformerLens hook fires (on tensors that cover positions ``start ..``) and gradients
flow through the re-run part. The keys and values of earlier positions enter through the
``past_key_values`` argument of TransformerLens' attention bridges, which concatenate them
before the new positions (``update(k, v, layer_idx)``); a forward pre-hook on each attention
bridge hands it over, because Hugging Face's decoder layers (transformers 5) pass their cache on
as ``cache``, which the bridges do not read. The recorded causal (and sliding-window) mask is
cut to the re-run rows, so every query sees exactly the keys it saw before.

Generation (:func:`decoding`) needs no hook: it runs the Hugging Face model's own modules
(:func:`own_modules`), with its own ``DynamicCache``, one new token at a time.

Only some positions are read at the end, and Gemma's unembedding (262,144 tokens) costs more
than several blocks per position: :func:`log_normalizer` and :func:`token_log_probs` give the
log-probability of chosen tokens without writing out the logits.

Reach these through the View: ``view(model).record(...)``, ``.run_blocks(...)``,
``.run_from(...)``, ``.decoding()``, ``.token_log_probs(...)``, ``.log_normalizer(...)``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformer_lens.model_bridge import TransformerBridge

#: Products of a few rows with a large matrix (the 262k-token unembedding above all) are padded to
#: a multiple of this many rows: MKL's fp32 product took about twice as long for 3, 7 or 11 rows as
#: for 4, 8 or 12 on an AMD EPYC (``bench/bench_forward.py``), where reading the matrix should cost
#: the same for all of them.
ROW_MULTIPLE = 4


def row_padding(n: int) -> int:
    """How many rows to add to ``n`` rows for a multiple of :data:`ROW_MULTIPLE` (none to one row)."""
    return -n % ROW_MULTIPLE if n > 1 else 0


def padded_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` [n, ...] with zero rows appended (:func:`row_padding`); callers keep the first ``n``."""
    pad = row_padding(rows.shape[0])
    return torch.cat([rows, rows.new_zeros(pad, *rows.shape[1:])]) if pad else rows


class ViewLike(Protocol):
    """What these functions read of the View (``factlens.core.view.View``, which passes itself): the
    model, its name and depth, and the View's hook names, capture, final norm and unembedding. (A protocol, so
    that this module need not import the View that imports it.)"""

    model: TransformerBridge
    name: str
    n_layers: int
    final_hook: str

    def check_layer(self, layer: int) -> int: ...

    def resid_pre_hook(self, layer: int) -> str: ...

    def resid_post_hook(self, layer: int) -> str: ...

    def capture(self, ids: torch.Tensor, names: Iterable[str], *, fwd_hooks: Sequence = (),
                stop_after: bool = True) -> dict[str, torch.Tensor]: ...

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor: ...

    def unembed(self, normed: torch.Tensor) -> torch.Tensor: ...


# How each block argument that has a token axis is cut to the re-run positions: name -> axis
# (counted from the end). Masks keep their key axis: the re-run queries attend to every key.
_TOKEN_AXIS = {"attention_mask": -2, "position_ids": -1, "cache_position": -1, "position_embeddings": -2}


@dataclass
class Recording:
    """One forward pass of a batch, kept so that blocks can be re-run from any layer.

    ``resid[l]``: the residual stream entering block ``l`` [b, t, d_model] (``resid[L]`` is the
    last block's output, before the final norm); ``keys[l]`` / ``values[l]``: block ``l``'s
    attention keys and values [b, kv_heads, t, d_head]; ``block_args[l]``: the keyword
    arguments block ``l`` received, bar the hidden states and any cache; ``captured``: the
    activations at the hook names asked for. Layers not recorded (``layers=``) are absent.
    Everything is detached: gradients flow only through what is re-run.
    """

    ids: torch.Tensor
    resid: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    block_args: dict[int, dict[str, Any]] = field(default_factory=dict)
    captured: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return self.ids.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.ids.shape[1]


class _KeyValueRecorder:
    """Given to the attention bridges as ``past_key_values`` while recording: keeps each layer's
    keys and values and hands them back unchanged."""

    def __init__(self, recording: Recording, layers: set[int]):
        self.recording, self.layers = recording, layers

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if layer_idx in self.layers:
            self.recording.keys[layer_idx] = keys.detach()
            self.recording.values[layer_idx] = values.detach()
        return keys, values


class _EarlierPositions:
    """Given to the attention bridges as ``past_key_values`` when re-running positions ``start ..``:
    the recorded keys and values of positions ``< start`` come first."""

    def __init__(self, keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor]):
        self.keys, self.values = keys, values

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        earlier_k, earlier_v = self.keys[layer_idx], self.values[layer_idx]
        return torch.cat([earlier_k, keys], dim=-2), torch.cat([earlier_v, values], dim=-2)


@contextlib.contextmanager
def _keys_and_values(v: ViewLike, caches: dict[int, Any]) -> Iterator[None]:
    """Within the block, the attention of layer ``l`` reads and extends its keys and values through
    ``caches[l]``: TransformerLens' attention bridges take a cache as ``past_key_values`` only (or
    ``layer_past``; ``AttentionBridge._update_kv_cache``), while Hugging Face's decoder layers
    (transformers 5) pass theirs on as ``cache``, so that without this hand-over a bridged model's
    own cached generation forgets the prompt at every step ("Seattle Seattle Seattle ...")."""
    def give(cache):
        def hook(module, args, kwargs):
            return args, {**kwargs, "past_key_values": cache}
        return hook

    handles = [v.model.blocks[l].attn.register_forward_pre_hook(give(c), with_kwargs=True) for l, c in caches.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def own_modules(v: ViewLike) -> Iterator[torch.nn.Module]:
    """Within the block, the Hugging Face model (yielded) runs its own modules: every bridge component
    in its module tree is replaced by the module it wraps, and put back on exit. The parameters are
    the same tensors, so an applied edit shows; no TransformerLens hook fires. For passes that need no
    hook: for one token of Gemma 3 270M on one thread, the bridges' hook points and re-implemented
    attention took about 10 ms of the blocks' 38 ms."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    replaced: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []

    def unwrap(module: torch.nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, GeneralizedComponent) and child.original_component is not None:
                replaced.append((module, name, child))
                module._modules[name] = child.original_component
                child = child.original_component
            unwrap(child)

    hf = v.model.original_model
    unwrap(hf)
    try:
        yield hf
    finally:
        for module, name, child in reversed(replaced):
            module._modules[name] = child


#: ``step(ids, mask, positions)`` of :func:`decoding`: the next-token logits at the last position.
DecodeStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def decoding(v: ViewLike) -> Iterator[DecodeStep]:
    """Within the block, ``step(ids, mask, positions)`` runs the tokens ``ids`` [b, n] after every
    token run before through one key-value cache, and returns the next-token logits at the last
    position [b, d_vocab]. ``mask`` [b, tokens so far + n]: 0 at padding; ``positions`` [b, n]: the
    new tokens' positions (left-padded rows count from their first real token).

    The Hugging Face model runs its own modules (:func:`own_modules`: no hook fires) with its own
    ``DynamicCache``, which places the new tokens and builds the masks (causal, sliding window,
    padding); only the last position's final-normed state is unembedded (``View.unembed``, the
    product the full forward pass uses). The bridges' own cached generation cannot be used: their
    attention reads a cache as ``past_key_values`` only, while Hugging Face's decoder layers
    (transformers 5) pass it on as ``cache``, so it forgets the prompt at every step ("Seattle
    Seattle Seattle ..."; :func:`_keys_and_values`). No gradients.
    """
    from transformers import DynamicCache

    with own_modules(v) as hf:
        cache = DynamicCache(config=hf.config)

        @torch.no_grad()
        def step(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            hidden = hf.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                   use_cache=True).last_hidden_state
            return v.unembed(hidden[:, -1])

        yield step


def _is_cache(value: Any) -> bool:
    return type(value).__name__.endswith("Cache") or isinstance(value, (_KeyValueRecorder, _EarlierPositions))


@torch.no_grad()
def record(v: ViewLike, ids: torch.Tensor, *, fwd_hooks: Sequence = (), names: Iterable[str] = (),
           layers: Iterable[int] | None = None) -> Recording:
    """Run the model once on ``ids`` (with ``fwd_hooks``) and keep what a re-run needs.

    ``layers``: the blocks that may be re-run later (default all); the residual stream is kept
    at their inputs and at the output of the last block, keys and values and arguments for
    these blocks. ``names``: further hook names whose activations to keep. The run stops before
    the unembedding.
    """
    layers = sorted({v.check_layer(l) for l in (range(v.n_layers) if layers is None else layers)})
    rec = Recording(ids=ids)
    recorder = _KeyValueRecorder(rec, set(layers))
    resid_names = {v.resid_pre_hook(l): l for l in layers}
    resid_names[v.resid_post_hook(v.n_layers - 1)] = v.n_layers
    extra = list(dict.fromkeys(names))

    def keep_arguments(layer: int):
        parameters = inspect.signature(v.model.blocks[layer].original_component.forward).parameters
        hidden = next(iter(parameters))

        def keep(module, args, kwargs):
            named = inspect.Signature(list(parameters.values())).bind_partial(*args, **kwargs).arguments
            for p in parameters.values():
                if p.kind is inspect.Parameter.VAR_KEYWORD:
                    named.update(named.pop(p.name, {}))
            named.pop(hidden, None)
            rec.block_args[layer] = {k: (None if _is_cache(a) else a) for k, a in named.items()}
        return keep

    handles = [v.model.blocks[l].register_forward_pre_hook(keep_arguments(l), with_kwargs=True) for l in layers]
    try:
        with _keys_and_values(v, {l: recorder for l in layers}):
            got = v.capture(ids, [*resid_names, *extra, v.final_hook], fwd_hooks=fwd_hooks)
    finally:
        for handle in handles:
            handle.remove()
    rec.resid = {layer: got[name].detach() for name, layer in resid_names.items()}
    rec.captured = {name: got[name].detach() for name in extra}
    missing = [l for l in layers if l not in rec.keys]
    if missing:
        raise RuntimeError(f"{v.name}'s attention in layers {missing} did not report its keys and values "
                           "through past_key_values; the partial forward cannot re-run these blocks")
    return rec


def _cut(name: str, value: Any, rows: torch.Tensor | None, start: int, n_rows: int) -> Any:
    """One block argument for the re-run rows (``rows`` of the recording) and positions ``start ..``."""
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(name, x, rows, start, n_rows) for x in value)
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    if name not in _TOKEN_AXIS:
        raise NotImplementedError(
            f"the partial forward does not know how to cut the block argument {name!r} "
            f"(shape {tuple(value.shape)}) to the re-run positions; add it to factlens.core.forward._TOKEN_AXIS")
    if rows is not None and value.ndim >= 2 and value.shape[0] == n_rows and n_rows > 1:
        value = value[rows]
    if start and not (name == "attention_mask" and value.ndim < 3):  # a [b, t] padding mask keeps its keys
        value = value.narrow(_TOKEN_AXIS[name] % value.ndim, start, value.shape[_TOKEN_AXIS[name]] - start)
    return value


def _rows(rec: Recording, rows: torch.Tensor | Sequence[int] | None, n: int) -> torch.Tensor | None:
    if rows is None:
        if n != rec.n_rows and rec.n_rows != 1:
            raise ValueError(f"{n} rows re-run from a recording of {rec.n_rows}: say which recorded row each "
                             "comes from with rows=")
        return None if n == rec.n_rows else torch.zeros(n, dtype=torch.long, device=rec.ids.device)
    rows = torch.as_tensor(rows, dtype=torch.long, device=rec.ids.device)
    if rows.shape != (n,):
        raise ValueError(f"rows must give one recorded row per re-run row ({n}), got shape {tuple(rows.shape)}")
    return rows


def _check_recorded(rec: Recording, layers: Iterable[int]) -> None:
    not_recorded = [l for l in layers if l not in rec.resid]
    if not_recorded:
        raise ValueError(f"layers {not_recorded} were not recorded; record them with layers=")


def _pick(recorded: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return recorded if index is None else recorded[index]


def run_blocks(v: ViewLike, rec: Recording, resid: torch.Tensor, layers: range, *, start: int = 0,
               rows: torch.Tensor | Sequence[int] | None = None, fwd_hooks: Sequence = (),
               last_only: bool = False, hooks: bool = True) -> torch.Tensor:
    """Blocks ``layers`` (consecutive) on ``resid``, the residual stream entering the first of them
    at positions ``start ..`` [B, t - start, d_model]; returns the residual stream after the last.

    Row ``r`` of ``resid`` continues row ``rows[r]`` of the recording (default: row ``r``, or row 0
    of a one-row recording): its positions before ``start`` are that row's, read through the
    recorded keys and values. ``fwd_hooks`` fire on the re-run blocks' hook points, whose
    tensors cover positions ``start ..`` (position ``p`` is index ``p - start``). ``last_only``: the
    last block's output at the last position alone [B, 1, d_model] (:func:`_block_read_at_end`; its
    hooks then see positions ``start ..`` up to its attention's keys and values, the last one after).
    ``hooks=False``: no TransformerLens hook fires and the Hugging Face blocks run their own modules
    (:func:`own_modules`), handed the earlier positions' keys and values as their cache: for passes that
    set nothing inside the blocks (a hidden-state causal trace), where the bridges' hook points and
    re-implemented attention are pure cost. The same arithmetic up to float rounding.
    """
    if not layers:
        return resid
    if list(layers) != list(range(layers[0], layers[-1] + 1)):
        raise ValueError(f"layers must be consecutive, got {list(layers)}")
    if not 0 <= start < rec.n_tokens:
        raise ValueError(f"start must be a position of the recording (0..{rec.n_tokens - 1}), got {start}")
    if resid.ndim != 3 or resid.shape[1] != rec.n_tokens - start:
        raise ValueError(f"resid must be [rows, {rec.n_tokens - start}, d_model] (positions {start}..), "
                         f"got {tuple(resid.shape)}")
    _check_recorded(rec, layers)
    index = _rows(rec, rows, resid.shape[0])
    earlier = _EarlierPositions({l: _pick(rec.keys[l][:, :, :start], index) for l in layers},
                                {l: _pick(rec.values[l][:, :, :start], index) for l in layers}) if start else None
    if fwd_hooks and not hooks:
        raise ValueError("fwd_hooks fire only on the bridges: run_blocks(..., hooks=False) takes none")
    x = resid
    if hooks:  # entering the bridge's hook context costs milliseconds: only when there are hooks to add
        context = v.model.hooks(fwd_hooks=list(fwd_hooks)) if fwd_hooks else contextlib.nullcontext()
        blocks = {layer: v.model.blocks[layer] for layer in layers}
    else:
        context = own_modules(v)
        blocks = {layer: v.model.blocks[layer].original_component for layer in layers}
    with context:
        for layer in layers:
            if last_only and layer == layers[-1] and x.shape[1] > 1:
                return _block_read_at_end(v, rec, x, layer, index, start, earlier, blocks[layer])
            x = _block(v, rec, x, layer, index, start, earlier, blocks[layer])
    return x


def _block(v: ViewLike, rec: Recording, x: torch.Tensor, layer: int, index: torch.Tensor | None,
           start: int, cache: Any, block: torch.nn.Module) -> torch.Tensor:
    """Block ``layer`` on ``x``, positions ``start ..``, with the recorded arguments cut to them;
    its attention reads and extends its keys and values through ``cache`` (when not None). ``block``:
    the bridge (``v.model.blocks[layer]``) or, within :func:`own_modules`, the Hugging Face block."""
    kwargs = {k: _cut(k, a, index, start, rec.n_rows) for k, a in rec.block_args[layer].items()}
    if hasattr(block, "original_component"):  # a bridge: its attention takes the cache as past_key_values
        with _keys_and_values(v, {layer: cache} if cache is not None else {}):
            out = block(x, **kwargs)
    else:
        if cache is not None:
            kwargs[_cache_parameter(block)] = cache
        out = block(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _cache_parameter(block: torch.nn.Module) -> str:
    """The name under which a Hugging Face decoder layer takes its key-value cache (transformers 5:
    ``cache``, before it ``past_key_values``)."""
    parameters = inspect.signature(block.forward).parameters
    for name in ("cache", "past_key_values", "past_key_value", "layer_past"):
        if name in parameters:
            return name
    raise NotImplementedError(f"{type(block).__name__} takes no key-value cache argument; "
                              "run its blocks with hooks=True")


class _KeysComputed(Exception):
    """Raised by :class:`_KeysAndValuesOnly` to stop a block once its attention's keys and values are known."""


class _KeysAndValuesOnly:
    """Given to an attention bridge as ``past_key_values`` when only its keys and values are wanted:
    keeps them and stops the block."""

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        self.keys, self.values = keys, values
        raise _KeysComputed


def _block_read_at_end(v: ViewLike, rec: Recording, x: torch.Tensor, layer: int, index: torch.Tensor | None,
                       start: int, earlier: _EarlierPositions | None, block: torch.nn.Module) -> torch.Tensor:
    """Block ``layer``'s output at the last position alone [B, 1, d_model], for ``x`` at positions
    ``start ..``. Its attention there reads the keys and values of every position; those of positions
    ``start ..`` come from a run of the block on all of them stopped as its attention hands them over,
    so that the attention outputs and MLP of the positions nothing reads are never computed (in the
    last block: all but the position the logits are read at)."""
    new = _KeysAndValuesOnly()
    with contextlib.suppress(_KeysComputed):
        _block(v, rec, x, layer, index, start, new, block)
    keys, values = new.keys[:, :, :-1], new.values[:, :, :-1]
    if earlier is not None:
        keys = torch.cat([earlier.keys[layer], keys], dim=-2)
        values = torch.cat([earlier.values[layer], values], dim=-2)
    return _block(v, rec, x[:, -1:], layer, index, rec.n_tokens - 1,
                  _EarlierPositions({layer: keys}, {layer: values}), block)


def run_from(v: ViewLike, rec: Recording, layer: int, resid: torch.Tensor | None = None, *, start: int = 0,
             rows: torch.Tensor | Sequence[int] | None = None, fwd_hooks: Sequence = (),
             at: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """Blocks ``layer`` .. L-1 and the final norm: the final-normed hidden states of positions
    ``start ..`` [B, t - start, d_model], or at the positions ``at`` ([B] or [B, k] absolute
    positions; gives [B, d_model] or [B, k, d_model]). ``resid``: the residual stream entering
    block ``layer`` at positions ``start ..`` (default: the recording's, for rows ``rows``);
    ``layer`` may be L (no block runs: the final norm of ``resid``). See :func:`run_blocks`.
    """
    if not 0 <= layer <= v.n_layers:
        raise IndexError(f"layer {layer} is out of range: {v.name} has layers 0..{v.n_layers - 1} "
                         f"(and {v.n_layers}: the final norm only)")
    if resid is None:
        _check_recorded(rec, [layer])
        resid = _pick(rec.resid[layer][:, start:], None if rows is None else
                      torch.as_tensor(rows, dtype=torch.long, device=rec.ids.device))
    x = run_blocks(v, rec, resid, range(layer, v.n_layers), start=start, rows=rows, fwd_hooks=fwd_hooks)
    if at is None:
        return v.final_norm(x)
    where = torch.as_tensor(at, device=x.device).long() - start
    if (where < 0).any() or (where >= x.shape[1]).any():
        raise ValueError(f"positions at= must be re-run positions ({start}..{rec.n_tokens - 1})")
    picked = x.gather(1, where.reshape(x.shape[0], -1, 1).expand(-1, -1, x.shape[-1]))
    normed = v.final_norm(picked)
    return normed[:, 0] if where.ndim == 1 else normed


def unembed(v: ViewLike, normed: torch.Tensor) -> torch.Tensor:
    """The logits of final-normed rows [N, d_model]: [N, d_vocab], ``normed W_U + b_U`` computed as the
    unembedding's token rows times the states as columns, padded with zero columns to a multiple of
    :data:`ROW_MULTIPLE` (one state too). MKL's fp32 product is much faster that way round for a few
    states: on an AMD EPYC with AVX-512 (2 threads), Gemma's 262,144 × 640 unembedding took 16 ms for
    one state against 37 ms (reading the matrix alone takes 14 ms), 17 against 71 ms for four, 80
    against 102 ms for twenty (``bench/README.md``)."""
    n = normed.shape[0]
    columns = torch.cat([normed, normed.new_zeros(-n % ROW_MULTIPLE, normed.shape[1])])
    tokens, bias = v.model.unembed.W_U.T, v.model.unembed.b_U
    return torch.addmm(bias[:, None], tokens, columns.T).T[:n].contiguous()


def log_normalizer(v: ViewLike, normed: torch.Tensor, *, vocab_block: int = 4096,
                   row_block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``log Σ_j exp(z_j)`` and ``argmax_j z_j`` of the logits ``z = unembed(normed)`` of each row
    of ``normed`` [N, d_model]: two [N] tensors, in one pass over the unembedding.

    The logits are taken ``row_block`` rows and ``vocab_block`` tokens at a time with a running
    log-sum-exp, so that the [N, d_vocab] logits (262,144 per row for Gemma) are never written
    out. Each block is the tokens' rows times the states' columns, as in :func:`unembed`: for 1,551
    states of Gemma the products alone ran at 209 GFLOP/s that way round, and the whole pass the other
    way round at 155 GFLOP/s with 128-row blocks, 186 with 1,024 (``bench/README.md``). Gradients flow
    (through the log-sum-exp). The top token is looked for only in the columns whose running maximum a
    block raises (``max(0)`` with indices over a whole block took 11 ms, ``amax(0)`` 0.3 ms).
    """
    n = normed.shape[0]
    normed = padded_rows(normed)
    tokens, bias = v.model.unembed.W_U.T, v.model.unembed.b_U
    log_z, top = [], []
    for rows in normed.split(row_block):
        best = torch.full((rows.shape[0],), -torch.inf, device=rows.device, dtype=rows.dtype)
        best_id = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
        total = torch.zeros_like(best)
        for first in range(0, tokens.shape[0], vocab_block):
            logits = torch.addmm(bias[first:first + vocab_block, None], tokens[first:first + vocab_block], rows.T)
            block_best = logits.detach().amax(0)  # the log-sum-exp does not depend on it: no gradient
            moved = (block_best > best).nonzero()[:, 0]  # rows whose top token so far is in this block
            if len(moved):
                best_id[moved] = logits[:, moved].detach().argmax(0) + first
            new_best = torch.maximum(best, block_best)
            total = total * (best - new_best).exp() + (logits - new_best).exp().sum(0)
            best = new_best
        log_z.append(best + total.log())
        top.append(best_id)
    return torch.cat(log_z)[:n], torch.cat(top)[:n]


def token_log_probs(v: ViewLike, normed: torch.Tensor, tokens: torch.Tensor | Sequence[int], *,
                    log_z: torch.Tensor | None = None) -> torch.Tensor:
    """``log softmax(unembed(normed))[token]``: [N, k] for final-normed states ``normed`` [N, d_model]
    and ``tokens`` ([k] for every row, or [N, k]); the same numbers as unembedding and a
    log-softmax, up to the order of float summation (:func:`log_normalizer`; ``log_z``: its
    result, when already computed)."""
    weight, bias = v.model.unembed.W_U.T, v.model.unembed.b_U
    tokens = torch.as_tensor(tokens, device=normed.device)
    tokens = tokens.expand(normed.shape[0], -1) if tokens.ndim == 1 else tokens
    if log_z is None:
        log_z = log_normalizer(v, normed)[0]
    chosen = (normed[:, None] * weight[tokens]).sum(-1) + bias[tokens]
    return chosen - log_z[:, None]
