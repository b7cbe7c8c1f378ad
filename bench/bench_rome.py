"""Speed of editing: seconds per edit (the one-time statistics excluded) for ROME, FT and
FT+L, and seconds of statistics per layer per 1,000 keys.

    python bench/bench_rome.py [--model gemma-3-270m] [--cases 5] [--samples 2000] [--threads 2]

Prints one table (method, mean and spread of seconds per edit over the cases) and the
statistics rate. Numbers depend on the machine: compare methods within one run, not runs
across machines (the paper: about 2 s per ROME edit on one GPU for GPT-2 XL).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from factlens import baselines, data, rome
from factlens.models import load_model, view


def stats_seconds_per_1000(model, layer: int, samples: int) -> float:
    """Seconds to accumulate C at one layer, per 1,000 keys (uncached)."""
    start = time.perf_counter()
    rome.collect_layer_stats(model, [layer], samples=samples, progress=False)
    return (time.perf_counter() - start) / samples * 1000


def edit_seconds(model, method, requests) -> list[float]:
    """Wall seconds of each edit (apply, then undo outside the clock)."""
    out = []
    for request in requests:
        start = time.perf_counter()
        edit = method(model, request)
        out.append(time.perf_counter() - start)
        edit.undo()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000, help="keys for the statistics timing and for C")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    hp = replace(rome.default_hparams(model), mom2_samples=args.samples)
    rate = stats_seconds_per_1000(model, hp.layer, args.samples)
    rome.layer_stats(model, hp.layer, samples=args.samples, progress=False)  # cached: not timed below
    requests = [rome.EditRequest.from_counterfact(c) for c in data.counterfact()[: args.cases]]
    methods = {
        "ROME": lambda m, r: rome.apply(m, r, hparams=hp),
        "FT": lambda m, r: baselines.ft(m, r, layer=hp.layer),
        "FT+L": lambda m, r: baselines.ft_l(m, r, layer=hp.layer),
    }
    rome.templates_for(model, hp)  # the prefixes are sampled once per model: not timed
    print(f"{args.model} ({view(model).n_layers} layers), layer {hp.layer}, {args.cases} CounterFact cases, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':<6} {'s/edit':>8} {'min':>7} {'max':>7}")
    for name, method in methods.items():
        secs = edit_seconds(model, method, requests)
        print(f"{name:<6} {statistics.mean(secs):8.2f} {min(secs):7.2f} {max(secs):7.2f}")
    print(f"statistics C = KKᵀ: {rate:.2f} s per layer per 1,000 keys")


if __name__ == "__main__":
    main()
