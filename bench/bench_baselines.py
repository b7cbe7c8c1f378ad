"""Seconds per edit of FT, FT+L and ROME on the same CounterFact requests, and the cost of ROME's
one-time key statistics (seconds per layer per 1,000 samples).

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/bench_baselines.py [--model gemma-3-270m] [--cases 3]

ROME's edits get ``C`` precomputed (so its seconds exclude the statistics, as the paper's
"about 2 s per edit" on a GPU does); the statistics are timed separately, uncached
(``rome.collect_layer_stats``).
Prints one line per method: mean and spread of seconds per edit, and its ratio to ROME.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from factlens import baselines, data, rome
from factlens.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--cases", type=int, default=3, help="CounterFact requests edited by each method")
    parser.add_argument("--stats-samples", type=int, default=2000, help="keys timed for the statistics")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model(args.model)
    hp = rome.default_hparams(model)
    start = time.perf_counter()
    C = rome.collect_layer_stats(model, [hp.layer], samples=args.stats_samples, progress=False)[hp.layer]
    stats_s = time.perf_counter() - start
    requests = [rome.EditRequest.from_counterfact(c)
                for c in random.Random(args.seed).sample(data.counterfact(), args.cases)]
    editors = {
        "ROME": lambda m, r: rome.apply(m, r, hparams=hp, stats=C),
        "FT": baselines.ft,
        "FT+L": baselines.ft_l,
    }
    rome.apply(model, requests[0], hparams=hp, stats=C).undo()  # warm up (samples the prefixes once)
    seconds: dict[str, list[float]] = {}
    for name, editor in editors.items():
        for request in requests:
            t = time.perf_counter()
            editor(model, request).undo()
            seconds.setdefault(name, []).append(time.perf_counter() - t)
    print(f"{args.model}, layer {hp.layer}, {args.cases} requests, torch threads {torch.get_num_threads()}")
    print(f"statistics: {stats_s / args.stats_samples * 1000:.2f} s per layer per 1,000 samples "
          f"({args.stats_samples} samples in {stats_s:.1f} s; the default {hp.mom2_samples} samples: "
          f"{stats_s / args.stats_samples * hp.mom2_samples:.0f} s, once per layer)")
    base = statistics.mean(seconds["ROME"])
    for name, s in seconds.items():
        spread = statistics.stdev(s) if len(s) > 1 else 0.0
        print(f"{name:5s} {statistics.mean(s):7.2f} ± {spread:5.2f} s per edit   x{statistics.mean(s) / base:.2f} ROME")


if __name__ == "__main__":
    main()
