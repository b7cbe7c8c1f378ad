"""Attribution patching against causal tracing: factlens.locating.attribution.attribution_trace (one forward
and one backward pass) against factlens.locating.tracing.trace (a partial re-run per site), on the same
model, prompt, kind, noise draw and number of samples.

    flock /tmp/factlens-cpu.lock env OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_attribution.py --kind hidden

Prints both times (the estimate timed before and after the trace, their mean: a machine shared with other
work biases both alike), their ratio, and how the maps agree: Spearman's rank correlation of the indirect
effects over the sites that can matter, and each map's peak (token, layer).
"""

from __future__ import annotations

import argparse
import time

import torch

from factlens.book.keys import machine
from factlens.core.models import load_model, view
from factlens.locating.attribution import agreement, attribution_trace
from factlens.locating.tracing import TraceSettings, corruption, embedding_std, trace


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--prompt", default="The Eiffel Tower is located in the city of")
    p.add_argument("--subject", default="The Eiffel Tower")
    p.add_argument("--kind", default="hidden", choices=["hidden", "mlp", "attn"])
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--window", type=int, default=None, help="layers restored together (default: the paper's, scaled)")
    args = p.parse_args()

    model = load_model(args.model, device="cpu")
    v = view(model)
    embedding_std(model)  # measured once and cached: not part of either time
    settings = TraceSettings(args.kind, window=args.window, samples=args.samples).for_depth(v.n_layers)
    delta = corruption(model, args.prompt, args.subject, settings)
    cpu = machine()
    print(f"model {args.model}, {v.n_layers} layers; prompt {args.prompt!r} ({len(v.token_ids(args.prompt))} tokens), "
          f"kind {args.kind}, window {settings.window}, {args.samples} samples; torch threads "
          f"{torch.get_num_threads()}; CPU: {cpu['cpu']}, {', '.join(cpu['cpu_features']) or 'no AVX-512'}")

    def estimate():
        return attribution_trace(model, args.prompt, args.subject, settings, delta=delta)

    attribution_trace(model, args.prompt, args.subject, settings, delta=delta[:1])  # warm up
    ours, t_first = _timed(estimate)
    real, t_trace = _timed(lambda: trace(model, args.prompt, args.subject, settings, delta=delta))
    t_again = _timed(estimate)[1]
    t_ours = (t_first + t_again) / 2
    found = agreement(ours, real)
    print(f"answer {real.answer!r}: P = {real.clean_prob:.4f}, P* = {real.corrupted_prob:.4f}")
    print(f"{'attribution patching':24s} {t_ours:8.2f} s   (runs {t_first:.2f} and {t_again:.2f} s)")
    print(f"{'causal trace':24s} {t_trace:8.2f} s   {t_trace / t_ours:5.1f}x the estimate")
    peak = "same site" if found.same_peak else (
        f"{'same token' if found.same_peak_token else 'different tokens'}, {found.layer_gap} layers apart")
    print(f"Spearman rank correlation {found.spearman:.3f} over {found.sites} sites; peak (token, layer): "
          f"estimate {found.estimate_peak} {real.tokens[found.estimate_peak[0]]!r}, "
          f"trace {found.trace_peak} {real.tokens[found.trace_peak[0]]!r}: {peak}")
    print(f"largest indirect effect: estimate {float(ours.indirect_effect.max()):.4f}, "
          f"trace {float(real.indirect_effect.max()):.4f}")


if __name__ == "__main__":
    main()
