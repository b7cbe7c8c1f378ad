"""The partial forward (factlens.core.forward through the View): is re-running only positions ≥ i worth it
against re-running every position from layer l, and both against a full forward pass?

    flock /tmp/factlens-cpu.lock env OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_forward.py

The workload is one optimization step of ROME's v* (forward and backward): a batch of prompts
"<context> The Space Needle is located in the city of" (contexts of different lengths, right
padded), δ added to the MLP output of layer ``--layer`` at the subject's last token, the loss
read at the last position of each row. Four ways, in one run, with the loss and δ's gradient
checked equal:

* full: the whole model and the logits at every position (the straightforward step);
* full, logits where read: the whole model, the unembedding only at the read positions;
* from layer l: blocks l.. on every position (``view.run_from(rec, l)``), a recording made once;
* from layer l, positions ≥ i: blocks l.. on positions ≥ i only, the earlier positions' keys and
  values from the recording (``view.run_from(rec, l, start=i)``).

Then the unembedding of 1 to 12 rows (``--unembed-rows``): the bridge's own product against
``View.unembed``, which pads the rows to a multiple of ``forward.ROW_MULTIPLE``, forward and
backward, with the logits checked equal. MKL's fp32 product took about twice as long for some
row counts (3, 7, 11) as for 4, 8 or 12 on an AMD EPYC; the padding removes that.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from factlens.core.models import load_model, view

CONTEXTS = ["", "The.", "Therefore, it is.", "I love this place.", "Today the weather is nice and warm.",
            "The following is a list of facts about the world.", "He said that", "In the news today,",
            "A new study finds that many people", "Once upon a time there was a small village."]


def _cpu() -> str:
    try:
        info = open("/proc/cpuinfo").read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        return f"{name}, AVX-512 {'yes' if 'avx512f' in info else 'no'}"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--layer", type=int, default=5)
    p.add_argument("--rows", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--unembed-rows", type=int, default=12, help="unembed 1..N rows both ways (0: skip)")
    args = p.parse_args()

    model = load_model(args.model, device="cpu")
    v = view(model)
    subject, prompt = "The Space Needle", "The Space Needle is located in the city of"
    texts = [f"{c} {prompt}".strip() for c in (CONTEXTS * 4)[: args.rows]]
    batch = v.batch(texts)
    last_subject = torch.tensor([v.subject_span(t, subject).last for t in texts])
    start = int(last_subject.min())
    read = batch.last
    target = v.single_token_id("Seattle")
    rows = torch.arange(len(texts))
    layer = v.check_layer(args.layer)
    rec = v.record(batch.ids, layers=range(layer, v.n_layers))

    def add_delta(delta, offset):
        def add(x, hook):
            x = x.clone()
            x[rows, last_subject - offset] += delta
            return x
        return add

    def nll(logits_at_read):
        return -logits_at_read.log_softmax(-1)[:, target].mean()

    def full_all_logits(d):
        logits = model.run_with_hooks(batch.ids, fwd_hooks=[(v.value_hook(layer), add_delta(d, 0))])
        return nll(logits[rows, read])

    def full_read_logits(d):
        return nll(v.logits_at(batch.ids, read, fwd_hooks=[(v.value_hook(layer), add_delta(d, 0))]))

    def from_layer(d, first):
        hidden = v.run_from(rec, layer, start=first, fwd_hooks=[(v.value_hook(layer), add_delta(d, first))],
                            at=read[:, None])
        return nll(v.unembed(hidden)[:, 0])

    ways = {
        "full, all logits": full_all_logits,
        "full, logits where read": full_read_logits,
        "from layer l": lambda d: from_layer(d, 0),
        "from layer l, positions >= i": lambda d: from_layer(d, start),
    }
    print(f"{args.model}: {v.n_layers} layers; {len(texts)} rows of {batch.ids.shape[1]} tokens (padded), "
          f"layer {layer}, re-run from position {start}; torch threads {torch.get_num_threads()}; CPU: {_cpu()}")
    base = torch.zeros(v.d_model)
    results = {}
    for name, step in ways.items():
        times, out = [], None
        for _ in range(args.repeats + 1):
            delta = base.clone().requires_grad_(True)
            t0 = time.perf_counter()
            with v.frozen_except([]):
                loss = step(delta)
                loss.backward()
            times.append(time.perf_counter() - t0)
            out = (float(loss.detach()), delta.grad.clone())
        results[name] = (statistics.median(times[1:]), out)
    ref_time, (ref_loss, ref_grad) = results["full, all logits"]
    for name, (seconds, (loss, grad)) in results.items():
        cos = float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0))
        print(f"{name:32s} {seconds * 1000:8.1f} ms/step   {ref_time / seconds:5.2f}x   "
              f"loss {loss:.6f} (|diff| {abs(loss - ref_loss):.1e})   grad cosine {cos:.6f}")
    if args.unembed_rows:
        unembedding_rows(model, args.unembed_rows, args.repeats)


def unembedding_rows(model, most: int, repeats: int) -> None:
    """Forward and backward through the unembedding for 1..most rows: the bridge's product as it
    is, and View.unembed's padded one."""
    v = view(model)
    print(f"\nunembedding ({v.d_vocab:,} x {v.d_model}), forward + backward, ms: rows, bridge, padded, ratio")
    for n in range(1, most + 1):
        normed = torch.randn(n, 1, v.d_model)
        times = {}
        for name, unembed in (("bridge", model.unembed), ("padded", v.unembed)):
            runs = []
            for _ in range(repeats + 1):
                x = normed.clone().requires_grad_(True)
                t0 = time.perf_counter()
                with v.frozen_except([]):  # the gradient reaches the states only, as in ROME's v*
                    logits = unembed(x)
                    logits.logsumexp(-1).sum().backward()
                runs.append(time.perf_counter() - t0)
            times[name] = (statistics.median(runs[1:]), logits.detach())
        assert torch.allclose(times["bridge"][1], times["padded"][1], atol=1e-4), "the padded logits differ"
        print(f"  {n:2d} {times['bridge'][0] * 1000:8.1f} {times['padded'][0] * 1000:8.1f} "
              f"{times['bridge'][0] / times['padded'][0]:6.2f}x")


if __name__ == "__main__":
    main()
