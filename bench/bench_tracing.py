"""Causal tracing speed: factlens.locating.tracing.trace against the paper's straightforward loop and the
causal-tracer package (chanind), on the same model, prompt, kind, noise and number of samples.

    .venv/bin/pip install --no-deps -r bench/requirements.txt
    flock /tmp/factlens-cpu.lock env OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_tracing.py --kind hidden

All three get the same noise: causal-tracer's own draw (``numpy.random.RandomState(1).randn(S,
|subject|, d)`` times ν, with ν = 3 × the embeddings' standard deviation where layer 0 reads them,
which we pass to it: measured on Gemma's embedding table it would be 25× too small), handed
to ours as ``delta``. So the three maps must agree to float precision; the largest absolute
difference of each from ours is printed beside its time and its ratio to ours (ours timed before
and after the others, their mean: a machine shared with other work biases every ratio alike).
Ours is also put beside its floor: its floating-point operations (counted by torch's
``FlopCounterMode``, matrix products) at the fp32 rate ``bench_floors.py`` measures in the same run.
``--profile`` adds where our trace spends its time (torch's profiler, by operator).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_floors import describe_machine, measure
from factlens.core.models import load_model, model_folder, view
from factlens.locating.tracing import TraceSettings, embedding_std, trace, trace_straightforward

PEER_SEED = 1  # causal-tracer's default patch_seed


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _causal_tracer(name: str, noise: float):
    """causal-tracer on the plain Hugging Face model of ``name`` (the same weights)."""
    from causal_tracer import CausalTracer, LayerConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(name) if not name.startswith("gpt2") else name
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    config = None
    if hf.config.model_type in ("gemma3_text", "gemma3"):
        config = LayerConfig(hidden_layers_matcher="model.layers.{num}",
                             attention_layers_matcher="model.layers.{num}.self_attn",
                             mlp_layers_matcher="model.layers.{num}.mlp", embedding_layer="model.embed_tokens")
    return CausalTracer(hf, tok, layer_config=config, noise=noise, device=torch.device("cpu"))


def _profile(fn) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--prompt", default="The Space Needle is located in the city of")
    p.add_argument("--subject", default="The Space Needle")
    p.add_argument("--kind", default="hidden", choices=["hidden", "mlp", "attn"])
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--noise", type=float, default=3.0)
    p.add_argument("--window", type=int, default=10, help="layers restored together for mlp / attn (the paper's 10)")
    p.add_argument("--skip-straightforward", action="store_true")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()

    model = load_model(args.model, device="cpu")
    v = view(model)
    nu = args.noise * embedding_std(model)
    span = v.subject_span(args.prompt, args.subject)
    draw = np.random.RandomState(PEER_SEED).randn(args.samples, len(span), v.d_model)
    delta = (nu * torch.from_numpy(draw)).float()
    window = 1 if args.kind == "hidden" else args.window
    settings = TraceSettings(args.kind, window=window, samples=args.samples, noise=args.noise)
    print(f"model {args.model}, {v.n_layers} layers; prompt {args.prompt!r} ({len(v.token_ids(args.prompt))} tokens), "
          f"kind {args.kind}, window {window}, {args.samples} samples, noise ν = {nu:.3f}; "
          f"CPU: {describe_machine()}")
    floors = measure(model)
    print(f"floors: {floors.describe()}")
    def run_ours():
        return trace(model, args.prompt, args.subject, settings, delta=delta)

    trace(model, args.prompt, args.subject, settings, delta=delta[:1], positions=[-1])  # warm up
    ours, t_first = _timed(run_ours)
    print(f"{'locating.tracing.trace':34s} {t_first:8.2f} s   P={ours.clean_prob:.4f} P*={ours.corrupted_prob:.4f}")
    with FlopCounterMode(display=False) as counter:
        run_ours()
    flops = counter.get_total_flops()
    print(f"{'':34s} {flops / 1e12:.3f} TFLOP: floor {floors.floor(flops=flops):.2f} s at the measured rate")
    if args.profile:
        _profile(run_ours)
    rows = []
    if not args.skip_straightforward:
        ref, t_ref = _timed(lambda: trace_straightforward(model, args.prompt, args.subject, settings, delta=delta))
        rows.append(("straightforward loop", t_ref, ref.scores))
    if not args.skip_peer:
        try:
            tracer = _causal_tracer(args.model, nu)
        except ImportError as err:
            print(f"causal-tracer is not installed ({err}): .venv/bin/pip install --no-deps -r bench/requirements.txt")
        else:
            kind = {"attn": "attention"}.get(args.kind, args.kind)
            flow, t_peer = _timed(lambda: tracer.calculate_hidden_flow(
                args.prompt, args.subject, kind=kind, samples=args.samples, window=window, patch_seed=PEER_SEED))
            rows.append(("causal-tracer 1.1.0", t_peer, flow.scores.float().cpu()))
            print(f"causal-tracer: P={flow.high_score:.4f} P*={flow.low_score:.4f}")
    # timed again after the others, so that a machine shared with other work biases every ratio alike
    t_ours = (t_first + _timed(run_ours)[1]) / 2
    print(f"{'locating.tracing.trace, again':34s} {2 * t_ours - t_first:8.2f} s   (ratios below: to the mean, "
          f"{t_ours:.2f} s, {t_ours / floors.floor(flops=flops):.2f}x its floor)")
    for label, seconds, scores in rows:
        same = scores.shape == ours.scores.shape
        agree = f"max |map difference| {float((scores - ours.scores).abs().max()):.2e}" if same else \
            f"maps of different shapes ({tuple(scores.shape)} against {tuple(ours.scores.shape)}: other tokens)"
        print(f"{label:34s} {seconds:8.2f} s   {seconds / t_ours:5.1f}x ours   {agree}")


if __name__ == "__main__":
    main()
