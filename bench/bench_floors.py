"""The machine's floors, against which the benches set their times: how long reading weights from memory
takes, and how many fp32 FLOPs per second a large matrix product reaches.

    flock /work/bench.lock env OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_floors.py

Measured in one run, each the best of ``--repeats``:

* the read of every parameter tensor of the model (``p.sum()`` over ``model.parameters()``; a tied
  unembedding is read once): the floor of any pass that uses every weight once, such as one step of
  greedy generation for a batch of one;
* the read of the unembedding alone (Gemma's 262,144 × 640: 671 MB in fp32);
* the FLOP rate of an ``n × n × n`` fp32 product (``--n``, 4096 by default: 2n³ FLOPs).

A bench imports :func:`measure` and puts each operation's time beside its floor: the weights it must
read at the measured read rate, or its FLOPs at the measured rate, whichever is longer
(:meth:`Floors.floor`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from factlens.book.keys import machine
from factlens.core.models import Model, load_model, view


def wall_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """``repeats`` wall times of ``fn()``, in seconds, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The shortest of ``repeats`` wall times of ``fn()`` (:func:`wall_times`)."""
    return min(wall_times(fn, repeats))


def median_of(fn: Callable[[], object], repeats: int) -> float:
    """The median of ``repeats`` wall times of ``fn()`` (:func:`wall_times`)."""
    return statistics.median(wall_times(fn, repeats))


@dataclass(frozen=True)
class Floors:
    """What this machine does at best: ``weights_s`` reads every parameter of the model once
    (``weight_bytes`` of them), ``unembed_s`` its unembedding (``unembed_bytes``), and a large fp32
    product runs at ``flops_per_s``."""

    weights_s: float
    weight_bytes: int
    unembed_s: float
    unembed_bytes: int
    flops_per_s: float

    @property
    def read_bytes_per_s(self) -> float:
        """The memory read rate measured on every parameter of the model."""
        return self.weight_bytes / self.weights_s

    def floor(self, read_bytes: float = 0.0, flops: float = 0.0) -> float:
        """The least time an operation can take that reads ``read_bytes`` of weights from memory and
        does ``flops`` floating-point operations: the longer of the two at the measured rates."""
        return max(read_bytes / self.read_bytes_per_s, flops / self.flops_per_s)

    def describe(self) -> str:
        return (f"read of every weight {1e3 * self.weights_s:.1f} ms ({self.weight_bytes / 1e9:.2f} GB, "
                f"{self.read_bytes_per_s / 1e9:.1f} GB/s); read of the unembedding {1e3 * self.unembed_s:.1f} ms "
                f"({self.unembed_bytes / 1e6:.0f} MB); fp32 product {self.flops_per_s / 1e9:.0f} GFLOP/s")


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` with each storage once (a tied embedding and unembedding are one matrix)."""
    seen, out = set(), []
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out.append(t)
    return out


@torch.no_grad()
def measure(model: Model, *, n: int = 4096, repeats: int = 5) -> Floors:
    """This machine's :class:`Floors` for ``model``, measured now (about ten seconds for Gemma 3 270M)."""
    params = _unique([p.detach() for p in model.parameters()])
    unembed = view(model).model.unembed.W_U.detach()

    def read_all() -> None:
        for p in params:
            p.sum()

    a, b = torch.randn(n, n), torch.randn(n, n)
    product_s = best_of(lambda: a @ b, repeats)
    return Floors(weights_s=best_of(read_all, repeats), weight_bytes=sum(p.numel() * p.element_size() for p in params),
                  unembed_s=best_of(unembed.sum, repeats), unembed_bytes=unembed.numel() * unembed.element_size(),
                  flops_per_s=2 * n**3 / product_s)


def describe_machine() -> str:
    """The CPU as the results name it: model name, cores this process may use, AVX-512 / AMX."""
    cpu = machine()
    return f"{cpu['cpu']}, {cpu['cores']} cores ({', '.join(cpu['cpu_features']) or 'no AVX-512'}), " \
           f"torch threads {torch.get_num_threads()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--n", type=int, default=4096, help="the size of the square fp32 product")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    model = load_model(args.model, device="cpu")
    print(f"{view(model).label}; {describe_machine()}")
    print(measure(model, n=args.n, repeats=args.repeats).describe())


if __name__ == "__main__":
    main()
