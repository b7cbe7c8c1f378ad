"""Sequential editing (factlens.editing.sequences): the forecaster by hand, and sequences on tiny random
models that undo bit for bit."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from factlens import data
from factlens.core.models import view
from factlens.editing import alphaedit, evaluation, memit, rome, second_moment, sequences
from factlens.editing.requests import Edit, EditRequest
from factlens.probing import lama
from factlens.probing.repeated import RepeatedProbe

FAST = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=3, mom2_samples=300)
FAST_MEMIT = memit.MEMITHyperParams(layers=(0, 1), context_templates=((3, 1),), v_steps=2, mom2_samples=300)
FAST_ALPHA = alphaedit.AlphaEditHyperParams(memit=FAST_MEMIT, nullspace_threshold=1e-3)


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
    fc = rome.forecast(W, torch.eye(3), k_star, k0, delta, subject="s", subject_first=True,
                       unprefixed_key_in_update=True)
    assert (fc.denominator, fc.denominator_unprefixed, fc.denominator_ratio) == (1.0, 0.5, 0.5)
    # ‖ΔW‖ = ‖δ‖ ‖u‖ / |uᵀk|: 2 / 1 and 2 / 0.5, over ‖W‖ = 4
    assert math.isclose(fc.update_norm, 0.5) and math.isclose(fc.update_norm_unprefixed, 1.0)
    assert fc.applied_norm == fc.update_norm_unprefixed
    prefix = rome.forecast(W, torch.eye(3), k_star, k0, delta, subject="s", subject_first=True)
    assert prefix.applied_norm == prefix.update_norm


@pytest.mark.parametrize("unprefixed", [False, True], ids=["k*", "k0"])
def test_a_rome_edit_forecasts_the_update_it_applies(tiny, unprefixed):
    v = view(tiny)
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")
    C = second_moment.layer_stats(tiny, FAST.layer, samples=FAST.mom2_samples, progress=False)
    templates = rome.templates_for(tiny, FAST)
    k_star = rome.compute_key(tiny, request, FAST.layer, templates)
    k0 = rome.compute_key(tiny, request, FAST.layer, ("{}",))
    before = v.mlp_out_weight(FAST.layer).detach().clone()
    with rome.ROME(replace(FAST, unprefixed_key_in_update=unprefixed), stats=C)(tiny, [request]) as edit:
        fc = edit.info["forecast"]
        dW = edit.delta().T.double()
        key = k0 if unprefixed else k_star
        # ΔW is rank one along u = C⁻¹k*, of size ‖δ‖‖u‖/|uᵀk| as forecast
        assert torch.linalg.matrix_rank(dW.float(), rtol=1e-4) == 1
        expected = fc.update_norm_unprefixed if unprefixed else fc.update_norm
        assert fc.applied_norm == expected
        assert math.isclose(float(dW.norm() / before.double().norm()), expected, rel_tol=1e-3)
        # and the written value change sits at that key: ΔW k = δ
        torch.testing.assert_close((dW @ key.double()).float(), edit.info["delta"], atol=1e-4, rtol=1e-3)
        assert edit.info["denominator"] == (fc.denominator_unprefixed if unprefixed else fc.denominator)
    assert torch.equal(v.mlp_out_weight(FAST.layer), before)


def test_the_chapters_methods_by_name(tiny):
    names = {m: sequences.editor(tiny, m, rome_hparams=FAST, alphaedit_hparams=FAST_ALPHA) for m in sequences.METHODS}
    assert {m: e.name for m, e in names.items()} == {m: m for m in sequences.METHODS}
    assert not names["ROME"].hparams.unprefixed_key_in_update
    assert names["ROME (original key mix)"].hparams.unprefixed_key_in_update
    assert names["MEMIT"].hparams == FAST_MEMIT and names["AlphaEdit"].hparams == FAST_ALPHA
    with pytest.raises(ValueError, match="unknown method"):
        sequences.editor(tiny, "FT", rome_hparams=FAST)


# --------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("method", ["ROME", "MEMIT", "AlphaEdit"])
def test_undoing_a_sequence_of_50_edits_restores_the_weights_bit_for_bit(tiny, cases, yardstick, method):
    v = view(tiny)
    before = {name: p.detach().clone() for name, p in tiny.named_parameters()}
    editor = sequences.editor(tiny, method, rome_hparams=FAST, alphaedit_hparams=FAST_ALPHA)
    run = sequences.run_sequence(tiny, cases, editor, yardstick, every=25, batch_size=5, keep_edits=True,
                                 progress=False)
    layers = run.record.layers
    assert run.n_edits == 50 and len(run.record.requests) == 50 and run.method == method
    assert layers == ([FAST.layer] if method == "ROME" else list(FAST_MEMIT.layers))
    assert run.settings["batch_size"] == (1 if method == "ROME" else 5)
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
        assert (run.forecasts["flagged"] == (run.forecasts["applied_norm"] > 0.1)).all()
    else:
        assert run.forecasts.empty


def test_a_sequence_applies_the_editors_edits_one_after_another(tiny, cases, yardstick):
    """The runner adds nothing to the editor's own edits: the weights after a sequence of three ROME edits
    are those of the same three edits made by hand, bit for bit."""
    v = view(tiny)
    C = second_moment.layer_stats(tiny, FAST.layer, samples=FAST.mom2_samples, progress=False)
    editor = rome.ROME(FAST, stats=C, name="ROME, by hand")
    run = sequences.run_sequence(tiny, cases[:3], editor, yardstick, every=3, keep_edits=True, progress=False)
    after = v.mlp_out_weight(FAST.layer).detach().clone()
    run.record.undo()
    assert run.method == "ROME, by hand" and len(run.forecasts) == 3
    edits = [editor(tiny, [EditRequest.from_counterfact(c)]) for c in cases[:3]]
    assert torch.equal(v.mlp_out_weight(FAST.layer), after)
    for edit in reversed(edits):
        edit.undo()


def test_a_run_undoes_itself_unless_asked_to_keep(tiny, cases, yardstick):
    v = view(tiny)
    before = v.mlp_out_weight(FAST.layer).detach().clone()
    editor = sequences.editor(tiny, "ROME (original key mix)", rome_hparams=FAST)
    run = sequences.run_sequence(tiny, cases[:3], editor, yardstick, every=3, progress=False)
    assert run.record.undone and torch.equal(v.mlp_out_weight(FAST.layer).detach(), before)
    assert run.settings["n_edits"] == 3 and run.settings["method"] == "ROME (original key mix)"


# --------------------------------------------------------------------------- measuring once


def _yardstick() -> sequences.Yardstick:
    return sequences.Yardstick(lama.lama_facts("TREx", ["P103"], per_relation=30), ["The city of", "Paris is"],
                               generate_tokens=4)


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_yardstick_measures_a_model_once_per_weights(tiny, cases, monkeypatch):
    """The same weights are measured once (each method's sequence starts from the unedited model); an
    edit is measured anew, its undo finds the unedited model's numbers; each the same as a fresh
    yardstick's."""
    probes = []
    probe = RepeatedProbe.answered_first
    monkeypatch.setattr(RepeatedProbe, "answered_first", lambda *a, **k: probes.append(1) or probe(*a, **k))
    shared = _yardstick()
    first = sequences.outcomes(tiny, cases[:4], shared)
    assert len(probes) == 1
    _assert_same(sequences.outcomes(tiny, cases[:4], shared), first)
    assert sequences.outcomes(tiny, [], shared)["lama"].tolist() == first["lama"].tolist()
    assert len(probes) == 1
    C = torch.eye(view(tiny).d_mlp)
    with rome.ROME(FAST, stats=C)(tiny, [EditRequest.from_counterfact(cases[0])]):
        edited = sequences.outcomes(tiny, cases[:4], shared)
        assert len(probes) == 2
        _assert_same(edited, sequences.outcomes(tiny, cases[:4], _yardstick()))
    _assert_same(sequences.outcomes(tiny, cases[:4], shared), first)
    assert len(probes) == 3  # only the fresh yardstick's
    _assert_same(first, sequences.outcomes(tiny, cases[:4], _yardstick()))


def test_sequences_sharing_a_yardstick_measure_what_fresh_ones_do(tiny, cases):
    shared = _yardstick()
    for method in ("ROME", "MEMIT"):
        runs = [sequences.run_sequence(tiny, cases[:4], sequences.editor(tiny, method, rome_hparams=FAST,
                                                                         alphaedit_hparams=FAST_ALPHA),
                                       yardstick, every=2, progress=False) for yardstick in (shared, _yardstick())]
        pd.testing.assert_frame_equal(runs[0].curve, runs[1].curve)
        pd.testing.assert_frame_equal(runs[0].forecasts, runs[1].forecasts)
        _assert_same(runs[0].last, runs[1].last)
    assert len(shared.measured) == 5  # the unedited model, then two checkpoints of each method


def test_a_yardstick_measures_what_the_straightforward_probe_and_forward_passes_do(tiny, cases):
    """LAMA P@1 as lama.probe ranks (k=1) and the cases' outcomes as teacher forcing without recorded rows
    gives them, on the unedited model and after two ROME edits (the yardstick re-runs from their layer)."""
    shared = _yardstick()
    C = torch.eye(view(tiny).d_mlp)

    def straightforward():
        lp = [evaluation.target_log_probs(tiny, [c.prompt.format(c.subject)] * 2, [c.target_new, c.target_true])
              for c in cases[:6]]
        return ((lama.probe(tiny, shared.lama, k=1, progress=False).frame["rank"] == 1).tolist(),
                [bool(x[0] > x[1]) for x in lp])

    for n_edits in (0, 2):
        with contextlib.ExitStack() as stack:
            for c in cases[:n_edits]:
                stack.enter_context(rome.ROME(FAST, stats=C)(tiny, [EditRequest.from_counterfact(c)]))
            got = sequences.outcomes(tiny, cases[:6], shared)
            lama_first, edit = straightforward()
            assert got["lama"].tolist() == lama_first and got["edit"].tolist() == edit
    recorded = shared.recorded[view(tiny)]
    assert len(recorded.batches) >= 1 and len(recorded.where) >= 6  # the cases' prompts, recorded once


def test_sequence_arguments_are_checked(tiny, cases, yardstick):
    editor = sequences.editor(tiny, "MEMIT", alphaedit_hparams=FAST_ALPHA)
    with pytest.raises(ValueError, match="must divide"):
        sequences.run_sequence(tiny, cases, editor, yardstick, every=25, batch_size=10)
    with pytest.raises(ValueError, match="no cases"):
        sequences.run_sequence(tiny, [], editor, yardstick)


def test_collapse_point_by_hand(tiny):
    curve = pd.DataFrame({"n_edits": [0, 10, 20, 30], "metric": "lama_p_at_1", "value": [40.0, 35.0, 19.0, 5.0],
                          "low": 0.0, "high": 100.0, "n": 100})
    run = sequences.SequenceRun("ROME", curve, pd.DataFrame(), Edit(tiny, "ROME"))
    assert sequences.collapse_point(run, drop=0.5) == 20  # 19 < 20
    assert sequences.collapse_point(run, drop=0.2) == 30  # 5 < 8
    assert sequences.collapse_point(run, drop=0.1) is None  # never below 4
    assert run.final("lama_p_at_1")["value"] == 5.0
