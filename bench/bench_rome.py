"""ROME's speed, fast against straightforward, with the same results; and cached generation.

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/bench_rome.py [--cases 8] [--prompts 20] [--tokens 24] \
        [--unembedding-bf16]

1. ``v*`` (C precomputed, as the paper's "about 2 s per edit" on a GPU excludes it): each
   CounterFact case (a seeded sample of the tuning split) is edited twice, with the partial
   forward (``rome.ROME``: the blocks above the edited layer, positions from the subject on,
   eq. 4's terms in one pass over the unembedding) and with whole forward passes and the
   straightforward loss (``partial=False``). Prints the
   seconds per edit, the Adam steps taken (20 at most; fewer when the early stop fires), the
   cosine of the two ``v*`` and whether ES/PS/NS agree. ``--unembedding-bf16``: the partial side
   reads the unembedding in bfloat16 (``ROMEHyperParams.unembedding_bf16``), the whole side stays float32.
2. Generation: ``--prompts`` CounterFact prompts continued by ``--tokens`` greedy tokens through
   the key-value cache (``generation.generate``) and by the recompute loop (``use_cache=False``):
   seconds, the ratio, and how many texts are identical; then top-5 sampling, seeded; then the
   milliseconds per greedy token (the prompt's pass excluded) for one prompt and for all of them,
   each beside its floor (``bench_floors.py``): every weight read once, or the products of the
   batch's rows at the measured FLOP rate, whichever is longer.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import replace

import torch

from bench_floors import best_of, describe_machine, measure
from factlens import data
from factlens.core import forward
from factlens.core.models import load_model, view
from factlens.editing import evaluation, rome, second_moment
from factlens.editing.generation import generate
from factlens.editing.requests import EditRequest


def bench_edits(model, cases, hp, C, *, bf16: bool = False) -> None:
    fast_hp = replace(hp, unembedding_bf16=bf16)
    rome.ROME(hp, stats=C)(model, [EditRequest.from_counterfact(cases[0])]).undo()  # samples the prefixes
    seconds: dict[bool, list[float]] = {True: [], False: []}
    steps, cosines, agree = [], [], 0
    for case in cases:
        request = EditRequest.from_counterfact(case)
        out = {}
        for partial in (True, False):
            start = time.perf_counter()
            with rome.ROME(fast_hp if partial else hp, stats=C, partial=partial)(model, [request]) as e:
                seconds[partial].append(time.perf_counter() - start)
                scores = evaluation.counterfact_scores(model, case)
                out[partial] = (e.info, {m: scores[m] for m in ("ES", "PS", "NS")})
        cos = float(torch.nn.functional.cosine_similarity(out[True][0]["v_star"], out[False][0]["v_star"], dim=0))
        cosines.append(cos)
        steps.append(out[True][0]["steps"])
        agree += out[True][1] == out[False][1]
        print(f"  case {case.case_id:5d}: {seconds[True][-1]:6.2f} s vs {seconds[False][-1]:6.2f} s, "
              f"{out[True][0]['steps']:2d}/{out[False][0]['steps']:2d} steps, cos(v*) {cos:.6f}, "
              f"ES/PS/NS {out[True][1]} vs {out[False][1]}", flush=True)
    fast, slow = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(f"ROME v*, {len(cases)} cases, layer {hp.layer}, {len(rome.templates_for(model, hp))} prompts:")
    print(f"  partial forward  median {fast:6.2f} s per edit{', unembedding in bfloat16' if bf16 else ''}")
    print(f"  whole forward    median {slow:6.2f} s per edit   ({slow / fast:.2f}x the partial)")
    print(f"  Adam steps taken: median {statistics.median(steps)}, {min(steps)}..{max(steps)} of {hp.v_steps} "
          f"({sum(s < hp.v_steps for s in steps)} of {len(steps)} stopped early)")
    print(f"  cos(v*) min {min(cosines):.6f}; ES/PS/NS equal on {agree} of {len(cases)} cases")


def per_token_seconds(model, prompts, tokens: int, repeats: int = 3) -> float:
    """Seconds per greedy token after the first (the prompt's pass excluded): the difference of the
    best times for ``tokens`` and for 1 token, over ``tokens - 1``."""
    return (best_of(lambda: generate(model, prompts, tokens), repeats)
            - best_of(lambda: generate(model, prompts, 1), repeats)) / (tokens - 1)


def bench_generation(model, prompts, tokens) -> None:
    generate(model, prompts[:2], 2)  # warm up
    times, texts = {}, {}
    for use_cache in (True, False):
        start = time.perf_counter()
        texts[use_cache] = generate(model, prompts, tokens, use_cache=use_cache)
        times[use_cache] = time.perf_counter() - start
    same = sum(a == b for a, b in zip(texts[True], texts[False]))
    print(f"generation, {len(prompts)} prompts x {tokens} greedy tokens:")
    print(f"  key-value cache  {times[True]:6.2f} s")
    print(f"  recompute loop   {times[False]:6.2f} s   ({times[False] / times[True]:.1f}x the cached)")
    print(f"  identical texts: {same} of {len(prompts)}")
    sampled = [generate(model, prompts, tokens, top_k=5, seed=1, use_cache=c) for c in (True, True, False)]
    print(f"  top-5 sampling, seed 1: repeatable {sampled[0] == sampled[1]}, "
          f"equal to the recompute loop on {sum(a == b for a, b in zip(sampled[0], sampled[2]))} of {len(prompts)}")
    floors = measure(model)
    print(f"  floors: {floors.describe()}")
    weights = floors.weight_bytes // 4  # fp32: every weight is one multiply-add per row (the unembedding tied)
    for batch in sorted({1, len(prompts)}):
        seconds = per_token_seconds(model, prompts[:batch], tokens)
        rows = batch + forward.row_padding(batch)
        floor = floors.floor(read_bytes=floors.weight_bytes, flops=2 * weights * rows)
        print(f"  per token, batch {batch:3d}: {1e3 * seconds:7.1f} ms; floor {1e3 * floor:6.1f} ms "
              f"(weights read once, or {rows} rows' products at the measured rate): {seconds / floor:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--cases", type=int, default=8, help="CounterFact cases edited both ways")
    parser.add_argument("--prompts", type=int, default=20, help="prompts continued both ways")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unembedding-bf16", action="store_true", help="the partial side's unembedding in bfloat16")
    args = parser.parse_args()
    os.environ["FACTLENS_RECOMPUTE"] = "v_star,k_star"  # time the computation, not a read of the cache
    model = load_model(args.model)
    hp = rome.default_hparams(model)
    C = second_moment.layer_stats(model, hp.layer, corpus=hp.mom2_corpus, samples=hp.mom2_samples, progress=False)
    counterfact = rome.tuning_cases(data.counterfact())
    cases = random.Random(args.seed).sample(counterfact, args.cases)
    print(f"{view(model).label}; {describe_machine()}")
    if args.cases:
        bench_edits(model, cases, hp, C, bf16=args.unembedding_bf16)
    if args.prompts:
        prompts = [c.filled_prompt for c in random.Random(args.seed + 1).sample(counterfact, args.prompts)]
        bench_generation(model, prompts, args.tokens)


if __name__ == "__main__":
    main()
