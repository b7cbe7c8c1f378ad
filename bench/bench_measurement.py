"""Seconds per measurement of the many-edits chapter (``sequences.outcomes``), broken down, at a
profile's sizes (``chapters/rome/many_edits.yml``): the unedited model, after a few ROME edits, and
after a further change at MEMIT's lowest layer.

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/bench_measurement.py [--profile cpu] [--edits 2]
        [--repeats 2] [--save numbers.json] [--compare other.json]

The yardstick and the cases are the chapter's (its first cell's sampling, seeded), and one yardstick
measures every state, as in the chapter (its per-weights results are cleared before each measurement,
what else it keeps stays): the first measurement is timed once, each later state best of
``--repeats``. The pieces are timed apart as ``outcomes`` runs them: teacher forcing of the cases
(``evaluation.target_log_probs``), LAMA P@1 (``Yardstick.measure`` without the generations) and the
generations. The numbers (log-probabilities of the cases' targets, P@1 per fact, generated texts,
entropies, the outcomes) are saved with ``--save`` and checked against another run's with
``--compare``: run the code before a change and after it one after the other (``PYTHONPATH`` naming
each) and compare their numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from factlens import data
from factlens.book.keys import machine
from factlens.core.models import load_model, view
from factlens.editing import evaluation, generation, memit, rome, second_moment, sequences
from factlens.editing.requests import Edit, EditRequest
from factlens.probing import lama

CHAPTER = Path(__file__).resolve().parents[1] / "chapters" / "rome" / "many_edits.yml"


def _cpu() -> str:
    m = machine()
    return f"{m['cpu']}, {m['cores']} cores, {', '.join(m['cpu_features']) or 'no AVX-512'}"


def _setup(model, profile: str, seed: int = 0):
    """The chapter's cases and yardstick (its first cell's sampling)."""
    sizes = yaml.safe_load(CHAPTER.read_text())[profile]
    rng = random.Random(seed)
    cases = rng.sample(rome.evaluation_cases(data.counterfact()), sizes["n_edits"])
    edited = {c.subject for c in cases}
    untouched = [f for f in lama.lama_facts("TREx") if f.subject not in edited
                 and len(view(model).target_ids(f.object)) == 1]
    others = [c for c in rome.evaluation_cases(data.counterfact()) if c.subject not in edited]
    facts = rng.sample(untouched, sizes["lama_sample"])
    prompts = [c.prompt.format(c.subject) for c in rng.sample(others, sizes["n_generate"])]
    return sizes, cases, facts, prompts


class _Timer:
    """Wraps module functions and adds up their seconds under a name (a name's outermost call only;
    nothing while ``off``)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.running: set[str] = set()
        self.off = False

    def wrap(self, module, attr: str, name: str) -> None:
        fn = getattr(module, attr)

        def timed(*args, **kwargs):
            if self.off or name in self.running:
                return fn(*args, **kwargs)
            self.running.add(name)
            tic = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tic
                self.running.discard(name)
        setattr(module, attr, timed)


def _numbers(model, cases, y, seed: int):
    """The measurement's numbers, each piece computed as ``outcomes`` computes it, with the yardstick
    ``y`` kept from one model state to the next (so that what it keeps is used after the edits)."""
    out = sequences.outcomes(model, cases, y)
    recorded = getattr(y, "recorded", {}).get(view(model))  # where outcomes keeps its forward passes
    rewrite = [c.prompt.format(c.subject) for c in cases]
    neighbours = [(p, c.target_new, true) for c in cases for p, true in c.neighborhood_prompts]
    ps = [p for p in rewrite for _ in (0, 1)] + [p for p, _, _ in neighbours for _ in (0, 1)]
    ts = [t for c in cases for t in (c.target_new, c.target_true)] + [t for _, n, tr in neighbours for t in (n, tr)]
    lp = evaluation.target_log_probs(model, ps, ts, batch_size=64, **({"recorded": recorded} if recorded else {}))
    texts = generation.generate(model, y.generation_prompts, y.generate_tokens, top_k=5, seed=seed)
    return {"log_probs": lp.tolist(), "lama": out["lama"].astype(int).tolist(), "entropy": out["entropy"].tolist(),
            "edit": out["edit"].astype(int).tolist(), "neighbour": out["neighbour"].astype(int).tolist(),
            "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--edits", type=int, default=2, help="ROME edits before the second set of measurements")
    parser.add_argument("--repeats", type=int, default=2, help="measurements timed per edited state (0: numbers only)")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["FACTLENS_RECOMPUTE"] = "v_star,k_star"
    model = load_model(args.model)
    sizes, cases, facts, prompts = _setup(model, args.profile, args.seed)
    print(f"{args.model}; {_cpu()}; torch threads {torch.get_num_threads()}; profile {args.profile}: "
          f"{len(cases)} cases, {len(facts)} LAMA facts, {len(prompts)} x {sizes['generate_tokens']} tokens")
    timer = _Timer()
    timer.wrap(evaluation, "target_log_probs", "teacher forcing")
    timer.wrap(sequences, "generate", "generation")
    timer.wrap(sequences.Yardstick, "measure", "yardstick")
    sequences.outcomes(model, cases[:1], sequences.Yardstick(facts[:4], prompts[:1], generate_tokens=2))  # warm-up
    numbers = {}
    stats = second_moment.layer_stats(model, rome.default_hparams(model).layer, progress=False)
    hp = replace(rome.default_hparams(model), context_templates=((10, 2),))
    record = Edit(model, "ROME")
    v = view(model)
    low = memit.default_hparams(model).layers[0]
    saved_low = v.mlp_out_parameter(low).detach().clone()
    kept = sequences.Yardstick(facts, prompts, generate_tokens=sizes["generate_tokens"], seed=args.seed)
    states = ("unedited", f"{args.edits} ROME edits (layer {hp.layer})",
              f"and a change at layer {low} (MEMIT's lowest)")
    try:
        for n, state in enumerate(states):
            if n == 1:
                editor = rome.ROME(hp, stats=stats)
                for c in cases[: args.edits]:
                    record.extend(editor(model, [EditRequest.from_counterfact(c)]))
            if n == 2:
                with torch.no_grad():
                    v.mlp_out_parameter(low).mul_(1.01)
            times = []
            for _ in range(args.repeats):
                timer.seconds = {}
                kept.measured.clear()  # measured again; what else it keeps (new code) stays
                tic = time.perf_counter()
                sequences.outcomes(model, cases, kept)
                total = time.perf_counter() - tic
                parts = dict(timer.seconds)
                parts["LAMA"] = parts.pop("yardstick", 0.0) - parts.get("generation", 0.0)
                times.append((total, parts))
                if n == 0:
                    break  # the first measurement of a yardstick: what the new code records, it records here
            if times:
                total, parts = min(times, key=lambda t: t[0])
                print(f"{state:40s} {total:6.2f} s per measurement ({'first' if n == 0 else f'best of {len(times)}'}): "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
            timer.off = True
            kept.measured.clear()
            numbers[state] = _numbers(model, cases, kept, args.seed)
            timer.off = False
    finally:
        record.undo()
        with torch.no_grad():
            v.mlp_out_parameter(low).copy_(saved_low)
    if args.save:
        args.save.write_text(json.dumps(numbers))
    if args.compare:
        other = json.loads(args.compare.read_text())
        for state, mine in numbers.items():
            theirs = other[state]
            lp = np.abs(np.array(mine["log_probs"]) - np.array(theirs["log_probs"])).max()
            same = {k: mine[k] == theirs[k] for k in ("lama", "edit", "neighbour", "texts", "entropy")}
            print(f"{state}: log-probs max |diff| {lp:.2e}; identical: "
                  + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))


if __name__ == "__main__":
    main()
