"""The View: the papers' vocabulary on every architecture, and the one door to a model.

``View`` is the one place that knows architectures apart (GPT-2's single MLP, Gemma's gated MLP
with its extra norms, Llama's gated MLP): every method asks it for hook names, the value matrix,
the projection to the vocabulary, the token positions of a subject, forward passes (whole, stopped
early, partial: :mod:`factlens.core.forward`), its registry entry (:mod:`factlens.core.registry`)
and the state a method keeps per model (:class:`ModelState`). Get a model's View with
``factlens.core.models.view(model)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from factlens.core import forward, registry
from factlens.core.forward import Recording


class SubjectNotFoundError(ValueError):
    """The subject string does not occur in the prompt."""


class TargetSplitError(ValueError):
    """A target that must be one token is split into several by the tokenizer."""


@dataclass(frozen=True)
class TokenSpan:
    """Token positions ``start`` (inclusive) to ``stop`` (exclusive) in a tokenized prompt."""

    start: int
    stop: int

    @property
    def last(self) -> int:
        return self.stop - 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Batch:
    """Token rows of different lengths, right-padded into one tensor.

    ``ids`` [b, t]; ``lengths`` [b] (on the CPU); ``mask`` [b, t] (1 for a real token, 0 for
    padding) when :meth:`View.batch` was asked for it. Right padding keeps every real token's
    position and causal context exact, so a forward pass needs no mask: read row ``i`` at
    ``last[i]`` (its last real token) or earlier.
    """

    ids: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor | None = None

    @property
    def last(self) -> torch.Tensor:
        """The position of each row's last real token: [b]."""
        return self.lengths - 1


@dataclass(frozen=True)
class _ParameterDigest:
    """The sha256 of one parameter's dtype, shape and bytes, and which version of which tensor it
    was taken from: the parameter object (weakly), its storage and its version counter, which
    every in-place change bumps (``copy_``, ``add_``, an optimizer's step, through any view)."""

    tensor: weakref.ref
    data_ptr: int
    version: int
    sha256: str

    @classmethod
    def of(cls, p: torch.Tensor) -> _ParameterDigest:
        t = p.detach().cpu().contiguous()
        digest = hashlib.sha256(f"{t.dtype} {tuple(t.shape)} ".encode())
        digest.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
        return cls(weakref.ref(p), p.data_ptr(), p._version, digest.hexdigest())

    def describes(self, p: torch.Tensor) -> bool:
        """Whether ``p`` is still the tensor digested, unchanged since."""
        return self.tensor() is p and self.data_ptr == p.data_ptr() and self.version == p._version


class _StopForward(Exception):
    """Raised by :meth:`View.capture` once every hook it waits for has fired."""


@dataclass
class ModelState:
    """What methods compute once per model object and reuse (``View.state``), one field per purpose.
    Kept for the model object's life: none of it depends on the weights an edit changes, except
    ``weight_digests``, which is kept with each parameter's version.

    Attributes:
        context_templates: ROME's random prefix templates (``factlens.editing.rome.templates_for``),
            by ``(((length, count), ...), seed, sampled from BOS)``.
        null_space_projectors: AlphaEdit's projectors ``P`` onto the null space of ``C``
            (``factlens.editing.alphaedit.AlphaEditState.create``), by ``(layer, corpus, keys, threshold)``.
        corpus_digests: sha256 of the token ids of the corpus chunks ``C`` is estimated on
            (``factlens.editing.second_moment``), by ``(corpus, keys, tokens per chunk)``.
        weight_digests: sha256 of each parameter's bytes (``View.weights_digest``), by parameter name,
            with the version of the parameter it was taken from.
        lama_vocabulary: LAMA's common vocabulary mapped to single tokens
            (``factlens.probing.ranking.vocabulary_tokens``), by whether a space precedes the word.
    """

    context_templates: dict[tuple[tuple[tuple[int, int], ...], int, bool], list[str]] = field(default_factory=dict)
    null_space_projectors: dict[tuple[int, str, int, float], torch.Tensor] = field(default_factory=dict)
    corpus_digests: dict[tuple[str, int, int], str] = field(default_factory=dict)
    weight_digests: dict[str, _ParameterDigest] = field(default_factory=dict)
    lama_vocabulary: dict[bool, dict[int, str]] = field(default_factory=dict)


class View:
    """The papers' vocabulary on any supported architecture, and the one door to the model.

    =====================  =============================================  ==========
    paper                  here                                           shape
    =====================  =============================================  ==========
    memory coefficients m  ``key_hook(l)`` = ``blocks.l.mlp.hook_post``   [b, t, d_mlp]
    values V (rows)        ``mlp_out_weight(l)``                          [d_mlp, d_model]
    W k, ROME's value      ``value_hook(l)`` = ``blocks.l.mlp.hook_out``  [b, t, d_model]
    MLP / attention output ``mlp_out_hook(l)`` / ``attn_out_hook(l)``     [b, t, d_model]
    attention scores       ``attn_scores_hook(l)`` (pre-softmax) /        [b, h, t, t]
                           ``attn_pattern_hook(l)`` (weights)
    residual stream h_i^l  ``resid_pre_hook(l)`` / ``resid_post_hook(l)`` [b, t, d_model]
                           (``resid_mid_hook(l)``: between attention and MLP)
    subject embeddings     ``embed_hook``                                 [b, t, d_model]
    final-normed stream    ``final_hook``                                 [b, t, d_model]
    log P(token)           ``token_log_probs(normed, tokens)``            [N, k]
    log Z, top token       ``log_normalizer(normed)``                     [N], [N]
    one recorded run       ``record(ids)``: block inputs ``.resid[l]``,   [b, t, d_model]
                           attention ``.keys[l]`` / ``.values[l]``        [b, kv, t, d_head]
    blocks l.. re-run      ``run_from(rec, l, resid, start=i)``: the      [B, t - i, d_model]
                           final-normed stream of positions i..
                           (``run_blocks``: some blocks, not normed)
    =====================  =============================================  ==========

    ``value_hook`` is the MLP's down projection, ``W k`` (plus GPT-2's bias): what ROME's
    ``v`` is. ``mlp_out_hook`` is what the block adds to the residual stream: for Gemma the
    MLP output after its post-feedforward norm (``mlp_post_norm``), for GPT-2 and Llama the
    MLP output itself. The value matrix has one row per memory (TransformerLens' convention).

    Everything that touches the model goes through here: tokens (:meth:`token_ids`,
    :meth:`batch`, :meth:`subject_span`, :meth:`target_ids`), forward passes that stop early
    (:meth:`capture`, :meth:`final_hidden`, :meth:`logits_at`, :meth:`top_tokens`), partial
    forward passes that re-run the blocks above a change (:meth:`record`, :meth:`run_from`,
    :meth:`run_blocks`; see :mod:`factlens.core.forward`), weights
    (:meth:`mlp_out_weight`, :meth:`mlp_out_bias`, :meth:`frozen_except`), generation through a
    key-value cache (:meth:`decoding`) and the logit lens (:meth:`to_logits`).

    Per-model state lives here too, and only here: ``factlens.core.models.view`` keeps one View per
    model object (its attribute ``factlens_view``), holding the model's canonical ``name`` (given by
    ``load_model``; :attr:`entry`: its registry entry, with the shape as loaded) and ``state``
    (:class:`ModelState`: what methods compute once per model and reuse).
    """

    embed_hook = "hook_embed"
    final_hook = "unembed.hook_in"

    def __init__(self, model: TransformerBridge, name: str | None = None):
        self.model = model
        self.tokenizer = model.tokenizer
        cfg = model.cfg
        self.n_layers: int = cfg.n_layers
        self.d_model: int = cfg.d_model
        self.d_mlp: int = cfg.d_mlp
        self.d_vocab: int = cfg.d_vocab
        self.name: str = name or getattr(cfg, "model_name", None) or "model"
        self.state: ModelState = ModelState()
        block = model.blocks[0]
        self.gated: bool = hasattr(block.mlp, "gate")
        self._post_norms: bool = hasattr(block, "ln2_post")

    @property
    def entry(self) -> registry.ModelEntry:
        """The model's registry entry (:func:`factlens.core.registry.entry` of its name), with its shape
        as loaded: what the editing methods' ``default_hparams`` read."""
        return registry.entry(self.name).with_shape(registry.Shape(self.n_layers, self.d_mlp))

    @property
    def label(self) -> str:
        """How the book names the model beside a number (its registry entry's label)."""
        return registry.entry(self.name).label

    def weights_digest(self) -> str:
        """sha256 of every parameter of the model (names, dtypes, shapes, bytes): what a result computed
        on the model as it is now depends on beside its name and inputs (``cache_key``).

        Each parameter's own digest is kept with its version counter (``ModelState.weight_digests``), so
        a call hashes only the parameters changed since the last one (an edit: one MLP output weight);
        undoing an edit restores the bytes, hence the digest. A change that bypasses the version counter
        (through ``.data``, or a fused optimizer) is not seen: change weights through the View
        (``set_mlp_out_weight``) or the parameter itself, as every editor here does.
        """
        kept = self.state.weight_digests
        total = hashlib.sha256()
        for name, p in self.model.named_parameters():
            if name not in kept or not kept[name].describes(p):
                kept[name] = _ParameterDigest.of(p)
            total.update(f"{name} {kept[name].sha256}\n".encode())
        return total.hexdigest()

    def parameter_digests(self) -> dict[str, str]:
        """sha256 of each parameter as it is now, by name (kept as :meth:`weights_digest` keeps them):
        taken before a change and again after, they say which parameters it changed."""
        self.weights_digest()
        return {name: d.sha256 for name, d in self.state.weight_digests.items()}

    def cache_key(self) -> dict[str, str]:
        """What every cached result computed on this model as it is now is keyed by, beside its own
        inputs (``factlens.core.cache.cached_tensors``): the model's name, :meth:`weights_digest`, the
        device kind and torch's version (float results differ in their last bits between them)."""
        return {"model": self.name, "weights": self.weights_digest(), "device": self.device.type,
                "torch": torch.__version__}

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.cfg.device)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # hook names --------------------------------------------------------------
    def check_layer(self, layer: int) -> int:
        """``layer`` itself when the model has it; an IndexError that names the range otherwise."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} is out of range: {self.name} has layers 0..{self.n_layers - 1}")
        return layer

    def key_hook(self, layer: int) -> str:
        """Memory coefficients m = f(x K^T) (gated MLPs: act(x W_gate) * (x W_in)), Geva eq. (2)."""
        return f"blocks.{self.check_layer(layer)}.mlp.hook_post"

    def value_hook(self, layer: int) -> str:
        """The down projection's output ``W k`` (+ bias), before Gemma's post-feedforward norm:
        ROME's value ``v`` (Meng et al. 2022, eq. 4)."""
        return f"blocks.{self.check_layer(layer)}.mlp.hook_out"

    def mlp_out_hook(self, layer: int) -> str:
        return f"blocks.{self.check_layer(layer)}.hook_mlp_out"

    def attn_out_hook(self, layer: int) -> str:
        return f"blocks.{self.check_layer(layer)}.hook_attn_out"

    def attn_scores_hook(self, layer: int) -> str:
        """Attention scores before the softmax, causal and sliding-window masks applied, one row per
        query head (grouped keys already repeated): [b, n_heads, query, key]. What is set here reaches
        the softmax (Geva et al. 2023's attention knockout)."""
        return f"blocks.{self.check_layer(layer)}.attn.hook_attn_scores"

    def attn_pattern_hook(self, layer: int) -> str:
        """Attention weights after the softmax: [b, n_heads, query, key], each row summing to 1."""
        return f"blocks.{self.check_layer(layer)}.attn.hook_pattern"

    def resid_pre_hook(self, layer: int) -> str:
        return f"blocks.{self.check_layer(layer)}.hook_resid_pre"

    def resid_mid_hook(self, layer: int) -> str:
        """The residual stream between the attention and the MLP of block ``layer``: the block's output
        is this plus ``mlp_post_norm`` of the MLP's output (``value_hook``)."""
        return f"blocks.{self.check_layer(layer)}.hook_resid_mid"

    def resid_post_hook(self, layer: int) -> str:
        return f"blocks.{self.check_layer(layer)}.hook_resid_post"

    # the value matrix: the MLP output weight --------------------------------
    def _out_module(self, layer: int) -> torch.nn.Module:
        return self.model.blocks[self.check_layer(layer)].mlp.out.original_component

    def mlp_out_parameter(self, layer: int) -> torch.nn.Parameter:
        """The parameter behind ``mlp_out_weight`` (for optimizers; its layout is the architecture's)."""
        return self._out_module(layer).weight

    def mlp_out_weight(self, layer: int) -> torch.Tensor:
        """The values V of layer ``layer`` as a [d_mlp, d_model] tensor, one value vector per row.

        It shares storage with the model's parameter (``nn.Linear`` stores the transpose,
        GPT-2's ``Conv1D`` this layout). ROME's W, with W k = v, is its transpose.
        """
        weight = self.mlp_out_parameter(layer)
        return weight if weight.shape == (self.d_mlp, self.d_model) else weight.T

    def mlp_out_bias(self, layer: int) -> torch.nn.Parameter | None:
        """The bias beside the values of layer ``layer`` (GPT-2's ``c_proj.bias``, [d_model]), added to
        every MLP output; None where the output projection has none (Gemma, Llama)."""
        return getattr(self._out_module(layer), "bias", None)

    @torch.no_grad()
    def set_mlp_out_weight(self, layer: int, values: torch.Tensor) -> None:
        """Overwrite the values of layer ``layer`` in place with a [d_mlp, d_model] tensor."""
        target = self.mlp_out_weight(layer)
        if values.shape != target.shape:
            raise ValueError(f"values must have shape {tuple(target.shape)}, got {tuple(values.shape)}")
        target.copy_(values)

    def mlp_post_norm(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """What the block applies to the MLP output before adding it to the residual stream."""
        block = self.model.blocks[self.check_layer(layer)]
        return block.ln2_post(x) if self._post_norms else x

    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding table [d_vocab, d_model] (before any scaling the model applies;
        ``hook_embed`` shows the embeddings as layer 0 receives them)."""
        return self.model.original_model.get_input_embeddings().weight

    @contextlib.contextmanager
    def frozen_except(self, parameters: Iterable[torch.nn.Parameter]) -> Iterator[None]:
        """Within the block only ``parameters`` require gradients; every flag, and no gradient,
        is left behind afterwards (also when the block raises). For editors that optimize a
        few weights (FT) or an input (ROME's δ: pass no parameters)."""
        params = list(self.model.parameters())
        flags = [p.requires_grad for p in params]
        chosen = list(parameters)
        try:
            for p in params:
                p.requires_grad_(False)
            for p in chosen:
                p.requires_grad_(True)
            yield
        finally:
            for p in chosen:
                p.grad = None
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)

    # forward passes ----------------------------------------------------------
    def capture(self, ids: torch.Tensor, names: Iterable[str], *, fwd_hooks: Sequence = (),
                stop_after: bool = True) -> dict[str, torch.Tensor]:
        """Run the model on ``ids`` with ``fwd_hooks`` and return the activations at ``names``.

        With ``stop_after`` the forward pass stops as soon as every hook in ``names`` has fired
        (nothing above them is computed, the unembedding never is); otherwise it runs to the end.
        Gradients flow as the caller's context allows (wrap in ``torch.no_grad()`` when not needed).
        """
        wanted = list(dict.fromkeys(names))
        got: dict[str, torch.Tensor] = {}

        def grabber(name: str):
            def grab(x: torch.Tensor, hook: Any) -> None:
                got[name] = x
                if stop_after and len(got) == len(wanted):
                    raise _StopForward
            return grab

        try:
            with self.model.hooks(fwd_hooks=[*fwd_hooks, *((n, grabber(n)) for n in wanted)]):
                self.model(ids)
        except _StopForward:
            pass
        missing = [n for n in wanted if n not in got]
        if missing:
            raise KeyError(f"hooks {missing} never fired in {self.name}'s forward pass; use the View's hook names")
        return got

    def embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """The embeddings as layer 0 receives them (``hook_embed``; Gemma's √d scaling included)."""
        return self.capture(ids, [self.embed_hook])[self.embed_hook]

    def final_hidden(self, ids: torch.Tensor, fwd_hooks: Sequence = ()) -> torch.Tensor:
        """Run the model up to the final norm (no unembedding): [b, t, d_model], already normed.

        Use with ``unembed`` on the few positions that are read: with a 262k vocabulary the
        full logits tensor is the most expensive thing in a forward pass.
        """
        return self.capture(ids, [self.final_hook], fwd_hooks=fwd_hooks)[self.final_hook]

    def logits_at(self, ids: torch.Tensor, positions: torch.Tensor | Sequence[int],
                  fwd_hooks: Sequence = ()) -> torch.Tensor:
        """Next-token logits at one position per row of ``ids``: [b, d_vocab]."""
        hidden = self.final_hidden(ids, fwd_hooks)
        index = torch.as_tensor(positions, device=hidden.device)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
        return self.unembed(picked[:, None])[:, 0]

    @torch.no_grad()
    def top_tokens(self, prompts: Sequence[str], k: int = 1) -> list[list[str]]:
        """The ``k`` most likely next tokens after each prompt, decoded, best first."""
        batch = self.batch(prompts)
        top = self.logits_at(batch.ids, batch.last).topk(k, -1).indices.tolist()
        return [[self.tokenizer.decode([t]) for t in row] for row in top]

    # partial forward passes (factlens.core.forward) ---------------------------------
    def record(self, ids: torch.Tensor, *, fwd_hooks: Sequence = (), names: Iterable[str] = (),
               layers: Iterable[int] | None = None) -> Recording:
        """Run ``ids`` once (with ``fwd_hooks``) and keep each block's input residual stream, its
        arguments (masks, rotary embeddings) and its attention's keys and values, so that the
        blocks above a change can be re-run alone (:meth:`run_from`). ``names``: further hooks
        to keep; ``layers``: the blocks that may be re-run (default all). No gradients."""
        return forward.record(self, ids, fwd_hooks=fwd_hooks, names=names, layers=layers)

    def run_from(self, recording: Recording, layer: int, resid: torch.Tensor | None = None, *,
                 start: int = 0, rows: torch.Tensor | Sequence[int] | None = None,
                 fwd_hooks: Sequence = (), at: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Re-run blocks ``layer`` .. L-1 on positions ``start ..`` only, from ``resid`` (the stream
        entering block ``layer`` at those positions; default the recording's), attending to the
        recording's keys and values of earlier positions: the final-normed hidden states
        [B, t - start, d_model], or at the absolute positions ``at`` ([B] or [B, k]). Equal to a
        full forward pass whenever the change is at layer ≥ ``layer`` and position ≥ ``start``;
        hooks see positions ``start ..``; gradients flow through the re-run blocks. ``rows``:
        the recorded row each row continues. Unembed only the positions read (:meth:`unembed`)."""
        return forward.run_from(self, recording, layer, resid, start=start, rows=rows, fwd_hooks=fwd_hooks, at=at)

    def run_blocks(self, recording: Recording, resid: torch.Tensor, layers: range, *, start: int = 0,
                   rows: torch.Tensor | Sequence[int] | None = None, fwd_hooks: Sequence = (),
                   last_only: bool = False, hooks: bool = True) -> torch.Tensor:
        """Re-run the consecutive blocks ``layers`` as :meth:`run_from` does, and return the residual
        stream after the last of them (positions ``start ..``, no final norm; with ``last_only``, the
        last position alone, the last block computing only keys and values at the others; with
        ``hooks=False``, the Hugging Face blocks themselves, no hook firing)."""
        return forward.run_blocks(self, recording, resid, layers, start=start, rows=rows, fwd_hooks=fwd_hooks,
                                  last_only=last_only, hooks=hooks)

    def decoding(self) -> contextlib.AbstractContextManager[forward.DecodeStep]:
        """Within the block, ``step(ids, mask, positions)`` runs new tokens [b, n] after every token
        given before (one key-value cache) and returns the next-token logits at the last position
        [b, d_vocab]; ``mask`` [b, all tokens so far] marks padding 0, ``positions`` [b, n] are the
        new tokens' positions (:func:`factlens.core.forward.decoding`)."""
        return forward.decoding(self)

    def token_log_probs(self, normed: torch.Tensor, tokens: torch.Tensor | Sequence[int], *,
                        log_z: torch.Tensor | None = None) -> torch.Tensor:
        """``log softmax(unembed(normed))`` at ``tokens`` ([k], or [N, k] per row) for final-normed
        states [N, d_model]: [N, k], without writing the [N, d_vocab] logits (the vocabulary is
        taken in blocks that stay in cache; much faster for Gemma's 262,144 tokens). ``log_z``:
        :meth:`log_normalizer`'s, when already computed. The unembedding's hooks do not fire."""
        return forward.token_log_probs(self, normed, tokens, log_z=log_z)

    def log_normalizer(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log Σ_j exp(z_j)`` and the top token ``argmax_j z_j`` of the logits of each final-normed
        state [N, d_model] (two [N] tensors), in one blocked pass as :meth:`token_log_probs`."""
        return forward.log_normalizer(self, normed)

    # to the vocabulary --------------------------------------------------------
    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        return self.model.ln_final(resid)

    def unembed(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits of final-normed states [..., d_model] -> [..., d_vocab] (:func:`factlens.core.forward.unembed`:
        the unembedding's rows times the states, padded to a multiple of ``forward.ROW_MULTIPLE``,
        2 to 4 times faster than the bridge's product for a few states). The unembedding's hooks do not fire."""
        shape = normed.shape
        return forward.unembed(self, normed.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)

    def unembedding_map(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The unembedding as the plain linear map it is, ``logits = W h + b``: ``(W [d_vocab, d_model],
        b [d_vocab] or None)``, the parameters themselves; None where the logits are not a linear map of
        the final-normed state (a final logit softcap, Gemma 2's; another module), so that a method that
        computes with ``W`` directly (``factlens.editing.v_star_loss``) takes :meth:`unembed` instead."""
        linear = getattr(self.model.unembed, "original_component", None)
        softcap = getattr(self.model.cfg, "output_logits_soft_cap", -1.0) or -1.0
        hf_softcap = getattr(getattr(self.model.original_model, "config", None), "final_logit_softcapping", None)
        if type(linear) is not torch.nn.Linear or softcap > 0 or hf_softcap:
            return None
        return linear.weight, linear.bias

    def to_logits(self, resid: torch.Tensor) -> torch.Tensor:
        """Logit lens: a residual-stream vector (..., d_model) through the final norm and unembedding."""
        shape = resid.shape
        flat = resid.reshape(-1, 1, shape[-1])
        return self.unembed(self.final_norm(flat)).reshape(*shape[:-1], -1)

    # tokens ---------------------------------------------------------------------
    @property
    def bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [] if bos is None else [bos]

    @property
    def pad_id(self) -> int:
        """The id that fills padding (the tokenizer's pad token, else 0); never read by a result."""
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else pad

    def token_ids(self, text: str) -> list[int]:
        """The prompt's token ids as the model reads it: beginning-of-sequence token first."""
        return self.bos + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def str_tokens(self, text: str) -> list[str]:
        return [self.tokenizer.decode([i]) for i in self.token_ids(text)]

    def batch(self, rows: Sequence[str | Sequence[int]], *, attention_mask: bool = False) -> Batch:
        """Texts (tokenized with :meth:`token_ids`) or token rows, right-padded on the model's device."""
        if not rows:
            raise ValueError("batch needs at least one text or token row")
        tokens = [self.token_ids(r) if isinstance(r, str) else list(r) for r in rows]
        lengths = torch.tensor([len(r) for r in tokens])
        if int(lengths.min()) < 1:
            raise ValueError("a row of the batch is empty; every row needs at least one token")
        ids = torch.full((len(tokens), int(lengths.max())), self.pad_id, dtype=torch.long)
        for i, r in enumerate(tokens):
            ids[i, : len(r)] = torch.tensor(r)
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long().to(self.device) if attention_mask else None
        return Batch(ids.to(self.device), lengths, mask)

    def subject_span(self, prompt: str, subject: str) -> TokenSpan:
        """Token positions of the first occurrence of ``subject`` in ``prompt`` (BOS counted).

        A token that overlaps the subject's characters belongs to the span (ROME's
        ``find_token_range`` does the same).
        """
        start_char = prompt.find(subject) if subject else -1
        if start_char < 0:
            raise SubjectNotFoundError(
                f"subject {subject!r} does not occur in prompt {prompt!r}; the subject must be "
                f"written in the prompt exactly (same case and spelling)"
            )
        end_char = start_char + len(subject)
        enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        offset = len(self.bos)
        hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end_char and b > start_char]
        return TokenSpan(hits[0] + offset, hits[-1] + 1 + offset)

    def target_ids(self, target: str) -> list[int]:
        """Token ids of ``target`` as a continuation of a prompt (a leading space is added).

        Multi-token targets give several ids; an empty target is an error.
        """
        if not target or not target.strip():
            raise ValueError("the target is empty: give the object to predict, e.g. 'Paris'")
        text = target if target.startswith(" ") else " " + target
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def single_token_id(self, target: str) -> int:
        """The one token id of ``target`` as a continuation, or a clear error if it is split."""
        ids = self.target_ids(target)
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise TargetSplitError(
                f"target {target!r} is split by {self.name}'s tokenizer into {len(ids)} tokens "
                f"{pieces}; use a single-token target or a method that scores token sequences"
            )
        return ids[0]


