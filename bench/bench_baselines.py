"""Seconds per edit of FT and FT+L (factlens.editing.fine_tuning), fast against straightforward, in one run.

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/bench_baselines.py [--model gemma-3-270m] [--cases 8] [--batch 8]

For each configuration of the evaluation chapter (FT and FT+L at ROME's layer, FT+L in the
paper's configuration: layer 0, weight and bias), the same CounterFact requests are tuned

* straightforwardly: one request at a time, the whole model run at every step
  (``fine_tune(..., batch_size=1, from_layer=False)``);
* from layer l: one request at a time, only the blocks above the tuned layer re-run at every
  step (``View.run_from``);
* fast: that, and ``--batch`` requests together, each with its own copy of the weight, as the
  chapter does (``FineTuner``),

and the fast and straightforward results are checked to agree: the same Adam steps per
request, the largest difference of the final losses, and ‖ΔW_fast − ΔW‖ / ‖ΔW‖ (Frobenius; Adam moves an entry
whose gradient is nearly zero by about ``lr`` in the direction of that gradient's sign, so
rounding differences flip a few such entries: compare the whole update, not its largest
entry). Prints the CPU, the threads, seconds per edit of each, and the speed-up. The
machine's other load changes the seconds, not much the ratio: run both here, side by side.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

import torch

from factlens import data
from factlens.core.models import load_model
from factlens.editing import fine_tuning
from factlens.editing.requests import EditRequest


def cpu_name() -> str:
    """The CPU model and whether it has AVX-512 (from /proc/cpuinfo where there is one)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return platform.processor() or "unknown CPU"
    text = info.read_text()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return f"{name}, {'with' if ' avx512f' in text else 'without'} AVX-512"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--cases", type=int, default=8, help="CounterFact requests tuned by each configuration")
    parser.add_argument("--batch", type=int, default=8, help="requests tuned together by the fast version")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model(args.model)
    requests = [EditRequest.from_counterfact(c)
                for c in random.Random(args.seed).sample(data.counterfact(), args.cases)]
    configs = [fine_tuning.default_hparams(model), fine_tuning.default_hparams(model, constrained=True),
               fine_tuning.paper_hparams(model)]
    fine_tuning.fine_tune(model, requests[:1], configs[0])  # warm up
    print(f"{args.model}; {cpu_name()}; torch threads {torch.get_num_threads()}; {args.cases} requests, "
          f"batches of {args.batch}")
    print("seconds per edit, and the ratio to straightforward")
    header = " ".join(f"{name:>16s}" for name in ("straightforward", "from layer l", "fast"))
    print(f"{'configuration':28s} {header} {'steps':>6s}  same result")
    variants = {"straightforward": (1, False), "from layer l": (1, True), "fast": (args.batch, True)}
    for hp in configs:
        timings, results = {}, {}
        for name, (batch, from_layer) in variants.items():
            start = time.perf_counter()
            results[name] = fine_tuning.fine_tune(model, requests, hp, batch_size=batch, from_layer=from_layer)
            timings[name] = (time.perf_counter() - start) / len(requests)
        pairs = list(zip(results["straightforward"], results["fast"]))
        same_steps = all(s.steps == f.steps for s, f in pairs)
        worst = max(float((s.delta - f.delta).norm() / s.delta.norm().clamp_min(1e-30)) for s, f in pairs)
        loss_gap = max(abs(s.losses[-1] - f.losses[-1]) for s, f in pairs)
        steps = sum(f.steps for _, f in pairs) / len(pairs)
        cells = " ".join(f"{t:6.2f} s ({timings['straightforward'] / t:4.1f}x)" for t in timings.values())
        print(f"{fine_tuning.method_label(model, hp):28s} {cells} {steps:6.1f}  "
              f"steps {'equal' if same_steps else 'DIFFER'}, final loss within {loss_gap:.1e}, "
              f"‖ΔW_fast − ΔW‖/‖ΔW‖ ≤ {worst:.1e}")


if __name__ == "__main__":
    main()
