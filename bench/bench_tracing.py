"""Causal tracing speed: factlens.tracing.trace against the causal-tracer package (chanind) and
against the paper's straightforward loop, on the same model, prompt, kind, noise and samples.

    .venv/bin/pip install --no-deps -r bench/requirements.txt
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_tracing.py --samples 10 --kind hidden

Reports the wall time of each, the ratio against factlens, and how well the score maps agree
(Pearson correlation, largest absolute difference). The noise draws differ between packages,
so the maps agree only up to sampling noise; with many samples (``--samples 50``) the largest
difference shrinks. The straightforward loop uses factlens's own noise, so it must agree to
float precision. causal-tracer measures its noise on the embedding table, which on Gemma is 25×
too small (Gemma scales the table by sqrt(d_model)); we give it our noise level explicitly.
"""

from __future__ import annotations

import argparse
import time

import torch

from factlens.models import load_model, model_folder, view
from factlens.tracing import corruption, embedding_std, trace, trace_straightforward


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1]), float((a - b).abs().max())


def _causal_tracer(name: str, prompt: str, subject: str, kind: str, samples: int, window: int, noise: float):
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
    tracer = CausalTracer(hf, tok, layer_config=config, noise=noise, device=torch.device("cpu"))
    peer_kind = {"attn": "attention"}.get(kind, kind)
    return lambda: tracer.calculate_hidden_flow(prompt, subject, kind=peer_kind, samples=samples,
                                                window=1 if kind == "hidden" else window)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--prompt", default="The Space Needle is located in the city of")
    p.add_argument("--subject", default="The Space Needle")
    p.add_argument("--kind", default="hidden", choices=["hidden", "mlp", "attn"])
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--noise", type=float, default=3.0)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--skip-straightforward", action="store_true")
    args = p.parse_args()

    model = load_model(args.model, device="cpu")
    std = embedding_std(model)
    delta = corruption(model, args.prompt, args.subject, samples=args.samples, noise=args.noise, std=std)
    common = dict(window=args.window)
    ours, t_ours = _timed(lambda: trace(model, args.prompt, args.subject, args.kind, delta=delta, **common))
    print(f"model {args.model}, {view(model).n_layers} layers; prompt {args.prompt!r}, kind {args.kind}, "
          f"{args.samples} samples, noise {args.noise} x {std:.3f}; torch threads {torch.get_num_threads()}")
    print(f"factlens.tracing.trace       {t_ours:8.1f} s   P={ours.clean_prob:.3f} P*={ours.corrupted_prob:.4f}")
    rows = []
    if not args.skip_straightforward:
        ref, t_ref = _timed(lambda: trace_straightforward(model, args.prompt, args.subject, args.kind,
                                                          delta=delta, **common))
        rows.append(("straightforward loop (same noise)", t_ref, ref.scores))
    try:
        run = _causal_tracer(args.model, args.prompt, args.subject, args.kind, args.samples, args.window,
                             args.noise * std)
        flow, t_peer = _timed(run)
        if list(flow.scores.shape) != list(ours.scores.shape):
            print(f"causal-tracer scores have shape {tuple(flow.scores.shape)}, ours {tuple(ours.scores.shape)}")
        rows.append(("causal-tracer 1.1.0", t_peer, flow.scores.float().cpu()))
        print(f"causal-tracer: P={flow.high_score:.3f} P*={flow.low_score:.4f}")
    except Exception as err:  # report why the peer cannot run, keep the fallback peer
        print(f"causal-tracer could not run: {type(err).__name__}: {err}")
    for label, seconds, scores in rows:
        if scores.shape == ours.scores.shape:
            corr, diff = _agreement(ours.scores, scores)
            agree = f"corr {corr:.4f}, max |diff| {diff:.4f}"
        else:
            agree = "shapes differ"
        print(f"{label:30s} {seconds:8.1f} s   ratio {seconds / t_ours:5.1f}x   {agree}")


if __name__ == "__main__":
    main()
