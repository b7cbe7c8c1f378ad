"""MEMIT and AlphaEdit (factlens.editing.memit, factlens.editing.alphaedit): the update equations by hand, exact
properties on tiny random models, and a batch of facts on the default model."""

from __future__ import annotations

import pytest
import torch

from factlens.core.models import load_model, view
from factlens.editing import alphaedit, memit, rome, second_moment
from factlens.editing.requests import EditRequest, check_requests

FAST = memit.MEMITHyperParams(layers=(0, 1), context_templates=((3, 1),), v_steps=3, mom2_samples=300)
REQUESTS = [EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle"),
            EditRequest("{} is the capital of", "Rome", "France")]


def _random(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- eq. 14, by hand


def test_memit_update_solves_its_normal_equations():
    d_in, d_out, n = 12, 5, 4
    K0 = _random(0, 40, d_in)
    C, K, R = K0.T @ K0 / 40, _random(1, n, d_in), _random(2, n, d_out)
    dWt = memit.memit_update(C, K, R, mom2_update_weight=3.0)
    # ΔW (λC + K Kᵀ) = R Kᵀ, written in the value layout: (λC + KᵀK) ΔWᵀ = Kᵀ R
    torch.testing.assert_close((3.0 * C + K.T @ K) @ dWt, K.T @ R)
    # no residual, no update; with λ → 0 and few keys, the keys are written exactly
    assert torch.count_nonzero(memit.memit_update(C, K, torch.zeros_like(R), 3.0)) == 0
    torch.testing.assert_close(K @ memit.memit_update(C, K, R, 1e-9), R, atol=1e-5, rtol=1e-5)


def test_memit_update_by_hand_with_one_key():
    # C = I, λ = 1, one key k = e1, residual r: ΔWᵀ = (I + k kᵀ)⁻¹ k rᵀ = k rᵀ / 2
    k, r = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[2.0, 4.0]])
    expected = torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(memit.memit_update(torch.eye(3), k, r, 1.0), expected)


def test_alphaedit_update_leaves_the_preserved_keys_outputs_unchanged():
    # preserved keys in a 6-dimensional subspace of 10: C's null space is the other 4 directions
    d_in, d_out = 10, 3
    basis = torch.linalg.qr(_random(3, d_in, d_in))[0]
    K0 = _random(4, 200, 6) @ basis[:, :6].T
    C = K0.T @ K0 / 200
    P = alphaedit.null_space_projector(C, threshold=1e-8)
    assert round(float(P.trace())) == 4
    K1, R = _random(5, 3, d_in), _random(6, 3, d_out)
    KpKp = (lambda Kp: Kp.T @ Kp)(_random(7, 2, d_in))
    dWt = alphaedit.alphaedit_update(P, KpKp, K1, R, l2=1.0)
    assert (K0 @ dWt).abs().max() < 1e-10  # ΔW K₀ = 0
    # and it is eq. 14: ΔW = R K₁ᵀ P (K_p K_pᵀ P + K₁ K₁ᵀ P + α I)⁻¹
    eq14 = R.T @ K1 @ P @ torch.linalg.inv(KpKp @ P + K1.T @ K1 @ P + torch.eye(d_in, dtype=torch.float64))
    torch.testing.assert_close(dWt.T, eq14)


# --------------------------------------------------------------------------- requests


def test_a_batch_with_the_same_subject_and_relation_twice_is_an_error(tiny):
    twice = [REQUESTS[0], EditRequest(REQUESTS[0].prompt, REQUESTS[0].subject, "Rome")]
    v = view(tiny)
    before = v.mlp_out_weight(0).clone()
    with pytest.raises(ValueError, match="both rewrite subject 'The Eiffel Tower'.*separate batches"):
        memit.MEMIT(FAST)(tiny, twice)
    with pytest.raises(ValueError, match="both rewrite"):
        alphaedit.AlphaEdit(alphaedit.AlphaEditHyperParams(memit=FAST))(tiny, twice)
    assert torch.equal(v.mlp_out_weight(0), before)
    # the same subject with another relation is fine
    check_requests([REQUESTS[0], EditRequest("{} was built by", "The Eiffel Tower", "Apple")])


def test_hyperparameters_reject_unordered_layers():
    with pytest.raises(ValueError, match="ascending"):
        memit.MEMITHyperParams(layers=(3, 1))


# --------------------------------------------------------------------------- on tiny models


def test_memit_batch_satisfies_the_normal_equations_at_every_layer(tiny):
    v = view(tiny)
    with memit.MEMIT(FAST)(tiny, REQUESTS) as record:
        assert record.layers == [0, 1]
        for step in record.info["steps"]:
            layer = step["layer"]
            C = second_moment.layer_stats(tiny, layer, samples=FAST.mom2_samples, progress=False)
            K, R = step["K"], step["R"]
            assert K.shape == (len(REQUESTS), v.d_mlp) and R.shape == (len(REQUESTS), v.d_model)
            solved = memit.memit_update(C, K, R, FAST.mom2_update_weight)
            A = FAST.mom2_update_weight * C.double() + K.double().T @ K.double()
            torch.testing.assert_close(A @ solved, K.double().T @ R.double())
            # the weight moved by exactly that, up to float32 rounding of the weight
            scale = max(record.original[layer].abs().max(), view(tiny).mlp_out_weight(layer).detach().abs().max())
            torch.testing.assert_close(record.delta(layer).double(), solved, atol=2.0**-22 * float(scale), rtol=0)
            assert step["R"].norm() > 0
    assert record.undone


def test_memit_moves_the_residual_towards_z(tiny):
    hp = FAST
    zs = memit.compute_zs(tiny, REQUESTS, hp)
    templates = rome.templates_for(tiny, hp.z_hparams())
    before = memit.read_layer(tiny, REQUESTS, hp.layers[-1], hp, templates).residual
    with memit.MEMIT(hp, zs=dict(zip(REQUESTS, zs)))(tiny, REQUESTS) as record:
        assert torch.equal(record.info["zs"], zs)  # the precomputed targets, not new ones
        after = memit.read_layer(tiny, REQUESTS, hp.layers[-1], hp, templates).residual
    assert ((zs - after).norm(dim=-1) < (zs - before).norm(dim=-1)).all()


def test_targets_use_the_given_zs_and_compute_the_others(tiny):
    zs = memit.compute_zs(tiny, REQUESTS, FAST)
    mixed = memit.targets(tiny, REQUESTS, FAST, {REQUESTS[1]: zs[1] + 1.0})
    assert torch.equal(mixed[0], zs[0]) and torch.equal(mixed[1], zs[1] + 1.0)


def test_an_alphaedit_editor_keeps_the_keys_of_its_earlier_batches(tiny):
    hp = alphaedit.AlphaEditHyperParams(memit=FAST, nullspace_threshold=1e-3, l2=1.0)
    editor = alphaedit.AlphaEdit(hp)
    with editor(tiny, REQUESTS[:1]):
        first = {layer: K.clone() for layer, K in editor.state.previous.items()}
        with editor(tiny, REQUESTS[1:]):  # the second batch of a sequence, on the edited model
            assert editor.state.n_edits == 2
            assert all(editor.state.previous[layer].trace() > first[layer].trace() > 0 for layer in hp.layers)


def test_value_changes_write_the_wanted_residual_change(tiny):
    v = view(tiny)
    values = _random(8, 3, v.d_model).float()
    direction = torch.nn.functional.normalize(_random(9, 3, v.d_model).float(), dim=-1)
    wanted = 0.05 * values.norm(dim=-1, keepdim=True) * direction
    change = memit.value_changes(tiny, 1, values, wanted)
    with torch.no_grad():
        moved = v.mlp_post_norm(1, values + change) - v.mlp_post_norm(1, values)
    if v.gated:  # Gemma's RMSNorm: the reachable part of a small change, written nearly exactly
        assert (moved - wanted).norm() < 0.1 * wanted.norm()
    else:  # no norm: exactly the residual change
        assert torch.equal(change, wanted)


def test_alphaedit_update_is_in_the_null_space_of_the_statistics(tiny):
    hp = alphaedit.AlphaEditHyperParams(memit=FAST, nullspace_threshold=1e-3, l2=1.0)
    state = alphaedit.AlphaEditState.create(tiny, hp)
    projectors = dict(state.projectors)
    with alphaedit.AlphaEdit(hp, state=state)(tiny, REQUESTS) as record:
        for step in record.info["steps"]:
            layer = step["layer"]
            C = second_moment.layer_stats(tiny, layer, samples=FAST.mom2_samples, progress=False).double()
            values, vectors = torch.linalg.eigh(C)
            kept = vectors[:, values >= hp.nullspace_threshold]  # where the preserved keys live
            # the first batch of a sequence: no previous edits
            solved = alphaedit.alphaedit_update(projectors[layer], torch.zeros_like(C), step["K"], step["R"], hp.l2)
            assert solved.norm() > 0
            assert (kept.T @ solved).norm() < 1e-10 * solved.norm()  # ΔW K₀ = 0 for keys outside the null space
            scale = max(record.original[layer].abs().max(), view(tiny).mlp_out_weight(layer).detach().abs().max())
            torch.testing.assert_close(record.delta(layer).double(), solved, atol=2.0**-22 * float(scale), rtol=0)
    assert state.n_edits == len(REQUESTS)
    assert all(state.previous[layer].trace() > 0 for layer in hp.layers)


def test_batch_undo_restores_every_layer_bit_for_bit(tiny):
    v = view(tiny)
    before = {layer: v.mlp_out_weight(layer).clone() for layer in FAST.layers}
    record = memit.MEMIT(FAST)(tiny, REQUESTS)
    assert any(not torch.equal(v.mlp_out_weight(layer), before[layer]) for layer in FAST.layers)
    record.undo()
    record.undo()  # idempotent
    assert all(torch.equal(v.mlp_out_weight(layer), before[layer]) for layer in FAST.layers)


# --------------------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma-3-270m")


@pytest.mark.slow
def test_memit_batch_makes_the_default_model_say_the_new_objects(gemma):
    from factlens.editing import evaluation

    requests = [EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"),
                EditRequest("{} is a citizen of", "Angela Merkel", "Canada"),
                EditRequest("The mother tongue of {} is", "Thomas Joannes Stieltjes", "English")]
    prompts, new = [r.text for r in requests], [r.target for r in requests]
    before = evaluation.target_log_probs(gemma, prompts, new)
    with memit.MEMIT()(gemma, requests):
        after = evaluation.target_log_probs(gemma, prompts, new)
        top = view(gemma).top_tokens(prompts, k=1)
    assert (after > before + 1.0).all()
    assert sum(t[0].strip() == r.target for t, r in zip(top, requests)) >= 2
