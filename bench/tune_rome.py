"""The study that chose ROME's defaults for a model (layer, clamp) on CounterFact's tuning split.

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/tune_rome.py --layers 0,2,4,6,8,10,12,14,16 --clamps 1
    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/tune_rome.py --layers 5,6 --clamps 0.5,1,2,4

Edits ``--cases`` cases drawn (seeded) from ``rome.tuning_cases`` (every tenth CounterFact case
id, never reported) at each layer and clamp factor, with every other hyperparameter at the
model's default, and prints ES, PS, NS (percent) and S, their harmonic mean. The default is the
setting with the highest S. Results accumulate in ``--out`` (JSON, one record per layer, clamp
and case), so a study can run in short pieces; a piece already in the file is not run again.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

import pandas as pd

from factlens import data
from factlens.core.models import load_model
from factlens.editing import evaluation, rome, second_moment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--layers", default="", help="comma-separated layers (default: the model's default)")
    parser.add_argument("--clamps", default="", help="comma-separated clamp_norm_factor values (default: the default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("tune_rome.json"))
    args = parser.parse_args()
    model = load_model(args.model)
    base = rome.default_hparams(model)
    layers = [int(x) for x in args.layers.split(",") if x] or [base.layer]
    clamps = [float(x) for x in args.clamps.split(",") if x] or [base.clamp_norm_factor]
    cases = random.Random(args.seed).sample(rome.tuning_cases(data.counterfact()), args.cases)
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["layer"], r["clamp"], r["case_id"]) for r in records}
    second_moment.precompute_layer_stats(model, layers, corpus=base.mom2_corpus, samples=base.mom2_samples)
    for layer in layers:
        for clamp in clamps:
            hp = replace(base, layer=layer, clamp_norm_factor=clamp)
            todo = [c for c in cases if (layer, clamp, c.case_id) not in done]
            if not todo:
                continue
            frame = evaluation.evaluate_counterfact(model, todo, rome.ROME(hp), progress=False)
            records += [{"layer": layer, "clamp": clamp, "case_id": int(row.case_id), "ES": row.ES, "PS": row.PS,
                         "NS": row.NS, "seconds": row.edit_seconds} for row in frame.itertuples()]
            args.out.write_text(json.dumps(records, indent=1))
            print(f"layer {layer} clamp {clamp}: done ({len(todo)} cases)", flush=True)
    frame = pd.DataFrame(records)
    frame = frame[frame["case_id"].isin([c.case_id for c in cases])].groupby(["layer", "clamp"])
    table = frame[["ES", "PS", "NS"]].mean() * 100
    table["S"] = [evaluation.harmonic_mean(*row) for row in table[["ES", "PS", "NS"]].itertuples(index=False)]
    table["n"] = frame.size()
    table["seconds"] = frame["seconds"].median()
    print(table.round(1).to_string())
    best = table["S"].idxmax()
    print(f"highest S on {args.cases} tuning cases: layer {best[0]}, clamp {best[1]}")


if __name__ == "__main__":
    main()
