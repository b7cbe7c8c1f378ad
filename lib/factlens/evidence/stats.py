"""The intervals a claim rests on, each over the units that replicate (facts, cases, edits, keys).

* :func:`wilson`: a proportion (Wilson's score interval);
* :func:`newcombe`: a difference of two proportions, paired (the same cases) or not
  (Newcombe's hybrid score intervals, built from the two Wilson intervals), also of two shares in
  [0, 1] per unit (conservatively: the closest pairing of two 0/1 outcomes with those means);
* :func:`bootstrap`: any smooth statistic of the units (a mean; a harmonic mean of means),
  the percentile interval over resampled units;
* :func:`bootstrap_difference`: the difference of two means, paired or not.

A percentile bootstrap of a maximum or an argmax over layers is biased (a maximum of noisy
curves is pulled up, and its resamples cannot go above the largest value seen); the verdict
rule refuses it (``factlens.evidence.claims``, a claim's ``statistic``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``successes / n`` (95% with z = 1.96), as fractions."""
    if n <= 0:
        raise ValueError(f"a proportion needs n > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at p = 0 or 1 one bound is exactly 0 or 1 (centre ∓ half, which rounding can leave at 0.99999999999999)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _outcomes(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    out = np.asarray(x, dtype=float)
    if out.ndim != 1 or len(out) == 0 or not ((out >= 0) & (out <= 1)).all():
        raise ValueError(f"newcombe needs {name} as a non-empty list of outcomes in [0, 1] (0/1, or shares such "
                         f"as the fraction of a target's tokens predicted)")
    return out


def newcombe(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, paired: bool,
             z: float = 1.96) -> tuple[float, float, float]:
    """``p_a − p_b`` of two lists of 0/1 outcomes and Newcombe's interval: ``(difference, low, high)``,
    as fractions.

    From the Wilson intervals ``(l, u)`` of the two proportions (Newcombe 1998, method 10 in both
    papers): unpaired, ``d − √((p_a − l_a)² + (u_b − p_b)²)`` to ``d + √((u_a − p_a)² + (p_b − l_b)²)``
    ("Interval estimation for the difference between independent proportions"); ``paired`` (``a[i]``
    and ``b[i]`` are outcomes of the same case), the same with the cross term ``− 2φ(·)(·)`` of the
    pairs' correlation φ ("... based on paired data"), from the 2×2 table ``A`` (both), ``B`` (only a),
    ``C`` (only b), ``D`` (neither): ``φ = (AD − BC)/√((A+B)(C+D)(A+C)(B+D))``, its numerator less
    ``N/2`` when it exceeds ``N/2`` and 0 when it lies in [0, N/2], as Newcombe's method is worked in
    Altman et al., *Statistics with Confidence* (2000), ch. 6. Without that correction φ = 1 when every
    pair agrees and the interval shrinks to ``±|(p − l) − (u − p)|``, the point 0 at p = ½; with it, and
    unlike a paired bootstrap, it neither shrinks to a point when every pair agrees nor leaves a bound at
    0 when two cases of a hundred differ.

    Shares in [0, 1] (a target's tokens predicted, of several; a case's prompts) enter as expected
    counts of the closest pairing of two 0/1 outcomes with those means: per case ``min(a, b)`` both,
    ``max(a − b, 0)`` only a, ``max(b − a, 0)`` only b, the rest neither (for 0/1 outcomes, and whenever
    one side is 0/1, the ordinary table). Two equal shares then agree, as two equal outcomes do. The
    interval stays conservative: the variance the formula assumes for a − b, ``Var(d) + E[|d|(1 − |d|)]``
    with ``d = a − b`` per case, is at least the shares' own ``Var(d)``, and each Wilson interval assumes
    ``p(1 − p)``, at least a share's variance."""
    x, y = _outcomes(a, "a"), _outcomes(b, "b")
    if paired and len(x) != len(y):
        raise ValueError(f"paired outcomes must be equally many, got {len(x)} and {len(y)}")
    pa, pb = x.mean(), y.mean()
    (la, ua), (lb, ub) = wilson(x.sum(), len(x), z), wilson(y.sum(), len(y), z)
    phi = 0.0
    if paired:
        both, only_a, only_b = np.minimum(x, y).sum(), np.clip(x - y, 0, None).sum(), np.clip(y - x, 0, None).sum()
        neither = len(x) - both - only_a - only_b
        margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
        excess = both * neither - only_a * only_b
        excess = excess if excess < 0 else max(excess - len(x) / 2, 0.0)
        phi = excess / math.sqrt(margins) if margins else 0.0
    low = pa - pb - math.sqrt(max((pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2, 0.0))
    high = pa - pb + math.sqrt(max((ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2, 0.0))
    return float(pa - pb), float(low), float(high)


def bootstrap(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, *,
              n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` over the rows of ``values`` (the units), seeded.

    For a smooth statistic (a mean, a harmonic mean of means); not for a maximum or an argmax."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("bootstrap needs at least one value")
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_difference(a: Sequence[float], b: Sequence[float], *, paired: bool, n_boot: int = 1000,
                         confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) − mean(b)`` and its percentile bootstrap interval: ``(difference, low, high)``.

    ``paired``: a and b are measured on the same units in the same order, and the units are
    resampled together (the interval of an ordering on shared cases); otherwise each is resampled
    on its own."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("bootstrap_difference needs at least one value on each side")
    if paired and len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        j = i if paired else rng.integers(0, len(b), len(b))
        diffs.append(a[i].mean() - b[j].mean())
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(a.mean() - b.mean()), float(low), float(high)
