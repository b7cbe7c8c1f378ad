"""ROME's key statistics: ``C = K Kᵀ``, the uncentred second moment of a layer's keys.

ROME (Meng et al. 2022, section 3.1, eq. 2) needs ``C`` to choose the direction of its update,
``C⁻¹ k*``: the direction in key space that changes ``k*``'s value while disturbing the
other keys least, on average over text. ``C`` is estimated once per layer from a corpus:

    C = (1/n) Σ_i k_i k_iᵀ      over n keys k_i (MLP hidden activations, ``view.key_hook``)

Here a *sample* is a key, one token position: every position but the BOS of consecutive
``chunk_tokens``-token chunks of the corpus (``factlens.data.corpus``). ROME's code counts
differently: its ``mom2_n_samples = 100000`` are Wikipedia *texts* (the first 100,000
articles of ``wikipedia 20200501.en``), each truncated to the model's 1,024 positions, and
every token of every text is a key (``rome/layer_stats.py``, ``util/runningstats.py``:
``tally`` draws ``sample_size`` dataset items; ``SecondMoment`` counts rows). The paper's
C therefore rests on at most 102.4 million keys, and with Wikipedia's article lengths on
tens of millions: :data:`PAPER_KEYS_UPPER_BOUND`.

:func:`layer_stats` returns ``C`` (cached by model, layer, corpus and sample count, with the
seconds its gathering took); :func:`precompute_layer_stats` fills several layers in one pass.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from factlens.core.cache import cached_tensors, tensor_file
from factlens.core.models import Model, view

#: The most keys the paper's C can hold: 100,000 texts of at most 1,024 tokens (GPT-2 XL).
PAPER_KEYS_UPPER_BOUND = 100_000 * 1_024


def corpus_chunks(model: Model, corpus: str, length: int) -> Iterator[list[int]]:
    """Token chunks of ``length`` tokens (BOS first) cut from the corpus's running text (its
    pieces joined by a space, as they follow each other in the text), in order."""
    from factlens import data

    v = view(model)
    body = length - len(v.bos)
    buffer: list[int] = []
    started = False
    for text in data.corpus(corpus):
        if not text.strip():
            continue
        buffer += v.tokenizer(" " + text if started else text, add_special_tokens=False)["input_ids"]
        started = True
        while len(buffer) >= body:
            yield v.bos + buffer[:body]
            buffer = buffer[body:]


def _tokens_digest(model: Model, corpus: str, samples: int, chunk_tokens: int) -> str:
    """sha256 of the token ids of the chunks :func:`collect_layer_stats` reads for ``samples`` keys:
    part of the cache key, so that a change of the corpus's text or of the tokenizer rebuilds C."""
    kept = view(model).state.corpus_digests
    key = (corpus, samples, chunk_tokens)
    if key not in kept:
        digest = hashlib.sha256()
        keys_per_chunk = chunk_tokens - len(view(model).bos)
        for _, chunk in zip(range(-(-samples // keys_per_chunk)), corpus_chunks(model, corpus, chunk_tokens)):
            digest.update(torch.tensor(chunk, dtype=torch.int64).numpy().tobytes())
        kept[key] = digest.hexdigest()
    return kept[key]


@torch.no_grad()
def collect_layer_stats(model: Model, layers: Sequence[int], *, corpus: str = "wikitext",
                        samples: int = 20_000, chunk_tokens: int = 128, batch_size: int = 8,
                        progress: bool = True) -> dict[int, torch.Tensor]:
    """``C = K Kᵀ / n`` for several layers in one pass over the corpus, ``n = samples`` keys
    (token positions; see the module docstring for how ROME's code counts)."""
    v = view(model)
    layers = sorted({v.check_layer(int(l)) for l in layers})
    if samples < 1:
        raise ValueError(f"samples must be a positive number of keys (token positions), got {samples}")
    sums = {l: torch.zeros(v.d_mlp, v.d_mlp, dtype=torch.float64) for l in layers}
    seen = 0
    bar = tqdm(total=samples, desc=f"C = KKᵀ at layers {layers}", unit="key", disable=not progress)
    chunks = corpus_chunks(model, corpus, chunk_tokens)
    skip = len(v.bos)  # the BOS position is never an edited key: left out
    while seen < samples:
        rows = [c for _, c in zip(range(batch_size), chunks)]
        if not rows:
            raise ValueError(f"corpus {corpus!r} has fewer than {samples} keys of {chunk_tokens}-token "
                             f"chunks ({seen} read); ask for fewer samples")
        ids = torch.tensor(rows, device=v.device)
        take = min(samples - seen, ids.numel() - skip * len(rows))
        keys = v.capture(ids, [v.key_hook(l) for l in layers])
        for l in layers:
            K = keys[v.key_hook(l)][:, skip:].reshape(-1, v.d_mlp)[:take].float()
            sums[l] += (K.T @ K).double().cpu()  # float32 products, float64 running sum
        seen += take
        bar.update(take)
    bar.close()
    return {l: (s / seen).float() for l, s in sums.items()}


def _entry_key(model: Model, layer: int, corpus: str, samples: int, chunk_tokens: int) -> dict:
    return {"model": view(model).name, "layer": layer, "corpus": corpus, "samples": samples,
            "chunk_tokens": chunk_tokens, "tokens_sha256": _tokens_digest(model, corpus, samples, chunk_tokens),
            "what": "uncentred second moment of mlp.hook_post, seconds"}


def _gather(model: Model, layers: Sequence[int], *, corpus: str, samples: int, chunk_tokens: int,
            progress: bool) -> dict[int, dict[str, torch.Tensor]]:
    """Cache entries ``{"C", "seconds"}`` for ``layers`` from one pass over the corpus; each layer
    records its equal share of the pass's wall time."""
    start = time.perf_counter()
    stats = collect_layer_stats(model, layers, corpus=corpus, samples=samples, chunk_tokens=chunk_tokens,
                                progress=progress)
    share = torch.tensor([(time.perf_counter() - start) / len(stats)], dtype=torch.float64)
    return {l: {"C": C, "seconds": share} for l, C in stats.items()}


def _entry(model: Model, layer: int, *, corpus: str, samples: int, chunk_tokens: int,
           progress: bool) -> dict[str, torch.Tensor]:
    """The cached ``{"C", "seconds"}`` of one layer, gathered when it is missing."""
    view(model).check_layer(layer)  # a clear IndexError before any work

    def build() -> dict[str, torch.Tensor]:
        return _gather(model, [layer], corpus=corpus, samples=samples, chunk_tokens=chunk_tokens,
                       progress=progress)[layer]

    return cached_tensors("layer_stats", _entry_key(model, layer, corpus, samples, chunk_tokens), build)


def layer_stats(model: Model, layer: int, *, corpus: str = "wikitext", samples: int = 20_000,
                chunk_tokens: int = 128, progress: bool = True) -> torch.Tensor:
    """``C = K Kᵀ / n`` at layer ``layer``: [d_mlp, d_mlp], on the model's device.

    ``n = samples`` keys (``view.key_hook``): every token position but the BOS of consecutive
    ``chunk_tokens``-token chunks of the corpus (``factlens.data.corpus``). The paper's C
    counts differently (100,000 Wikipedia texts of up to 1,024 tokens; see the module
    docstring); the scale of C cancels in eq. 2, only its shape matters. Cached by model,
    layer, corpus and sample count (``factlens.core.cache.cached_tensors``).
    """
    entry = _entry(model, layer, corpus=corpus, samples=samples, chunk_tokens=chunk_tokens, progress=progress)
    return entry["C"].to(view(model).device)


def layer_stats_seconds(model: Model, layer: int, *, corpus: str = "wikitext", samples: int = 20_000,
                        chunk_tokens: int = 128) -> float:
    """Wall seconds that gathering :func:`layer_stats` took when it was computed.

    The cache keeps the time beside ``C``, so a report made from a warm cache still shows the
    cost of the statistics rather than the cost of reading a file. A layer filled by
    :func:`precompute_layer_stats` records its equal share of the one pass over the corpus.
    """
    entry = _entry(model, layer, corpus=corpus, samples=samples, chunk_tokens=chunk_tokens, progress=False)
    return float(entry["seconds"][0])


def precompute_layer_stats(model: Model, layers: Sequence[int], *, corpus: str = "wikitext",
                           samples: int = 20_000, chunk_tokens: int = 128, progress: bool = True) -> None:
    """Fill the cache of :func:`layer_stats` for ``layers`` in one pass over the corpus."""
    missing = [l for l in layers
               if not tensor_file("layer_stats", _entry_key(model, l, corpus, samples, chunk_tokens)).exists()]
    if not missing:
        return
    gathered = _gather(model, missing, corpus=corpus, samples=samples, chunk_tokens=chunk_tokens, progress=progress)
    for l, entry in gathered.items():
        cached_tensors("layer_stats", _entry_key(model, l, corpus, samples, chunk_tokens), lambda e=entry: e)


__all__ = ["PAPER_KEYS_UPPER_BOUND", "collect_layer_stats", "corpus_chunks", "layer_stats",
           "layer_stats_seconds", "precompute_layer_stats"]
