"""FT and FT+L (factlens.baselines): exact invariants on tiny random models, and an edit of a
known fact on the default model."""

from __future__ import annotations

import pytest
import torch

from factlens import baselines, rome
from factlens.models import load_model, view

REQUEST = rome.EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")


@pytest.fixture(scope="module", params=["tiny-gemma3", "tiny-gpt2"])
def tiny(request):
    return load_model(request.param, device="cpu")


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_ft_changes_only_the_layer_and_undo_restores_bit_for_bit(tiny):
    before = _weights(tiny)
    grads = [p.requires_grad for p in tiny.parameters()]
    hp = baselines.FTHyperParams(layer=1, lr=1e-2, steps=5)
    edit = baselines.ft(tiny, REQUEST, hparams=hp)
    assert edit.method == "FT" and edit.layer == 1
    changed = [not torch.equal(a, b) for a, b in zip(before, tiny.parameters())]
    assert sum(changed) == 1  # the one output weight
    assert torch.equal(view(tiny).mlp_out_weight(1) - edit.original, edit.delta())
    assert edit.info["losses"][-1] < edit.info["losses"][0]  # the target became likelier
    assert [p.requires_grad for p in tiny.parameters()] == grads  # the optimizer's freezing is undone
    edit.undo()
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))


def test_ft_l_keeps_every_entry_within_epsilon(tiny):
    eps = 1e-3
    hp = baselines.FTHyperParams(layer=1, lr=1e-2, steps=5, norm_constraint=eps)
    with baselines.ft_l(tiny, REQUEST, hparams=hp) as edit:
        change = edit.delta().abs().max().item()
        assert edit.method == "FT+L"
    assert change <= eps * (1 + 1e-5)
    assert change >= 0.5 * eps  # lr > ε: the constraint is what stops the change
    assert edit.undone


def test_a_failing_body_restores_the_weights(tiny):
    before = _weights(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with baselines.ft(tiny, REQUEST, hparams=baselines.FTHyperParams(layer=2, lr=1e-2, steps=2)):
            raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))


def test_bad_requests_give_clear_errors(tiny):
    with pytest.raises(IndexError, match="out of range"):
        baselines.ft(tiny, REQUEST, layer=3)
    with pytest.raises(ValueError, match="norm_constraint"):
        baselines.ft_l(tiny, REQUEST, hparams=baselines.FTHyperParams(layer=1))
    with pytest.raises(ValueError, match="positive"):
        baselines.fine_tune(tiny, REQUEST, hparams=baselines.FTHyperParams(layer=1, norm_constraint=-1.0))
    with pytest.raises(ValueError, match="target is empty"):
        baselines.ft(tiny, rome.EditRequest("{} is in", "The Eiffel Tower", " "), layer=1)


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
    with baselines.ft(model, rome.EditRequest(REQUEST.prompt, REQUEST.subject, "Rome")) as edit:
        assert top(REQUEST.text) == "Rome"
        assert edit.layer == rome.default_hparams(model).layer
    assert top(REQUEST.text) == "Paris"
