"""Trigger search throughput (prefixes per second): the streamed search of
``factlens.memories.keys.trigger_search`` against a brute force that keeps every coefficient of
the corpus and sorts them at the end (what the streamed search avoids).

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/bench_memories.py [--model tiny-gemma3] [--texts 64]

Prints one line per method: prefixes per second, peak coefficient storage, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def brute_force(model, keys: dict[int, list[int]], corpus, k: int, batch_size: int):
    """Store m for every prefix and every sampled key, then top-k: memory grows with the corpus."""
    from factlens.core.models import view

    v = view(model)
    stored = {l: [] for l in keys}
    for s in range(0, len(corpus), batch_size):
        rows = corpus.ids[s : s + batch_size]
        with torch.no_grad():
            acts = v.capture(v.batch(rows).ids, [v.key_hook(l) for l in keys])
        for l, ks in keys.items():
            for i, r in enumerate(rows):
                stored[l].append(acts[v.key_hook(l)][i, 1 : len(r), ks])
    tops = {l: torch.cat(m).topk(k, dim=0) for l, m in stored.items()}
    return tops, sum(torch.cat(m).numel() for m in stored.values()) * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-gemma3")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from factlens.core.cache import cache_dir
    from factlens.core.models import load_model, view
    from factlens.memories.keys import Corpus, sample_keys, trigger_search, wikitext_sentences

    model = load_model(args.model)
    # never time a cache hit: the searches go to an empty cache (the converted model stays where it is)
    os.environ["FACTLENS_CACHE_DIR"] = tempfile.mkdtemp()
    print(f"trigger cache {cache_dir()}")
    corpus = Corpus.from_texts(model, wikitext_sentences(args.texts), max_tokens=32)
    keys = sample_keys(model, args.keys)
    n = corpus.n_prefixes
    brute_force(model, keys, corpus, args.k, args.batch_size)  # warm up
    start = time.perf_counter()
    trigger_search(model, keys, corpus, args.k, batch_size=args.batch_size, progress=False)
    streamed = time.perf_counter() - start
    start = time.perf_counter()
    _, stored_bytes = brute_force(model, keys, corpus, args.k, args.batch_size)
    brute = time.perf_counter() - start
    kept = len(keys) * args.keys * args.k * (view(model).d_model + 3) * 4
    print(f"{args.model}: {n:,} prefixes, {len(keys)} layers x {args.keys} keys, top {args.k}")
    print(f"streamed     {n / streamed:9.0f} prefixes/s   keeps {kept / 2**20:8.2f} MiB (constant)")
    print(f"brute force  {n / brute:9.0f} prefixes/s   keeps {stored_bytes / 2**20:8.2f} MiB (grows with the corpus)")
    print(f"ratio streamed / brute force: {brute / streamed:.2f}x")


if __name__ == "__main__":
    main()
