"""Sequential editing (factlens.editing.sequences): the forecaster by hand, and sequences on tiny random
models that undo bit for bit."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from factlens import data
from factlens.core.models import view
from factlens.editing import alphaedit, memit, rome, sequences
from factlens.probing import lama

FAST = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=3, mom2_samples=300)
FAST_MEMIT = memit.MEMITHyperParams(layers=(0, 1), context_templates=((3, 1),), v_steps=2, mom2_samples=300)


TINY_MODELS = ("tiny-gemma3",)  # the conftest's `tiny` fixture loads these


@pytest.fixture(scope="module")
def cases():
    return rome.evaluation_cases(data.counterfact())[:50]


@pytest.fixture(scope="module")
def yardstick():
    return sequences.Yardstick(lama.lama_facts("TREx", ["P103"], per_relation=30), ["The city of", "Paris is"],
                                generate_tokens=4)


# --------------------------------------------------------------------------- the forecaster, by hand


def test_forecast_by_hand():
    # C = I, k* = e1, k0 = e1 + e2 / 2 ... u = C⁻¹k* = e1: uᵀk* = 1, uᵀk0 = 0.5
    W = torch.zeros(2, 3)
    W[0, 0] = 4.0  # ‖W‖ = 4
    k_star, k0 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.5, 1.0, 0.0])
    delta = torch.tensor([0.0, 2.0])
    fc = sequences.forecast(W, torch.eye(3), k_star, k0, delta, subject="s", subject_first=True, key_mix="original",
                             flag_ratio=0.75)
    assert (fc.denominator, fc.denominator_unprefixed, fc.denominator_ratio) == (1.0, 0.5, 0.5)
    # ‖ΔW‖ = ‖δ‖ ‖u‖ / |uᵀk|: 2 / 1 and 2 / 0.5, over ‖W‖ = 4
    assert math.isclose(fc.update_norm, 0.5) and math.isclose(fc.update_norm_unprefixed, 1.0)
    assert fc.applied_norm == fc.update_norm_unprefixed and fc.flagged
    prefix = sequences.forecast(W, torch.eye(3), k_star, k0, delta, subject="s", subject_first=True, flag_ratio=0.75)
    assert prefix.applied_norm == prefix.update_norm and not prefix.flagged


@pytest.mark.parametrize("key_mix", ["prefix", "original"])
def test_rome_step_writes_v_star_at_the_key_its_denominator_uses(tiny, key_mix):
    v = view(tiny)
    request = rome.EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")
    C = rome.layer_stats(tiny, FAST.layer, samples=FAST.mom2_samples, progress=False)
    templates = rome.templates_for(tiny, FAST)
    k_star = rome.compute_key(tiny, request, FAST.layer, templates)
    k0 = rome.compute_key(tiny, request, FAST.layer, ("{}",))
    before = v.mlp_out_weight(FAST.layer).detach().clone()
    try:
        torch.manual_seed(0)
        fc = sequences.rome_step(tiny, request, FAST, C, key_mix=key_mix)
        after = v.mlp_out_weight(FAST.layer).detach().T.double()
        dW = after - before.T.double()
        key = k0 if key_mix == "original" else k_star
        # ΔW is rank one along u = C⁻¹k*, of size ‖δ‖‖u‖/|uᵀk| as forecast
        assert torch.linalg.matrix_rank(dW.float(), rtol=1e-4) == 1
        expected = fc.update_norm_unprefixed if key_mix == "original" else fc.update_norm
        assert math.isclose(float(dW.norm() / before.double().norm()), expected, rel_tol=1e-3)
        # and the written value change sits at that key: ΔW k = δ
        assert float((dW @ key.double()).norm()) > 0
    finally:
        v.set_mlp_out_weight(FAST.layer, before)


def test_rome_step_rejects_an_unknown_key_mix(tiny):
    with pytest.raises(ValueError, match="key_mix"):
        sequences.rome_step(tiny, rome.EditRequest("{} is", "Rome", "Paris"), FAST, torch.eye(view(tiny).d_mlp),
                             key_mix="both")


# --------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("method", ["ROME", "MEMIT", "AlphaEdit"])
def test_undoing_a_sequence_of_50_edits_restores_the_weights_bit_for_bit(tiny, cases, yardstick, method):
    v = view(tiny)
    before = {name: p.detach().clone() for name, p in tiny.named_parameters()}
    ahp = alphaedit.AlphaEditHyperParams(memit=FAST_MEMIT, nullspace_threshold=1e-3)
    run = sequences.run_sequence(tiny, cases, method, yardstick, every=25, batch_size=5, rome_hparams=FAST,
                                  alphaedit_hparams=ahp, keep_edits=True, progress=False)
    layers = run.record.layers
    assert run.n_edits == 50 and len(run.record.requests) == 50
    assert any(not torch.equal(v.mlp_out_weight(l).detach(), run.record.original[l]) for l in layers)
    run.record.undo()
    for name, p in tiny.named_parameters():
        assert torch.equal(p.detach(), before[name]), f"{name} differs after undo"
    # the curve: a measurement before any edit and after every 25
    assert sorted(run.curve["n_edits"].unique()) == [0, 25, 50]
    assert set(run.curve["metric"]) == set(sequences.METRICS)
    final = run.curve[run.curve["n_edits"] == 50].set_index("metric")
    assert final.loc["efficacy_newest", "n"] == 25 and final.loc["retention", "n"] == 25
    if method == "ROME":
        assert len(run.forecasts) == 50 and run.forecasts["update_norm"].gt(0).all()


def test_a_run_undoes_itself_unless_asked_to_keep(tiny, cases, yardstick):
    v = view(tiny)
    before = v.mlp_out_weight(FAST.layer).detach().clone()
    run = sequences.run_sequence(tiny, cases[:3], "ROME (original key mix)", yardstick, every=3, rome_hparams=FAST,
                                  progress=False)
    assert run.record.undone and torch.equal(v.mlp_out_weight(FAST.layer).detach(), before)
    assert run.settings["n_edits"] == 3


def test_sequence_arguments_are_checked(tiny, cases, yardstick):
    with pytest.raises(ValueError, match="unknown method"):
        sequences.run_sequence(tiny, cases, "FT", yardstick)
    with pytest.raises(ValueError, match="must divide"):
        sequences.run_sequence(tiny, cases, "MEMIT", yardstick, every=25, batch_size=10)
    with pytest.raises(ValueError, match="one per case"):
        sequences.run_sequence(tiny, cases, "MEMIT", yardstick, every=10, zs=torch.zeros(3, view(tiny).d_model))


def test_collapse_point_by_hand(tiny):
    curve = pd.DataFrame({"n_edits": [0, 10, 20, 30], "metric": "lama_p_at_1", "value": [40.0, 35.0, 19.0, 5.0],
                          "low": 0.0, "high": 100.0, "n": 100})
    run = sequences.SequenceRun("ROME", curve, pd.DataFrame(), memit.BatchEdit(tiny, [], "ROME"))
    assert sequences.collapse_point(run, drop=0.5) == 20  # 19 < 20
    assert sequences.collapse_point(run, drop=0.2) == 30  # 5 < 8
    assert sequences.collapse_point(run, drop=0.1) is None  # never below 4
    assert run.final("lama_p_at_1")["value"] == 5.0
