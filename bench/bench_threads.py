"""How the default model degrades when the 2 cores are shared with another PyTorch process.

Times one batched forward pass (32 prompts) of the default model:

* alone;
* beside a second process doing the same work, with OpenMP's default wait policy (idle
  threads spin) and with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep);
* with 1 and 2 threads per process.

Two processes sharing two cores should each take about twice as long as one alone. The
workers are separate processes started with the environment under test (OpenMP reads its
wait policy once, when the library loads), and report the median of their timed repeats.

    FACTLENS_DATA_DIR=../shared/data .venv/bin/python bench/bench_threads.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, os, statistics, sys, time
import torch
from factlens.core.models import load_model, view
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
model = load_model("gemma-3-270m")
v = view(model)
prompts = ["The Space Needle is located in the city of"] * 16 + ["Danielle Darrieux's mother tongue is"] * 16
batch = v.batch(prompts)
with torch.no_grad():
    v.logits_at(batch.ids, batch.last)  # warm up
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    times = []
    deadline = time.perf_counter() + float(os.environ["BENCH_SECONDS"])
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        v.logits_at(batch.ids, batch.last)
        times.append(time.perf_counter() - start)
print(json.dumps({"median": statistics.median(times), "n": len(times)}), flush=True)
"""


def run(n_procs: int, threads: int, policy: str | None, seconds: float) -> list[float]:
    env = dict(os.environ, BENCH_THREADS=str(threads), BENCH_SECONDS=str(seconds))
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n_procs)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    out = [json.loads(p.communicate()[0].strip().splitlines()[-1])["median"] for p in procs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per configuration")
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"CPU: {model}, {os.cpu_count()} cores, AVX-512: {'avx512f' in cpu}")
    rows = []
    base = None
    for n_procs, threads, policy in ((1, 2, None), (1, 2, "PASSIVE"), (1, 1, None), (2, 2, None), (2, 2, "PASSIVE"),
                                     (2, 1, None), (2, 1, "PASSIVE")):
        t = statistics.mean(run(n_procs, threads, policy, args.seconds))
        base = base or t
        who = "alone" if n_procs == 1 else "2 processes"
        rows.append((f"{who}, {threads} thread(s) each, OMP_WAIT_POLICY={policy or 'default (spin)'}", t, t / base))
    print(f"{'configuration':<62} {'s / forward':>11} {'× alone, 2 threads':>20}")
    for name, t, ratio in rows:
        print(f"{name:<62} {t:>11.3f} {ratio:>20.2f}")


if __name__ == "__main__":
    main()
