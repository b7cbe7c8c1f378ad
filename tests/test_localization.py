"""Does localization inform editing? (factlens.editing.localization, Hase et al. 2023): the rewrite score and the
fractional tracing effect by hand, the regressions' R² against numpy's least squares on made-up data, and the
study on a tiny random model (every row, the weights restored)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from factlens import data
from factlens.core.models import view
from factlens.core.view import TokenSpan
from factlens.editing import localization, rome
from factlens.editing.evaluation import target_log_probs
from factlens.locating.tracing import Trace, TraceSettings

TINY_MODELS = ("tiny-gemma3",)
FAST = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=3, mom2_samples=300)


pytestmark = pytest.mark.usefixtures("one_thread")  # the conftest's: tiny models on one thread


# --------------------------------------------------------------------------- the two numbers


def test_rewrite_score_by_hand():
    assert localization.rewrite_score(0.2, 0.6) == pytest.approx(0.5)  # (0.6 - 0.2) / (1 - 0.2)
    assert localization.rewrite_score(0.2, 0.2) == 0.0
    assert localization.rewrite_score(0.0, 1.0) == 1.0
    assert localization.rewrite_score(0.5, 0.25) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        localization.rewrite_score(1.0, 1.0)


def _trace(scores: list[list[float]], clean: float, corrupted: float, span: TokenSpan) -> Trace:
    return Trace(prompt="p", subject="s", kind="mlp", tokens=["t"] * len(scores), subject_span=span, answer="a",
                 answer_id=0, clean_prob=clean, corrupted_prob=corrupted, scores=torch.tensor(scores))


def test_the_fractional_tracing_effect_by_hand():
    nan = float("nan")
    t = _trace([[nan, nan, nan], [0.1, 0.1, 0.1], [0.5, 0.3, 0.1], [0.2, 0.9, 0.1]], clean=0.9, corrupted=0.1,
               span=TokenSpan(1, 3))
    # the largest restored probability over the traced tokens, minus P*, over P - P* = 0.8
    torch.testing.assert_close(localization.tracing_effects(t), torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(localization.tracing_effects(t, "last subject"), torch.tensor([0.5, 0.25, 0.0]))
    flat = _trace([[0.3, 0.3]], clean=0.2, corrupted=0.3, span=TokenSpan(0, 1))  # corrupting raised the answer
    assert torch.isnan(localization.tracing_effects(flat)).all()
    with pytest.raises(ValueError, match="token must be"):
        localization.tracing_effects(t, "first")


def test_windows_layers_and_settings():
    assert localization.paper_window(28) == 5 and localization.paper_window(18) == 3
    assert localization.paper_window(48) == 9 and localization.paper_window(2) == 1
    assert localization.swept_layers(18, 3, 6) == (0, 3, 6, 9, 12, 15)
    assert localization.swept_layers(18, 4, 6) == (0, 4, 6, 8, 12, 16)
    settings = localization.LocalizationSettings((6, 0, 3))
    assert settings.layers == (0, 3, 6) and settings.for_depth(18).trace.window == 3
    assert localization.LocalizationSettings((0,), trace=TraceSettings("mlp", window=5)).for_depth(18).trace.window == 5
    with pytest.raises(ValueError, match="MLPs'"):
        localization.LocalizationSettings((0,), trace=TraceSettings("hidden"))
    with pytest.raises(ValueError, match="distinct"):
        localization.LocalizationSettings((1, 1))


# --------------------------------------------------------------------------- the regressions


def _made_up(n_cases: int = 12, layers=(0, 2, 4), slope_by_layer=(0.0, 0.5, -1.0), noise: float = 0.05,
             seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for case in range(n_cases):
        for layer, slope in zip(layers, slope_by_layer):
            effect = rng.uniform()
            rows.append({"case_id": case, "layer": layer, "mlp_effect": effect,
                         "rewrite_score": 0.2 * layer + slope * effect + noise * rng.normal()})
    return pd.DataFrame(rows)


def _r2_by_hand(design: np.ndarray, y: np.ndarray) -> float:
    fitted = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    return 1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum()


def test_the_r2_of_each_regression_is_numpys_least_squares():
    frame = _made_up()
    y, effect = frame["rewrite_score"].to_numpy(), frame["mlp_effect"].to_numpy()
    dummies = pd.get_dummies(frame["layer"]).to_numpy(dtype=float)
    expected = {"layer": _r2_by_hand(dummies, y),
                "tracing effect": _r2_by_hand(np.column_stack([np.ones_like(y), effect]), y),
                "both": _r2_by_hand(np.hstack([dummies, dummies * effect[:, None]]), y)}
    found = localization.regression_r2(frame)
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, abs=1e-12)
    assert found["added"] == pytest.approx(expected["both"] - expected["layer"], abs=1e-12)
    assert found["added"] > 0.1  # the slopes differ by layer: the effect explains what the layer alone cannot


def test_an_outcome_set_by_the_layer_alone_leaves_the_effect_nothing_to_add():
    frame = _made_up(slope_by_layer=(0.0, 0.0, 0.0), noise=0.0)
    found = localization.regression_r2(frame)
    assert found["layer"] == pytest.approx(1.0) and found["added"] == pytest.approx(0.0, abs=1e-12)
    exact = _made_up(noise=0.0)
    assert localization.regression_r2(exact)["both"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not vary"):
        localization.regression_r2(frame.assign(rewrite_score=0.5))
    with pytest.raises(KeyError, match="no column"):
        localization.regression_r2(frame.drop(columns=["layer"]))


def test_rows_without_an_effect_are_left_out():
    frame = _made_up()
    holed = frame.copy()
    holed.loc[0, "mlp_effect"] = float("nan")
    assert localization.regression_r2(holed) == pytest.approx(localization.regression_r2(frame.drop(index=0)))


def test_the_interval_resamples_cases_and_holds_the_value():
    frame = _made_up(n_cases=15)
    value, low, high = localization.r2_interval(frame, "added", n_boot=200, seed=1)
    assert value == pytest.approx(localization.regression_r2(frame)["added"])
    assert low <= value <= high and 0 <= low
    difference = localization.r2_interval(frame, "layer minus tracing", n_boot=50)[0]
    r2 = localization.regression_r2(frame)
    assert difference == pytest.approx(r2["layer"] - r2["tracing effect"])
    with pytest.raises(ValueError, match="key must be"):
        localization.r2_interval(frame, "slope")


def test_correlation_and_the_fixed_layer_against_the_traced_one():
    frame = _made_up(n_cases=10)
    at = frame[frame["layer"] == 2]
    r, low, high, n = localization.correlation_at(frame, 2, n_boot=200)
    assert r == pytest.approx(np.corrcoef(at["mlp_effect"], at["rewrite_score"])[0, 1]) and n == 10
    assert low <= r <= high
    with pytest.raises(ValueError, match="at least 3 cases"):
        localization.correlation_at(frame[frame["case_id"] < 2], 2)
    by_hand = pd.DataFrame({"case_id": [1, 1, 1, 2, 2, 2], "layer": [0, 6, 12] * 2,
                            "mlp_effect": [0.9, 0.1, 0.2, 0.1, 0.8, 0.3],
                            "rewrite_score": [0.5, 0.9, 0.4, 0.2, 0.7, 0.1]})
    gains = localization.fixed_minus_traced(by_hand, 6)
    assert gains.to_dict() == pytest.approx({1: 0.9 - 0.5, 2: 0.0})  # case 2's trace peaks at the fixed layer
    assert localization.traced_layer(by_hand).to_dict() == {1: 0, 2: 6}
    with pytest.raises(ValueError, match="not among the swept layers"):
        localization.fixed_minus_traced(by_hand, 3)


# --------------------------------------------------------------------------- on a tiny model


def test_the_study_on_a_tiny_model_measures_every_row_and_restores_the_weights(tiny):
    v = view(tiny)
    cases = data.counterfact()[:2]
    weights = {layer: v.mlp_out_weight(layer).clone() for layer in range(v.n_layers)}
    settings = localization.LocalizationSettings((0, 1), trace=TraceSettings("mlp", samples=1, std=1.0))
    frame = localization.localize_and_edit(tiny, cases, settings, FAST, progress=False)
    assert len(frame) == 4 and list(frame["layer"]) == [0, 1, 0, 1]
    for layer, weight in weights.items():
        assert torch.equal(v.mlp_out_weight(layer), weight)  # every edit undone, bit for bit
    for case in cases:
        rows = frame[frame["case_id"] == case.case_id]
        p_new = float(target_log_probs(tiny, [case.filled_prompt], [case.target_new]).exp())
        assert rows["p_before"].tolist() == pytest.approx([p_new, p_new], rel=1e-5)
        expected = [localization.rewrite_score(p_new, p) for p in rows["p_after"]]
        assert rows["rewrite_score"].tolist() == pytest.approx(expected, rel=1e-4, abs=1e-9)
        assert set(rows["efficacy"]) <= {0.0, 1.0}
    with pytest.raises(IndexError):
        localization.localize_and_edit(tiny, cases[:1], localization.LocalizationSettings((v.n_layers,)), FAST,
                                       progress=False)


def test_known_cases_are_those_the_model_completes(tiny):
    v = view(tiny)
    cases = data.counterfact()[:30]
    kept = localization.known_cases(tiny, cases)
    for case in cases:
        batch = v.batch([case.filled_prompt])
        top = int(v.logits_at(batch.ids, batch.last).argmax())
        assert (case in kept) == (top == v.target_ids(case.target_true)[0])


def test_the_known_draw_is_the_seeded_sample_filtered(tiny):
    cases = data.counterfact()[:60]
    drawn = localization.known_draw(tiny, cases, 30, seed=1)
    assert drawn == localization.known_cases(tiny, random.Random(3).sample(cases, 30))
    assert drawn == localization.known_draw(tiny, cases, 30, seed=1)
