"""Seconds per edit of ROME, MEMIT, AlphaEdit and knowledge neurons at batch sizes 1, 10 and 100, and
the cost of the sequential runs of the many-edits chapter.

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/bench_many_edits.py [--model gemma-3-270m] [--batches 1 10 100]

* ROME edits one fact at a time, so a "batch" of n is n edits in sequence (``rome.ROME``).
* MEMIT and AlphaEdit: the target residuals ``z`` are timed per fact on ``--z-facts`` facts (the
  cost every batch pays per fact); the update over the critical layers is timed per batch size on
  distinct requests, with those ``z`` repeated (the update's cost does not depend on their values).
  Seconds per edit = z per fact + update / batch size. AlphaEdit's projectors (once per model) are
  timed apart.
* MEMIT's keys for a batch: one forward pass over every (request, template) prompt
  (``memit.read_layer``) against the straightforward peer, ROME's ``compute_key`` per request.
* The sequential runs: ``sequences.run_sequence`` on ``--sequence`` edits per method (``sequences.editor``),
  measured every ``--every``; seconds per edit and per measurement.
Every edit is undone; the model is the same at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from dataclasses import replace

import torch

from factlens import data
from factlens.core.models import load_model, view
from factlens.editing import alphaedit, knowledge_neurons, memit, rome, second_moment, sequences
from factlens.editing.requests import Edit, EditRequest
from factlens.probing import lama


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        return f"{name}, {'AVX-512' if 'avx512f' in info else 'no AVX-512'}"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def _timed(fn, *args, **kwargs):
    tic = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--z-facts", type=int, default=3, help="facts whose z (and ROME edits) are timed")
    parser.add_argument("--sequence", type=int, default=20, help="edits per method in the sequential runs")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--templates", type=int, nargs=2, default=[10, 2], help="(length, count) of the prefixes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["FACTLENS_RECOMPUTE"] = "v_star,k_star"  # time the computation, not a read of the cache
    model = load_model(args.model)
    spec = (tuple(args.templates),)
    rhp = replace(rome.default_hparams(model), context_templates=spec)
    mhp = replace(memit.default_hparams(model), context_templates=spec)
    ahp = replace(alphaedit.default_hparams(model), memit=mhp)
    pool = rome.evaluation_cases(data.counterfact())
    cases = random.Random(args.seed).sample(pool, max(args.batches + [args.sequence]))
    requests = [EditRequest.from_counterfact(c) for c in cases]
    stats = {layer: second_moment.layer_stats(model, layer, samples=mhp.mom2_samples, progress=False)
             for layer in sorted({*mhp.layers, rhp.layer})}
    v = view(model)
    print(f"{args.model}; {_cpu()}; torch threads {torch.get_num_threads()}; prefixes {spec}")

    # ROME, one edit at a time
    rome.templates_for(model, rhp)  # sampled once per model (not an edit's cost)
    editor, record = rome.ROME(rhp, stats=stats[rhp.layer]), Edit(model, "ROME")
    _, rome_s = _timed(lambda: [record.extend(editor(model, [r])) for r in requests[:args.z_facts]])
    record.undo()
    rome_per_edit = rome_s / args.z_facts
    print(f"ROME       {rome_per_edit:6.2f} s per edit at every batch size (one fact per update)")

    # z per fact, shared by MEMIT and AlphaEdit
    zs, z_s = _timed(memit.compute_zs, model, requests[:args.z_facts], mhp)
    z_per_fact = z_s / args.z_facts
    print(f"z          {z_per_fact:6.2f} s per fact (MEMIT's and AlphaEdit's target residual, eq. 16)")
    state, proj_s = _timed(alphaedit.AlphaEditState.create, model, ahp, stats)
    print(f"projectors {proj_s:6.2f} s once per model ({len(ahp.layers)} layers, "
          f"null dimensions {state.null_dimensions()})")
    for n in args.batches:
        batch, zrep = requests[:n], zs[torch.arange(n) % len(zs)]
        rec, memit_s = _timed(memit.MEMIT(mhp, stats=stats, zs=dict(zip(batch, zrep))), model, batch)
        rec.undo()
        fresh = alphaedit.AlphaEditState(state.projectors, {l: torch.zeros_like(p) for l, p in state.previous.items()})
        rec, alpha_s = _timed(alphaedit.AlphaEdit(ahp, state=fresh, zs=dict(zip(batch, zrep))), model, batch)
        rec.undo()
        print(f"batch {n:4d}: MEMIT {z_per_fact + memit_s / n:6.2f} s per edit (update {memit_s:6.2f} s), "
              f"AlphaEdit {z_per_fact + alpha_s / n:6.2f} s per edit (update {alpha_s:6.2f} s), "
              f"ROME {rome_per_edit:6.2f} s per edit")

    # keys: batched against ROME's compute_key per request
    n = min(max(args.batches), len(requests))
    templates = rome.templates_for(model, mhp.z_hparams())
    _, batched_s = _timed(memit.read_layer, model, requests[:n], mhp.layers[0], mhp, templates)
    _, loop_s = _timed(lambda: [rome.compute_key(model, r, mhp.layers[0], templates) for r in requests[:n]])
    print(f"keys of {n} requests: batched {batched_s:.2f} s, per request (rome.compute_key) {loop_s:.2f} s "
          f"({loop_s / batched_s:.1f}x)")

    # knowledge neurons, one fact at a time
    kn = knowledge_neurons.KnowledgeNeurons()
    _, kn_s = _timed(lambda: [kn(model, [r]).undo() for r in requests[:args.z_facts]])
    print(f"KN         {kn_s / args.z_facts:6.2f} s per edit (integrated gradients over {v.n_layers} layers)")

    # the sequential runs
    facts = lama.lama_facts("TREx", per_relation=5, seed=args.seed)
    yardstick = sequences.Yardstick(facts, [r.text for r in requests[:5]], generate_tokens=20, seed=args.seed)
    seq_z, seq_z_s = _timed(memit.compute_zs, model, requests[:args.sequence], mhp)
    for method in sequences.METHODS:
        editor = sequences.editor(model, method, rome_hparams=rhp, alphaedit_hparams=ahp,
                                  zs=dict(zip(requests[:args.sequence], seq_z)))
        run, total = _timed(sequences.run_sequence, model, cases[:args.sequence], editor, yardstick,
                            every=args.every, progress=False)
        checkpoints = run.curve["n_edits"].nunique()
        print(f"sequence {method:24s} {sum(run.edit_seconds) / args.sequence:6.2f} s per edit, "
              f"{run.measure_seconds / checkpoints:6.2f} s per measurement ({checkpoints} of them, {len(facts)} LAMA "
              f"facts), {total:6.1f} s in all" + (f" + z {seq_z_s:.1f} s" if method in ("MEMIT", "AlphaEdit") else ""))


if __name__ == "__main__":
    main()
