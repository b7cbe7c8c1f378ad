"""The claims registry: the papers' numbers, intervals against hand computation, the verdict rule."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from factlens.evidence import claims
from factlens.evidence.claims import Claim, bootstrap, bootstrap_difference, paper, paper_table, verdict, wilson


def test_paper_numbers_carry_their_source():
    n = paper("rome.counterfact.ROME.S")
    assert n.value == 89.2 and n.source == "Meng et al. 2022, Table 4, GPT-2 XL"
    assert paper_table("lama.p_at_1.BERT-large")["T-REx"] == 32.3
    with pytest.raises(KeyError, match="near: rome.counterfact.ROME"):
        paper("rome.counterfact.ROME.XX")


def test_wilson_matches_hand_computation():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71674, half 0.20888
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4) and high == pytest.approx(0.94331, abs=1e-4)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="n > 0"):
        wilson(0, 0)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = np.arange(100, dtype=float)
    a, b = bootstrap(x, seed=3), bootstrap(x, seed=3)
    assert a == b and a[0] < x.mean() < a[1]
    d, low, high = bootstrap_difference(x + 5, x, paired=True)
    assert d == 5 and low == pytest.approx(5) and high == pytest.approx(5)  # paired: the noise cancels
    _, low_u, high_u = bootstrap_difference(x + 5, x, paired=False)
    assert low_u < 5 < high_u


@pytest.mark.parametrize("interval, reference, expected", [
    ((28, 36), None, "reproduced"),      # holds 32.3
    ((10, 60), None, "inconclusive"),    # wider than 4 τ = 12.9
    ((20, 25), 0.0, "partly"),           # misses 32.3 but above the reference 0
    ((20, 25), None, "not reproduced"),  # misses, no reference
    ((-3, -1), 0.0, "not reproduced"),   # wrong side of the reference
])
def test_value_verdicts_on_hand_made_intervals(interval, reference, expected):
    assert verdict("value", 32.3, *interval, tolerance=3.23, reference=reference) == expected


@pytest.mark.parametrize("interval, expected", [
    ((0.5, 2.0), "reproduced"), ((-2.0, -0.5), "not reproduced"), ((-0.1, 0.1), "not reproduced"),
    ((-1.0, 3.0), "inconclusive")])
def test_ordering_verdicts_on_hand_made_intervals(interval, expected):
    assert verdict("ordering", 5.0, *interval, tolerance=0.5) == expected


def test_wilson_reaches_the_ends_exactly():
    # 6 of 6: the upper bound is 1 exactly (rounding gave 0.99999999999999, which missed a paper's 100%)
    low, high = claims.wilson(6, 6)
    assert high == 1.0 and low == pytest.approx(0.6097, abs=1e-4)
    assert claims.wilson(0, 6)[0] == 0.0
    c = Claim("editing", "es", "ES", "Gemma", "rome.counterfact.ROME.ES", 100.0, (100 * low, 100 * high), 6,
              tolerance=10, reference=50.0)
    assert c.verdict == "reproduced"


def test_too_few_cases_are_inconclusive_whatever_the_interval():
    # one case: the bootstrap interval is a point, which must not decide a verdict
    assert verdict("value", 32.3, 32.0, 32.0, tolerance=3.23, n=1) == "inconclusive"
    assert verdict("ordering", 5.0, -2.0, -2.0, tolerance=0.5, n=claims.MIN_N - 1) == "inconclusive"
    assert verdict("ordering", 5.0, -2.0, -2.0, tolerance=0.5, n=claims.MIN_N) == "not reproduced"
    c = Claim("rome", "es", "ROME's efficacy", "Gemma", "rome.counterfact.ROME.ES", 100.0, (100.0, 100.0), 2,
              tolerance=10)
    assert c.verdict == "inconclusive"


def test_claim_sentence_and_record_round_trip():
    c = Claim("rome", "es", "ROME's efficacy", "Gemma", "rome.counterfact.ROME.ES", 87.5, (75.0, 95.0), 50,
              tolerance=10, reference=37.5)
    assert c.verdict == "partly"
    assert re.search(r"ours 87.5 \[75.0, 95.0\] \(n = 50\), the paper 100.0 .*: \*\*partly\*\*", c.sentence())
    record = json.loads(json.dumps(c.to_record()))
    assert set(record) >= {"chapter", "id", "statement", "model", "paper", "ours", "verdict"}
    assert record["ours"] == {"value": 87.5, "n": 50, "ci": [75.0, 95.0]}
    assert Claim.from_record(record).verdict == "partly"
    record["verdict"] = "reproduced"
    with pytest.raises(ValueError, match="stale or edited"):
        Claim.from_record(record)


def test_the_rule_is_stated_with_every_verdict():
    for name in claims.VERDICTS:
        assert name in claims.VERDICT_RULE


NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\d])")


def test_no_notebook_code_cell_retypes_a_papers_number():
    """Every paper number with a decimal point that a code cell types is a retyped paper number."""
    root = Path(__file__).resolve().parents[1]
    fractional = [n.value for n in claims.PAPER.values() if not float(n.value).is_integer()]
    numbers = {f"{x:g}" for x in fractional} | {f"{x:.1f}" for x in fractional if abs(x) >= 1}
    hits = []
    for nb in sorted(root.glob("chapters/**/*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] != "code":
                continue
            for m in NUMBER.findall("".join(cell["source"])):
                if m in numbers and not math.isclose(float(m), 0.5):
                    hits.append(f"{nb.relative_to(root)} cell {i}: {m}")
    assert not hits, "notebooks retype papers' numbers (read them from factlens.evidence.claims): " + "; ".join(hits)


def test_the_verdicts_figure_counts_every_claim_once_per_model():
    from factlens.show.plots import plot_verdicts

    made = [Claim("lama", f"c{i}", "s", model, "rome.counterfact.ROME.ES", 90.0, (80.0, 99.0), 50, tolerance=10)
            for i, model in enumerate(["A", "A", "B"])]
    frame = claims.claims_frame(made)
    frame["model"] = [c.model for c in made]
    fig = plot_verdicts(frame)
    widths = [sum(bar.get_width() for bar in ax.patches) for ax in fig.axes]
    assert [ax.get_title() for ax in fig.axes] == ["A", "B"] and widths == [2, 1]
