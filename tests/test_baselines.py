"""FT and FT+L (factlens.editing.fine_tuning): exact invariants on tiny random models, the batched
optimization against the straightforward one (torch's Adam on the model's own weight, one
request at a time), the paper's configuration, and an edit of a known fact on the default model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from factlens.core.models import load_model, view
from factlens.editing import fine_tuning, rome
from factlens.editing.requests import EditRequest

REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_ft_changes_only_the_layer_and_undo_restores_bit_for_bit(tiny):
    before = _weights(tiny)
    grads = [p.requires_grad for p in tiny.parameters()]
    hp = fine_tuning.FTHyperParams(layer=1, lr=1e-2, steps=5)
    edit = fine_tuning.FineTuner(hp)(tiny, [REQUEST])
    assert edit.method == "FT" and edit.layer == 1 and edit.requests == [REQUEST]
    changed = [not torch.equal(a, b) for a, b in zip(before, tiny.parameters())]
    assert sum(changed) == 1  # the one output weight
    assert torch.equal(view(tiny).mlp_out_weight(1) - edit.original[1], edit.delta())
    assert edit.info["losses"][-1] < edit.info["losses"][0]  # the target became likelier
    assert [p.requires_grad for p in tiny.parameters()] == grads  # the optimizer's freezing is undone
    edit.undo()
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))


def test_ft_l_keeps_every_entry_within_epsilon(tiny):
    eps = 1e-3
    hp = fine_tuning.FTHyperParams(layer=1, lr=1e-2, steps=5, norm_constraint=eps)
    with fine_tuning.FineTuner(hp)(tiny, [REQUEST]) as edit:
        change = edit.delta().abs().max().item()
        assert edit.method == "FT+L"
    assert change <= eps * (1 + 1e-5)
    assert change >= 0.5 * eps  # lr > ε: the constraint is what stops the change
    assert edit.undone


def test_a_failing_body_restores_the_weights(tiny):
    before = _weights(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with fine_tuning.FineTuner(fine_tuning.FTHyperParams(layer=2, lr=1e-2, steps=2))(tiny, [REQUEST]):
            raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))


def _straightforward(model, request, hp):
    """FT as written first: torch.optim.Adam on the model's own weight (and bias), a full forward
    pass per step, one request; returns (ΔW, Δb or None, losses before each step)."""
    v = view(model)
    head, tail = v.token_ids(request.text), v.target_ids(request.target)
    ids = v.batch([head + tail]).ids
    positions = torch.arange(len(head) - 1, len(head) - 1 + len(tail))
    values = v.mlp_out_weight(hp.layer)
    bias = fine_tuning.output_bias(model, hp.layer) if hp.tune_bias else None
    params = [v.mlp_out_parameter(hp.layer)] + ([bias] if bias is not None else [])
    starts = [values.detach().clone()] + ([bias.detach().clone()] if bias is not None else [])
    losses = []
    with v.frozen_except(params):
        optimizer = torch.optim.Adam(params, lr=hp.lr)
        for _ in range(hp.steps):
            optimizer.zero_grad()
            hidden = v.final_hidden(ids)[0, positions]
            logp = v.unembed(hidden[:, None])[:, 0].float().log_softmax(-1)
            loss = -logp[torch.arange(len(tail)), torch.tensor(tail)].mean()
            losses.append(loss.item())
            if loss.item() < hp.stop_loss:
                break
            loss.backward()
            optimizer.step()
            if hp.norm_constraint is not None:
                with torch.no_grad():
                    for x, x0 in zip([values, bias], starts):
                        if x is not None:
                            x.copy_(torch.clamp(x, x0 - hp.norm_constraint, x0 + hp.norm_constraint))
    deltas = [x.detach() - x0 for x, x0 in zip([values, bias], starts)] + [None]
    with torch.no_grad():
        for x, x0 in zip([values, bias], starts):
            if x is not None:
                x.copy_(x0)
    return deltas[0], deltas[1] if bias is not None else None, losses


REQUESTS = [REQUEST, EditRequest("{} was born in", "Dante", "Paris"),
            EditRequest("{} plays the", "Toko Yasuda", "guitar and the piano")]


@pytest.mark.parametrize("hp", [
    fine_tuning.FTHyperParams(layer=1, lr=1e-2, steps=6),
    fine_tuning.FTHyperParams(layer=1, lr=1e-2, steps=6, norm_constraint=2e-3),
    fine_tuning.FTHyperParams(layer=0, lr=1e-2, steps=6, norm_constraint=2e-3, tune_bias=True),
    fine_tuning.FTHyperParams(layer=2, lr=1e-2, steps=3),  # the last layer: only the final norm above it
], ids=["FT", "FT+L", "FT+L W and b", "last layer"])
@pytest.mark.parametrize("from_layer", [True, False], ids=["blocks above l", "whole model"])
def test_batched_fine_tuning_equals_the_straightforward_loop(tiny, hp, from_layer):
    tuned = fine_tuning.fine_tune(tiny, REQUESTS, hp, batch_size=2, from_layer=from_layer)  # batches of 2 and 1
    assert [t.request for t in tuned] == REQUESTS
    for request, got in zip(REQUESTS, tuned):
        delta, delta_bias, losses = _straightforward(tiny, request, hp)
        assert got.steps == len(losses) == hp.steps
        assert got.losses[:-1] == pytest.approx(losses, rel=1e-4)
        torch.testing.assert_close(got.delta, delta, atol=1e-3 * delta.abs().max().item(), rtol=0)
        assert (delta_bias is None) == (got.delta_bias is None)
        if delta_bias is not None:
            torch.testing.assert_close(got.delta_bias, delta_bias, atol=1e-3 * delta_bias.abs().max().item(), rtol=0)


def test_each_request_stops_on_its_own(tiny):
    # a stop loss between the requests' losses: some stop before any step, the others run on
    hp = fine_tuning.FTHyperParams(layer=1, lr=1e-2, steps=4)
    first = [fine_tuning.fine_tune(tiny, [r], hp)[0].losses[0] for r in REQUESTS]
    stop = sorted(first)[1] + 1e-6
    hp = fine_tuning.FTHyperParams(layer=1, lr=1e-2, steps=4, stop_loss=stop)
    together = fine_tuning.fine_tune(tiny, REQUESTS, hp, batch_size=3)
    for r, loss, both in zip(REQUESTS, first, together):
        alone = fine_tuning.fine_tune(tiny, [r], hp)[0]
        assert both.steps == alone.steps
        torch.testing.assert_close(both.delta, alone.delta, atol=1e-3 * alone.delta.abs().max().item(), rtol=0)
        if loss < stop:
            assert both.steps == 0 and not both.delta.any()
    steps = [t.steps for t in together]
    assert min(steps) == 0 and max(steps) > 0  # they stopped at different steps


def test_the_tuner_tunes_each_batch_once_in_order_and_applies_what_fine_tune_finds(tiny, monkeypatch):
    hp = fine_tuning.FTHyperParams(layer=1, lr=1e-2, steps=3)
    eager = fine_tuning.fine_tune(tiny, REQUESTS, hp, batch_size=2)
    calls = []
    real = fine_tuning.fine_tune

    def counted(model, requests, *args, **kwargs):
        calls.append(list(requests))
        return real(model, requests, *args, **kwargs)

    monkeypatch.setattr(fine_tuning, "fine_tune", counted)
    tuner = fine_tuning.FineTuner(hp, requests=REQUESTS, batch_size=2)
    before = _weights(tiny)
    for request, expected in zip(REQUESTS, eager):
        with tuner(tiny, [request]) as edit:
            torch.testing.assert_close(edit.delta(), expected.delta, atol=1e-7, rtol=0)
            assert edit.info["steps"] == expected.steps == tuner.steps[request]
    assert calls == [REQUESTS[:2], REQUESTS[2:]]  # each batch once, in order
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))
    # another model object: its batch is tuned on it; a request not announced: tuned alone
    other = load_model("tiny-gpt2" if view(tiny).name == "tiny-gemma3" else "tiny-gemma3")
    with tuner(other, [REQUEST]) as edit:
        assert edit.model is other
    unannounced = EditRequest("{} is made of", "The Eiffel Tower", "wood")
    with tuner(tiny, [unannounced]):
        pass
    assert calls[2:] == [REQUESTS[:2], [unannounced]] and unannounced in tuner.steps


def test_the_papers_configuration_tunes_layer_0_weight_and_bias(tiny):
    hp = fine_tuning.paper_hparams(tiny)
    assert (hp.layer, hp.norm_constraint, hp.tune_bias, hp.method) == (0, 5e-4, True, "FT+L")
    assert fine_tuning.paper_hparams(tiny, constrained=False).layer == 1
    bias = fine_tuning.output_bias(tiny, 0)
    if view(tiny).name == "tiny-gemma3":
        assert bias is None  # Gemma's down projection has no bias: the weight alone is tuned
    else:
        assert bias is not None and bias.shape == (view(tiny).d_model,)
    before = _weights(tiny)
    with fine_tuning.FineTuner(replace(hp, lr=1e-2, steps=3))(tiny, [REQUEST]) as edit:
        changed = [name for (name, p), b in zip(tiny.named_parameters(), before) if not torch.equal(p, b)]
        assert len(changed) == (1 if bias is None else 2)  # W, and b where there is one
        if bias is not None:
            assert 0 < (bias - edit.original_of(bias)).abs().max() <= 5e-4 * (1 + 1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))


def test_bad_requests_give_clear_errors(tiny):
    with pytest.raises(IndexError, match="out of range"):
        fine_tuning.FineTuner(fine_tuning.FTHyperParams(layer=3))(tiny, [REQUEST])
    with pytest.raises(ValueError, match="at most 1 request"):
        fine_tuning.FineTuner(fine_tuning.FTHyperParams(layer=1))(tiny, REQUESTS[:2])
    with pytest.raises(ValueError, match="positive"):
        fine_tuning.fine_tune(tiny, REQUEST, hparams=fine_tuning.FTHyperParams(layer=1, norm_constraint=-1.0))
    with pytest.raises(ValueError, match="batch_size"):
        fine_tuning.fine_tune(tiny, [REQUEST], fine_tuning.FTHyperParams(layer=1), batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        fine_tuning.FineTuner(fine_tuning.FTHyperParams(layer=1), batch_size=0)


@pytest.mark.slow
def test_ft_writes_a_known_fact_on_the_default_model_and_undo_brings_it_back():
    # FT's specificity is poor (the paper's point, NS 40.4 on GPT-2 XL; here it turns "The capital
    # of Japan is" -> Tokyo into "a"), so only efficacy and the exact undo are asserted
    model = load_model()
    v = view(model)

    def top(prompt):
        ids = torch.tensor([v.token_ids(prompt)])
        return v.tokenizer.decode(v.logits_at(ids, [ids.shape[1] - 1]).argmax(-1)).strip()

    assert top(REQUEST.text) == "Paris"
    ft = fine_tuning.FineTuner(fine_tuning.default_hparams(model))
    with ft(model, [EditRequest(REQUEST.prompt, REQUEST.subject, "Rome")]) as edit:
        assert top(REQUEST.text) == "Rome"
        assert edit.layer == rome.default_hparams(model).layer
    assert top(REQUEST.text) == "Paris"


@pytest.mark.slow
def test_tuning_from_layer_l_gives_the_edits_of_the_whole_model_on_the_default_model():
    # Adam moves entries whose gradient is nearly zero by ~lr in the direction of its sign, so
    # rounding flips a few of them: the whole update, the steps and the final loss must agree
    model = load_model()
    requests = [EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"),
                EditRequest("{} plays the sport of", "LeBron James", "football")]
    hp = fine_tuning.default_hparams(model, constrained=True)
    fast = fine_tuning.fine_tune(model, requests, hp, batch_size=2)
    slow = fine_tuning.fine_tune(model, requests, hp, batch_size=1, from_layer=False)
    for f, s in zip(fast, slow):
        assert f.steps == s.steps
        assert f.losses[-1] == pytest.approx(s.losses[-1], rel=0.05, abs=1e-3)
        assert (f.delta - s.delta).norm() < 0.05 * s.delta.norm()
