"""The papers' registry (numbers with τ and its reason) and the verdict rule: hand-made intervals,
the edges of the bands, monotonicity in the evidence, and the n that would settle a claim."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from factlens.evidence import claims, papers
from factlens.evidence.claims import MIN_N, Claim, assess
from factlens.evidence.papers import PaperNumber, paper, paper_table

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"tracing.n_layers", "tracing.window", "rome.layer", "rome.n_layers", "rome.mom2_samples",
            "after.localization.window", "after.localization.n_layers", "after.localization.rome_layer"}


def verdict(kind, p, low, high, tau, n=100, **options):
    return assess(kind, p, low, high, tau=tau, n=n, **options).verdict


# --------------------------------------------------------------------------- the registry


def test_paper_numbers_carry_their_source_and_tau():
    n = paper("rome.counterfact.ROME.S")
    assert n.value == 89.2 and n.source == "Meng et al. 2022, Table 4, GPT-2 XL"
    assert n.tau == 5.0 and "percent" in n.tau_reason
    assert paper_table("lama.p_at_1.BERT-large")["T-REx"] == 32.3
    assert paper("lama.p_at_1.BERT-large.T-REx").tau == pytest.approx(3.23)  # a tenth of the value
    with pytest.raises(KeyError, match="near: rome.counterfact.ROME"):
        paper("rome.counterfact.ROME.XX")


def test_every_result_has_its_tau_and_reason_and_only_settings_have_none():
    assert {k for k, n in papers.PAPER.items() if n.tau is None} == SETTINGS
    for key, n in papers.PAPER.items():
        assert n.tau is None or (n.tau > 0 and len(n.tau_reason) > 20), key
        assert (n.value is None) == bool(n.direction), key


def test_differences_are_registered_from_their_rows():
    s = paper("rome.counterfact.ROME-FT.S")
    assert s.value == pytest.approx(89.2 - 65.1) and s.tau == 5.0 and "S of ROME minus FT" in s.source
    ge = paper("rome.counterfact.ROME/unedited.GE")
    assert ge.value == pytest.approx(100 * (621.9 / 626.6 - 1)) and ge.tau == 2.0
    # zsRE's specificity change: one τ for the evaluation chapter's claim and the playground's
    assert paper("rome.zsre.ROME-unedited.specificity").value == 0.0
    assert paper("rome.zsre.ROME-unedited.specificity").tau == 1.0
    # a method's table holds its own rows, not the differences registered beside them
    assert set(paper_table("rome.counterfact.ROME")) == {"S", "ES", "PS", "NS", "EM", "PM", "NM", "GE", "RS"}


def test_direction_only_numbers_have_a_direction_not_a_value():
    n = paper("memories.semantic_upper_minus_lower")
    assert n.value is None and ">" in n.direction and n.sign == 1.0
    assert "semantic_upper_minus_lower" not in paper_table("memories")  # no value to tabulate
    with pytest.raises(ValueError, match="exactly one"):
        PaperNumber(None, "P", "Table 1", "M", 1.0, "a reason")
    with pytest.raises(ValueError, match="exactly one"):
        PaperNumber(1.0, "P", "Table 1", "M", 1.0, "a reason", direction="A > B")
    with pytest.raises(ValueError, match="positive"):
        PaperNumber(1.0, "P", "Table 1", "M", 0.0, "a reason")
    with pytest.raises(ValueError, match="its reason"):
        PaperNumber(1.0, "P", "Table 1", "M", 1.0)


# --------------------------------------------------------------------------- the rule on hand-made intervals


@pytest.mark.parametrize("interval, reference, expected, size", [
    ((30.0, 35.0), None, "reproduced", ""),             # within 32.3 ± 3.23 = [29.07, 35.53]
    ((32.3 - 3.23, 32.3 + 3.23), None, "reproduced", ""),  # exactly the band: within
    ((29.0, 35.0), None, "inconclusive", ""),           # reaches over the lower edge
    ((10.0, 60.0), 0.0, "inconclusive", ""),            # holds the paper's value, but reaches over both edges
    ((20.0, 32.3 - 3.23), 0.0, "inconclusive", ""),     # touches the edge: not wholly outside
    ((20.0, 25.0), 0.0, "partly", "smaller"),           # outside, above the reference 0
    ((40.0, 45.0), 0.0, "partly", "larger"),
    ((20.0, 25.0), None, "not reproduced", "smaller"),  # outside, no reference
    ((20.0, 25.0), 22.0, "not reproduced", "smaller"),  # outside, the reference inside the interval
    ((-3.0, -1.0), 0.0, "not reproduced", "smaller"),   # the wrong side of the reference
])
def test_value_verdicts_on_hand_made_intervals(interval, reference, expected, size):
    found = assess("value", 32.3, *interval, tau=3.23, n=100, reference=reference)
    assert (found.verdict, found.size) == (expected, size)


def test_a_wider_interval_around_the_same_estimate_never_passes_more_easily():
    # the old rule: any interval up to 4τ wide holding the paper's value was reproduced
    assert verdict("value", 32.3, 31.0, 33.6, 3.23) == "reproduced"
    assert verdict("value", 32.3, 25.0, 39.6, 3.23) == "inconclusive"
    # "no change" claims pass only by equivalence: the interval within 0 ± τ
    assert verdict("value", 0.0, -0.8, 0.9, 1.0) == "reproduced"
    assert verdict("value", 0.0, -3.0, 3.0, 1.0) == "inconclusive"


@pytest.mark.parametrize("interval, expected, size", [
    ((0.6, 2.0), "reproduced", "smaller"),       # above τ = 0.5, below 5 - τ
    ((4.0, 6.0), "reproduced", "similar"),       # meets 5 ± 0.5
    ((5.6, 7.0), "reproduced", "larger"),
    ((0.2, 2.0), "partly", "smaller"),           # above 0, reaches past τ, not above it
    ((0.5, 2.0), "partly", "smaller"),           # exactly at τ: not above it
    ((-2.0, -0.6), "not reproduced", ""),        # reversed
    ((-0.1, 0.1), "not reproduced", ""),         # within ±τ of 0: no difference that matters
    ((0.1, 0.5), "not reproduced", ""),          # above 0 but within ±τ
    ((-0.5, 0.5), "not reproduced", ""),         # exactly ±τ: within
    ((-1.0, 3.0), "inconclusive", ""),           # holds 0, reaches past τ
    ((-0.6, 0.4), "inconclusive", ""),           # holds 0, reaches past -τ
])
def test_ordering_verdicts_on_hand_made_intervals(interval, expected, size):
    found = assess("ordering", 5.0, *interval, tau=0.5, n=100)
    assert (found.verdict, found.size) == (expected, size)
    mirrored = assess("ordering", -5.0, -interval[1], -interval[0], tau=0.5, n=100)  # the paper's side is below
    assert (mirrored.verdict, mirrored.size) == (expected, size)


def test_orderings_with_and_without_a_size_and_their_tau():
    # the T-REx minus Freq: ours +2.5 against the paper's +10.3 holds, and is smaller
    found = assess("ordering", 10.3, 1.5, 3.5, tau=1.03, n=1000)
    assert (found.verdict, found.size) == ("reproduced", "smaller")
    # a direction-only number: the ordering holds or not, with no size to set beside it
    assert assess("ordering", None, 0.6, 2.0, tau=0.5, n=100) == claims.Assessment("reproduced")
    assert verdict("ordering", None, -2.0, -1.0, 0.5) == "not reproduced"
    # the same interval against a larger τ: an ordering must clear the smallest difference that matters
    assert [verdict("ordering", None, 0.2, 2.0, tau) for tau in (0.1, 0.5, 3.0)] == [
        "reproduced", "partly", "not reproduced"]


def test_too_few_units_are_inconclusive_whatever_the_interval():
    # one case: the bootstrap interval is a point, which must not decide a verdict
    found = assess("value", 32.3, 32.0, 32.0, tau=3.23, n=1)
    assert found.verdict == "inconclusive" and found.n_to_settle == MIN_N and "below 20" in found.why
    assert verdict("ordering", 5.0, -2.0, -2.0, 0.5, n=MIN_N - 1) == "inconclusive"
    assert verdict("ordering", 5.0, -2.0, -2.0, 0.5, n=MIN_N) == "not reproduced"
    assert MIN_N == 20


def test_a_maximum_or_argmax_gets_no_verdict():
    for statistic in ("max", "argmax"):
        found = assess("value", 0.087, 0.08, 0.09, tau=0.025, n=1000, statistic=statistic)
        assert found.verdict == "inconclusive" and found.n_to_settle is None and "biased" in found.why
    with pytest.raises(ValueError, match="statistic"):
        assess("value", 0.087, 0.08, 0.09, tau=0.025, n=1000, statistic="median")


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="low <= high"):
        assess("value", 1.0, 2.0, 1.0, tau=0.1, n=100)
    with pytest.raises(ValueError, match="positive"):
        assess("value", 1.0, 0.5, 1.5, tau=0.0, n=100)
    with pytest.raises(ValueError, match="sign"):
        assess("ordering", 0.0, 0.5, 1.5, tau=0.1, n=100)
    with pytest.raises(ValueError, match="direction-only"):
        assess("value", None, 0.5, 1.5, tau=0.1, n=100)


# --------------------------------------------------------------------------- monotone in the evidence


def _cases(rng: np.random.Generator, count: int):
    """Random claims: kind, paper's value (None: direction only), τ, reference, centre, half-width."""
    for _ in range(count):
        kind = rng.choice(["value", "ordering"])
        p = float(rng.normal(0, 2))
        if kind == "ordering" and rng.random() < 0.3:
            p = None
        reference = float(rng.normal(0, 2)) if kind == "value" and rng.random() < 0.7 else None
        yield kind, p, float(rng.uniform(0.05, 2)), reference, float(rng.normal(0, 3)), float(rng.exponential(1.5))


def _grid_cases():
    """Intervals on a grid of quarters, which meet the bands' edges exactly (p = 1, τ = 0.5 or 1)."""
    steps = np.arange(-12, 13) / 4
    for kind, p, tau, reference in (("value", 1.0, 0.5, 0.0), ("value", 1.0, 1.0, None), ("value", 0.0, 1.0, None),
                                    ("ordering", 1.0, 0.5, None), ("ordering", -2.0, 1.0, None),
                                    ("ordering", None, 0.5, None)):
        for centre, half in itertools.product(steps, steps[steps >= 0]):
            yield kind, p, tau, reference, float(centre), float(half)


def _verdict_at(case, factor: float) -> str:
    """The verdict of a case's interval with its half-width times ``factor``, around the same centre."""
    kind, p, tau, reference, centre, half = case
    return assess(kind, p, centre - factor * half, centre + factor * half, tau=tau, n=100, reference=reference).verdict


@pytest.mark.parametrize("source", ["random", "grid"])
def test_the_rule_is_monotone_in_the_evidence(source):
    cases = _cases(np.random.default_rng(0), 4000) if source == "random" else _grid_cases()
    checked = 0
    for case in cases:
        before = _verdict_at(case, 1.0)
        for factor in (0.0, 0.25, 0.5, 0.999):  # narrower around the same estimate: never inconclusive
            assert before == "inconclusive" or _verdict_at(case, factor) != "inconclusive", case
        for factor in (1.001, 1.5, 3.0):  # wider: never reproduced
            assert before == "reproduced" or _verdict_at(case, factor) != "reproduced", case
        checked += 1
    assert checked > 1000


# --------------------------------------------------------------------------- the n that would settle it


def test_the_n_that_settles_an_inconclusive_claim_by_hand():
    # value 10 ± 1, ours [9.5, 11.5] over 100: centre 10.5, half 1, room to the edge 0.5 -> 100 (1/0.5)^2 + 1
    found = assess("value", 10.0, 9.5, 11.5, tau=1.0, n=100)
    assert found.verdict == "inconclusive" and found.n_to_settle == 401
    half = math.sqrt(100 / 401)
    assert verdict("value", 10.0, 10.5 - half, 10.5 + half, 1.0, n=401) == "reproduced"
    # centred outside the band: shrunk, the interval leaves it
    assert assess("value", 10.0, 10.5, 12.5, tau=1.0, n=100).n_to_settle == 401
    assert verdict("value", 10.0, 11.5 - half, 11.5 + half, 1.0, n=401) == "not reproduced"
    # centred on the band's edge: no n settles it
    assert assess("value", 10.0, 10.0, 12.0, tau=1.0, n=100).n_to_settle is None
    # an ordering [-1, 3] against 5, τ 0.5: centre 1, half 2 -> it clears 0 at 100 (2/1)^2 + 1
    assert assess("ordering", 5.0, -1.0, 3.0, tau=0.5, n=100).n_to_settle == 401
    assert verdict("ordering", 5.0, 1 - 2 * half, 1 + 2 * half, 0.5, n=401) == "partly"
    # settled verdicts name no n
    assert assess("value", 10.0, 9.5, 10.5, tau=1.0, n=100).n_to_settle is None


def test_the_n_to_settle_settles_every_random_inconclusive_claim():
    settled = 0
    for kind, p, tau, reference, centre, half in _cases(np.random.default_rng(1), 3000):
        n = 50
        found = assess(kind, p, centre - half, centre + half, tau=tau, n=n, reference=reference)
        if found.verdict != "inconclusive" or found.n_to_settle is None:
            continue
        shrunk = half * math.sqrt(n / found.n_to_settle)
        after = assess(kind, p, centre - shrunk, centre + shrunk, tau=tau, n=found.n_to_settle, reference=reference)
        assert after.verdict != "inconclusive", (kind, p, tau, centre, half, found)
        settled += 1
    assert settled > 100


# --------------------------------------------------------------------------- claims


def test_claim_sentence_and_record_round_trip():
    c = Claim("rome", "es", "ROME's efficacy", "Gemma", "rome.counterfact.ROME.ES", 87.5, (75.0, 95.0), 50,
              reference=37.5)
    assert c.verdict == "inconclusive" and c.n_to_settle is not None and c.n_to_settle > 50
    c = Claim("rome", "es", "ROME's efficacy", "Gemma", "rome.counterfact.ROME.ES", 85.0, (80.0, 90.0), 50,
              reference=37.5)
    assert (c.verdict, c.size, c.n_to_settle) == ("partly", "smaller", None)
    assert re.search(r"ours 85.0 \[80.0, 90.0\] \(n = 50\), the paper 100.0, τ = 5 .*: \*\*partly\*\* \(smaller\)",
                     c.sentence())
    record = json.loads(json.dumps(c.to_record()))
    assert set(record) >= {"chapter", "id", "statement", "model", "paper", "ours", "verdict", "kind", "reference",
                           "protocol", "tau", "tau_reason", "n_to_settle", "size", "statistic"}
    assert record["ours"] == {"value": 85.0, "n": 50, "ci": [80.0, 90.0]}
    assert record["tau"] == 5.0 and record["paper"]["direction"] == ""
    back = Claim.from_record(record)
    assert (back.verdict, back.size, back.paper.source, back.paper.tau) == ("partly", "smaller", c.paper.source, 5.0)
    record["verdict"] = "reproduced"
    with pytest.raises(ValueError, match="stale or edited"):
        Claim.from_record(record)
    del record["tau"]
    with pytest.raises(ValueError, match="older factlens"):
        Claim.from_record(record)


def test_a_direction_only_claim_shows_its_direction():
    c = Claim("memories", "upper", "semantic upper minus lower", "Gemma", "memories.semantic_upper_minus_lower",
              0.114, (0.05, 0.17), 300, kind="ordering")
    assert c.verdict == "reproduced" and c.size == ""
    assert "the paper upper layers > lower layers" in c.sentence()
    frame = claims.claims_frame([c])
    assert frame.loc[0, "paper"] == paper("memories.semantic_upper_minus_lower").direction
    assert frame.loc[0, "τ"] == "0.01" and "cosine" in frame.loc[0, "τ's reason"]
    record = json.loads(json.dumps(c.to_record()))
    assert record["paper"]["value"] is None and record["paper"]["direction"].startswith("upper layers")
    assert Claim.from_record(record).paper_shown == c.paper_shown


def test_a_claim_needs_a_result_with_its_tau():
    with pytest.raises(ValueError, match="setting with no τ"):
        Claim("rome", "layer", "the layer", "Gemma", "rome.layer", 17.0, (16.0, 18.0), 100)
    with pytest.raises(ValueError, match="claim 'x': a value claim needs"):
        Claim("memories", "x", "s", "Gemma", "memories.removal_last_minus_first", 0.1, (0.0, 0.2), 100)


def test_the_peak_claims_are_refused_with_a_note():
    c = Claim("tracing", "peak", "peak AIE", "Gemma", "tracing.hidden_last_subject_aie", 0.08, (0.07, 0.09), 500,
              statistic="max")
    assert c.verdict == "inconclusive" and c.n_to_settle is None
    assert claims.claims_frame([c]).loc[0, "why"].startswith("a percentile bootstrap of the max")


def test_the_rule_is_stated_with_every_verdict():
    for name in claims.VERDICTS:
        assert name in claims.VERDICT_RULE
    assert f"below {MIN_N}" in claims.VERDICT_RULE and "p ± τ" in claims.VERDICT_RULE


# --------------------------------------------------------------------------- the notebooks

NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\d])")


def _code_cells():
    for nb in sorted(ROOT.glob("chapters/**/*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code":
                yield f"{nb.relative_to(ROOT)} cell {i}", "".join(cell["source"])


def test_no_notebook_code_cell_retypes_a_papers_number():
    """Every paper number with a decimal point that a code cell types is a retyped paper number."""
    fractional = [n.value for n in papers.PAPER.values() if n.value is not None and not float(n.value).is_integer()]
    numbers = {f"{x:g}" for x in fractional} | {f"{x:.1f}" for x in fractional if abs(x) >= 1}
    hits = [f"{where}: {m}" for where, source in _code_cells() for m in NUMBER.findall(source)
            if m in numbers and not math.isclose(float(m), 0.5)]
    assert not hits, "notebooks retype papers' numbers (read them from factlens.evidence.papers): " + "; ".join(hits)


def test_notebooks_state_no_tolerance_and_name_registered_numbers():
    """τ stands beside the paper's number in the registry, never in a notebook's claim."""
    typed = [where for where, source in _code_cells() if re.search(r"\btolerance\s*=|\btau\s*=", source)]
    assert not typed, "notebooks state a tolerance: " + "; ".join(typed)
    ids = re.compile(r"[\"']((?:lama|memories|tracing|rome|many_edits|after)\.[\w.+/ -]+)[\"']")
    named = {m for _, source in _code_cells() for m in ids.findall(source)}
    claimed = {m for _, source in _code_cells() for m in re.findall(r"paper=\"([\w.+/ -]+)\"", source)}
    assert len(named) > 30 and claimed <= named
    for number_id in named:  # a number of the registry, or a table's prefix (paper_table)
        assert number_id in papers.PAPER or paper_table(number_id), number_id
    assert all(paper(m).tau is not None for m in claimed)


def test_the_verdicts_figure_counts_every_claim_once_per_model():
    from factlens.show.plots import plot_verdicts

    made = [Claim("lama", f"c{i}", "s", model, "rome.counterfact.ROME.ES", 98.0, (96.0, 99.9), 50)
            for i, model in enumerate(["A", "A", "B"])]
    frame = claims.claims_frame(made)
    frame["model"] = [c.model for c in made]
    fig = plot_verdicts(frame)
    widths = [sum(bar.get_width() for bar in ax.patches) for ax in fig.axes]
    assert [ax.get_title() for ax in fig.axes] == ["A", "B"] and widths == [2, 1]


def test_the_forest_plot_draws_every_claim_per_chapter_and_model_coloured_by_verdict():
    import pandas as pd
    from matplotlib.colors import to_hex

    from factlens.show.plots import VERDICT_COLOURS, plot_forest

    rows = [  # chapter, claim, model, kind, ours, low, high, paper, tau, reference, verdict
        ("lama", "lama.a", "A", "value", 30.0, 29.0, 31.0, 30.0, 3.0, 0.0, "reproduced"),
        ("lama", "lama.b", "A", "ordering", 2.0, -1.0, 5.0, float("nan"), 1.0, float("nan"), "inconclusive"),
        ("lama", "lama.a", "B", "value", 10.0, 8.0, 12.0, 30.0, 3.0, 0.0, "partly"),
        ("rome", "rome.c", "A", "ordering", -4.0, -6.0, -2.0, 5.0, 1.0, float("nan"), "not reproduced"),
    ]
    frame = pd.DataFrame(rows, columns=list(claims.FOREST_COLUMNS))
    fig = plot_forest(frame)
    axes = fig.axes
    assert len(axes) == 4  # two chapters x two models
    assert [ax.get_title() for ax in axes] == ["lama: A", "lama: B", "rome: A", "rome: B"]
    assert [len(ax.get_yticks()) for ax in axes] == [2, 2, 1, 1]  # a chapter's claims, in every model's panel
    drawn = {(ax.get_title(), line.get_gid().split(":", 1)[1]): to_hex(line.get_color())
             for ax in axes for line in ax.lines if (line.get_gid() or "").startswith("interval:")}
    assert drawn == {("lama: A", "lama.a"): VERDICT_COLOURS["reproduced"],
                     ("lama: A", "lama.b"): VERDICT_COLOURS["inconclusive"],
                     ("lama: B", "lama.a"): VERDICT_COLOURS["partly"],
                     ("rome: A", "rome.c"): VERDICT_COLOURS["not reproduced"]}
    line = next(ln for ln in axes[1].lines if ln.get_gid() == "interval:lama.a")
    assert list(line.get_xdata()) == [(8.0 - 30.0) / 3.0, (12.0 - 30.0) / 3.0]  # (ours - paper) / τ
    line = next(ln for ln in axes[2].lines if ln.get_gid() == "interval:rome.c")
    assert list(line.get_xdata()) == [-6.0, -2.0]  # an ordering: ours / τ on the paper's side
    papers_marks = {ln.get_gid() for ax in axes for ln in ax.lines if (ln.get_gid() or "").startswith("paper:")}
    assert papers_marks == {"paper:lama.a", "paper:rome.c"}  # a direction-only number has no mark


def test_a_claims_anchor_and_link():
    assert claims.anchor("rome.counterfact.S.ROME-FT+L") == "claim-rome-counterfact-s-rome-ft-l"
    c = Claim("lama", "trex_left_context", "s", "G", "lama.p_at_1.Transformer-XL.T-REx", 17.0, (16.0, 18.0), 500)
    assert c.full_id == "lama.trex_left_context" and c.anchor == "claim-lama-trex-left-context"
    link = "[claim lama.trex_left_context](../claims.ipynb#claim-lama-trex-left-context)"
    assert claims.claim_link(c.full_id) == link
    hypothesis = Claim("editing", "nm", "s", "G", "rome.nm_C_minus_identity", 6.0, (5.5, 6.5), 50, kind="ordering")
    assert hypothesis.paper.ours and hypothesis.paper_shown.endswith("(our hypothesis)")
    assert Claim.from_record(hypothesis.to_record()).paper.ours


def test_the_sphinx_extension_reads_the_claims_anchors():
    from factlens.book.anchors import claim_anchors

    html = '<td><a id="claim-lama-x" href="#claim-lama-x">lama.x</a></td><a id="other">y</a>'
    assert claim_anchors(html) == {"claim-lama-x": "lama.x"}
