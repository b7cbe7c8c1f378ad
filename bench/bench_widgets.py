"""How long the widgets make a reader wait: the work behind creating each widget and behind one
click, with the ROME editor's layer statistics C already cached (as after the editing chapter).

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/bench_widgets.py [--model gemma-3-270m] [--repeats 3]

Times the functions the widgets call (``factlens.show.widgets``), not the browser; the live test
(tests/test_widgets_live.py) prints the editor's click-to-answer time in JupyterLab. Side by
side, for the ROME editor:

* creating it now (the model before, ``widgets.answers``) against creating it as before this
  change (a default edit: ``widgets.edit_comparison``);
* a click (``edit_comparison``: before, the edit, after, undo) against its peer, the edit alone
  (``rome.ROME`` + undo), so the widget's own share (generation before and after) shows.

Settings: the playground's editor (4 probes; 20 new tokens, the editor's default until it became
10) and the editing chapter's (2 probes, 10 new tokens). Prints the median of ``--repeats`` runs of each.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from factlens import data
from factlens.core.models import Model, load_model
from factlens.editing import rome, second_moment
from factlens.editing.requests import EditRequest
from factlens.locating import tracing
from factlens.show import widgets

PLAYGROUND = ("The Space Needle", "Rome", ["{}, a landmark of the city of", "Where is {}? It is in the city of"],
              ["Pike Place Market is located in the city of", "The Golden Gate Bridge is located in the city of"], 20)
EDITING = ("The Eiffel Tower", "Rome", [], ["The Louvre is located in the city of", "The Eiffel Tower is in"], 10)


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name} ({'with' if ' avx512f' in info else 'without'} AVX-512)"


def editor_seconds(model: Model, hp: rome.ROMEHyperParams, name: str, subject: str, target: str,
                   paraphrases: list[str], neighbours: list[str], tokens: int, *, repeats: int) -> None:
    """The ROME editor with one chapter's settings: creating it, a click, and the edit alone."""
    request = EditRequest("{} is located in the city of", subject, target)
    probes = [p.replace("{}", subject) for p in paraphrases] + neighbours
    prompts = [request.text, *probes]
    create = median_seconds(lambda: widgets.answers(model, prompts, tokens), repeats)
    click = median_seconds(lambda: widgets.edit_comparison(model, request, probes, hparams=hp, max_new_tokens=tokens),
                           repeats)
    edit = median_seconds(lambda: rome.ROME(hp)(model, [request]).undo(), repeats)
    print(f"{name} ({len(probes)} probes, {tokens} tokens)")
    print(f"  create: the model before (now)              {create:7.1f}   1×")
    print(f"  create: a default edit (before this change)  {click:7.1f}   {click / create:.1f}×")
    print(f"  click:  edit_comparison                     {click:7.1f}   {click / edit:.2f}× the edit alone")
    print(f"  peer:   rome.ROME + undo                    {edit:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["FACTLENS_RECOMPUTE"] = "v_star,k_star"  # time the computation, not a read of the cache
    model = load_model(args.model)
    hp = rome.default_hparams(model)
    start = time.perf_counter()
    second_moment.layer_stats(model, hp.layer, samples=hp.mom2_samples, corpus=hp.mom2_corpus, progress=False)
    print(f"{args.model}; {cpu_name()}; torch threads {torch.get_num_threads()}; C at layer {hp.layer} "
          f"({hp.mom2_samples:,} keys) ready in {time.perf_counter() - start:.1f} s "
          f"(gathered once in {second_moment.layer_stats_seconds(model, hp.layer, samples=hp.mom2_samples):.1f} s)")
    rome.ROME(hp)(model, [EditRequest("{} is in", "Paris", "Rome")]).undo()  # samples the prefixes once

    print("\nROME editor                                     seconds   ratio")
    for name, setting in (("playground", PLAYGROUND), ("editing chapter", EDITING)):
        editor_seconds(model, hp, name, *setting, repeats=args.repeats)

    relation = data.lama_relations()["P36"]
    prompt = "The Colosseum is located in the city of"
    print("\nother widgets, one click                      seconds")
    for name, work in (
        ("cloze explorer (query, k=10)", lambda: widgets.cloze_table(model, relation.template, "Japan", 10)),
        ("memory explorer (a prompt's memories)", lambda: widgets.memory_prompt_html(model, prompt)),
        ("trace explorer (hidden, 3 samples, its defaults)",
         lambda: tracing.trace(model, prompt, "The Colosseum", tracing.TraceSettings("hidden", samples=3))),
    ):
        print(f"  {name:45s} {median_seconds(work, args.repeats):7.1f}")


if __name__ == "__main__":
    main()
