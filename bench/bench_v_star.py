"""The parts of one step of ROME's v* optimization, measured apart: the unembedding's terms and the blocks.

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/bench_v_star.py [--cases 8] [--repeats 5]

On ``bench_rome.py``'s cases (a seeded sample of CounterFact's tuning split, the default model's
hyperparameters), each part forward and backward, the median of ``--repeats`` after one warm-up:

1. eq. 4's two terms from the read hidden states: the straightforward computation (logits of every
   read row, a log-softmax, autograd: ``v_star._dense_terms``) against the one pass over the
   unembedding (``v_star_loss.rewrite_terms``) at several vocabulary chunk sizes, and in bfloat16;
   the largest difference of the terms and of the gradient beside each.
2. the blocks (``v_star._value_reader``: re-run from the block above the edit on the positions from
   the subject on), with the rows split into groups by ``row_groups`` at several values of
   ``_GROUP_COST`` (a very large one: one batch), and the tokens re-run per step.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
from collections.abc import Callable
from dataclasses import replace

import torch

from bench_floors import median_of
from factlens import data
from factlens.book.keys import machine
from factlens.core.models import load_model, view
from factlens.editing import rome, v_star, v_star_loss
from factlens.editing.requests import EditRequest


def bench_terms(model, prompts: list[v_star.RewritePrompts], hp, repeats: int) -> None:
    v = view(model)
    print("eq. 4's terms, forward and backward, per step (median over cases):")
    hidden = []
    for p in prompts:
        _, read = v_star._value_reader(model, p, hp.layer, torch.zeros(v.d_model), partial=True)
        with torch.no_grad():
            hidden.append(read() + 0.05 * torch.randn(len(p.read_rows), v.d_model))  # off the unedited model
    ways: dict[str, Callable] = {"dense (logits, log-softmax, autograd)": lambda p: v_star._dense_terms(model, p, hp)}
    for chunk in (2048, 4096, 8192, 16384):
        ways[f"one pass, chunks of {chunk}"] = lambda p, c=chunk: _with_chunk(model, p, hp, c)
    ways["one pass, bfloat16"] = lambda p: v_star._one_pass_terms(model, p, replace(hp, unembedding_bf16=True))
    reference: list[tuple[torch.Tensor, ...]] = []
    for name, make in ways.items():
        seconds, gaps, grad_gaps = [], [], []
        for i, (p, h) in enumerate(zip(prompts, hidden)):
            terms = make(p)
            terms(h)  # the unedited distribution, kept

            def step(terms=terms, h=h) -> tuple[torch.Tensor, ...]:
                x = h.clone().requires_grad_(True)
                new, kl = terms(x)
                (-new.mean() + hp.kl_factor * kl).backward()
                return new.detach(), kl.detach(), x.grad

            with v.frozen_except([]):
                seconds.append(median_of(step, repeats))
                got = step()
            if not reference[i:]:
                reference.append(got)
            gaps.append(max(float((a - b).abs().max()) for a, b in zip(got[:2], reference[i][:2])))
            grad_gaps.append(float((got[2] - reference[i][2]).abs().max() / reference[i][2].abs().max()))
        print(f"  {name:40s} {statistics.median(seconds) * 1e3:7.1f} ms   terms within {max(gaps):.1e}, "
              f"gradient within {max(grad_gaps):.1e} of its largest entry", flush=True)


def _with_chunk(model, prompts: v_star.RewritePrompts, hp, chunk: int):
    weight, bias = view(model).unembedding_map()
    essence, targets = v_star_loss.Essence(), prompts.target.repeat(prompts.n)

    def terms(hidden: torch.Tensor):
        new, kl = v_star_loss.rewrite_terms(hidden, targets, weight.detach(), bias, essence, chunk=chunk)
        return new.view(prompts.n, -1), kl
    return terms


def bench_blocks(model, prompts: list[v_star.RewritePrompts], hp, repeats: int) -> None:
    v = view(model)
    print("blocks from layer + 1, forward and backward, per step (median over cases):")
    kept = v_star._GROUP_COST
    for cost in (0, 8, 16, 32, 64, 10**9):
        v_star._GROUP_COST = cost
        seconds, tokens = [], []
        for p in prompts:
            delta = torch.zeros(v.d_model, requires_grad=True)
            _, read = v_star._value_reader(model, p, hp.layer, delta, partial=True)
            with v.frozen_except([]):
                seconds.append(median_of(lambda read=read: read().sum().backward(), repeats))
            last = p.subject_last.tolist()
            needed = [max([q + 1 for r, q in zip(p.read_rows.tolist(), p.read_positions.tolist()) if r == row]
                          + [last[row] + 1]) for row in range(p.n + 1)]
            groups = v_star.row_groups(last, needed)
            tokens.append(sum(len(g) * (max(needed[r] for r in g) - min(last[r] for r in g)) for g in groups))
        label = "one batch" if cost == 10**9 else f"_GROUP_COST {cost}"
        print(f"  {label:16s} {statistics.median(seconds) * 1e3:7.1f} ms   tokens re-run {statistics.median(tokens)}",
              flush=True)
    v_star._GROUP_COST = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["terms", "blocks"], default=None)
    args = parser.parse_args()
    os.environ["FACTLENS_RECOMPUTE"] = "v_star,k_star"
    model = load_model(args.model)
    hp = rome.default_hparams(model)
    cases = random.Random(args.seed).sample(rome.tuning_cases(data.counterfact()), args.cases)
    templates = rome.templates_for(model, hp)
    prompts = [v_star.RewritePrompts.build(model, EditRequest.from_counterfact(c), templates, hp.essence_prompt,
                                           kl_at_subject=hp.kl_at_subject) for c in cases]
    m = machine()
    print(f"{view(model).label}; {m['cpu']}, {'with' if 'avx512f' in m['cpu_features'] else 'without'} AVX-512; "
          f"torch threads {torch.get_num_threads()}; {len(cases)} cases, layer {hp.layer}, {len(templates)} prompts")
    if args.only in (None, "terms"):
        bench_terms(model, prompts, hp, args.repeats)
    if args.only in (None, "blocks"):
        bench_blocks(model, prompts, hp, args.repeats)


if __name__ == "__main__":
    main()
