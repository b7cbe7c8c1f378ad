"""The intervals (factlens.evidence.stats) against hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from factlens.evidence.stats import bootstrap, bootstrap_difference, newcombe, wilson


def test_wilson_matches_hand_computation():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71674, half 0.20888
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4) and high == pytest.approx(0.94331, abs=1e-4)
    with pytest.raises(ValueError, match="n > 0"):
        wilson(0, 0)
    with pytest.raises(ValueError, match=r"\[0, n\]"):
        wilson(11, 10)


def test_wilson_reaches_the_ends_exactly():
    # 6 of 6: the upper bound is 1 exactly (rounding gave 0.99999999999999, which missed a paper's 100%)
    low, high = wilson(6, 6)
    assert high == 1.0 and low == pytest.approx(0.6097, abs=1e-4)
    assert wilson(0, 6)[0] == 0.0 and wilson(5, 5)[1] == 1.0


def test_newcombe_paired_by_hand():
    # 2 cases both right, 3 only a's, 0 only b's, 5 neither (n = 10): p_a = 0.5, p_b = 0.2;
    # Wilson (0.23659, 0.76341) and (0.05668, 0.50984); AD - BC = 10 is above N/2 = 5, so phi = (10 - 5) / 20 = 0.25
    # low  = 0.3 - sqrt(0.26341^2 - 2 0.25 0.26341 0.30984 + 0.30984^2) = 0.3 - 0.35296 = -0.05296
    # high = 0.3 + sqrt(0.26341^2 - 2 0.25 0.26341 0.14332 + 0.14332^2) = 0.3 + 0.26655 = 0.56655
    a = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    b = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    d, low, high = newcombe(a, b, paired=True)
    assert d == pytest.approx(0.3)
    assert low == pytest.approx(-0.05296, abs=2e-5) and high == pytest.approx(0.56655, abs=2e-5)
    # no case differs: the interval is not a point (a paired bootstrap would give [0, 0])
    _, low, high = newcombe([1] * 50, [1] * 50, paired=True)
    assert low == pytest.approx(-high) and 0.07 < high < 0.072
    # nor at p = 1/2, where phi = 1 would make it one: AD = 625 less N/2 = 25, phi = 600 / 625 = 0.96;
    # Wilson(25, 50) = 0.5 -+ 0.13355, so the half-width is 0.13355 sqrt(2 - 2 0.96) = 0.037776
    _, low, high = newcombe([1] * 25 + [0] * 25, [1] * 25 + [0] * 25, paired=True)
    assert high == pytest.approx(0.037776, abs=2e-6) and low == pytest.approx(-high)
    with pytest.raises(ValueError, match=r"outcomes in \[0, 1\]"):
        newcombe([1.5, 1], [1, 1], paired=True)
    with pytest.raises(ValueError, match="equally many"):
        newcombe([1, 0], [1], paired=True)


def test_newcombe_takes_shares_as_the_closest_pairing_by_hand():
    # a = [1, 0.5, 1, 0] (a share: half of a target's tokens), b = [1, 0, 0, 0]: per case min(a, b) both,
    # max(a - b, 0) only a, ...: both = 1, only a = 1.5, only b = 0, neither = 1.5; p_a = 0.625, p_b = 0.25;
    # AD - BC = 1.5 lies in [0, N/2 = 2], so phi = 0;
    # Wilson(2.5, 4) = (0.219422, 0.908103), Wilson(1, 4) = (0.045586, 0.699364)
    # low  = 0.375 - sqrt(0.405578^2 + 0.449364^2) = 0.375 - 0.605328 = -0.230328
    # high = 0.375 + sqrt(0.283103^2 + 0.204414^2) = 0.375 + 0.349188 = 0.724188
    d, low, high = newcombe([1, 0.5, 1, 0], [1, 0, 0, 0], paired=True)
    assert d == pytest.approx(0.375)
    assert low == pytest.approx(-0.230328, abs=2e-5) and high == pytest.approx(0.724188, abs=2e-5)
    # two equal shares agree as two equal outcomes do: forty cases of 0.5 on both sides give the interval of
    # twenty agreeing successes and twenty agreeing failures (independent 0/1 draws would give +-0.21)
    shares = newcombe([0.5] * 40, [0.5] * 40, paired=True)
    assert shares == pytest.approx(newcombe([1] * 20 + [0] * 20, [1] * 20 + [0] * 20, paired=True))
    assert shares[0] == 0 and shares[2] < 0.05
    # two cases of a hundred differ, both one way: the lower bound stays below 0 (a paired bootstrap puts it at 0)
    d, low, high = newcombe([1] * 100, [1] * 98 + [0, 0], paired=True)
    assert d == pytest.approx(0.02) and -0.021 < low < -0.019 and 0.069 < high < 0.071


def test_newcombe_unpaired_by_hand():
    # the same proportions on separate samples, phi = 0:
    # low  = 0.3 - sqrt(0.26341^2 + 0.30984^2) = 0.3 - 0.40667 = -0.10667
    # high = 0.3 + sqrt(0.26341^2 + 0.14332^2) = 0.3 + 0.29988 = 0.59988
    d, low, high = newcombe([1] * 5 + [0] * 5, [1] * 2 + [0] * 8, paired=False)
    assert d == pytest.approx(0.3)
    assert low == pytest.approx(-0.10667, abs=2e-5) and high == pytest.approx(0.59988, abs=2e-5)
    # unpaired samples may differ in size; pairing them would be an error
    _, low, high = newcombe([1, 0, 0], [0] * 7, paired=False)
    assert low < 1 / 3 < high


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = np.arange(100, dtype=float)
    a, b = bootstrap(x, seed=3), bootstrap(x, seed=3)
    assert a == b and a[0] < x.mean() < a[1]
    d, low, high = bootstrap_difference(x + 5, x, paired=True)
    assert d == 5 and low == pytest.approx(5) and high == pytest.approx(5)  # paired: the noise cancels
    _, low_u, high_u = bootstrap_difference(x + 5, x, paired=False)
    assert low_u < 5 < high_u
    with pytest.raises(ValueError, match="same length"):
        bootstrap_difference(x, x[:5], paired=True)
