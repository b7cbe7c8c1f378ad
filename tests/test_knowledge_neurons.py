"""Knowledge neurons (factlens.editing.knowledge_neurons): integrated gradients by their completeness, and an
edit that changes the neurons it reports and nothing else, on tiny random models."""

from __future__ import annotations

import pytest
import torch

from factlens.core.models import view
from factlens.editing import knowledge_neurons as kn
from factlens.editing.requests import EditRequest

REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")


def test_knowledge_neurons_threshold_by_hand():
    scores = torch.tensor([[0.1, 1.0, -2.0], [0.25, 0.19, 0.5]])
    assert kn.knowledge_neurons(scores, 0.2) == [(0, 1), (1, 2), (1, 0)]
    assert kn.knowledge_neurons(-scores.abs(), 0.2) == []


def test_integrated_gradients_add_up_to_the_probability_change(tiny):
    # completeness: Σ_i Attr_i = P(y | w̄) − P(y | 0) for the layer scaled from 0 to its activations
    v = view(tiny)
    ids = v.batch([REQUEST.text]).ids
    last = ids.shape[1] - 1
    with torch.no_grad():
        answer = int(v.logits_at(ids, [last])[0].argmax())
        full = v.logits_at(ids, [last])[0].softmax(-1)[answer]

        def zero(x, hook):
            x = x.clone()
            x[:, last] = 0
            return x

        empty = v.logits_at(ids, [last], fwd_hooks=[(v.key_hook(1), zero)])[0].softmax(-1)[answer]
    scores = kn.attribution(tiny, REQUEST.text, answer, steps=400, layers=[1], batch_size=200)
    assert scores[0].abs().sum() == 0 and scores[2].abs().sum() == 0  # layers not asked stay zero
    torch.testing.assert_close(scores[1].sum(), (full - empty).float(), atol=2e-3 * abs(float(full)) + 1e-6, rtol=0.02)


def test_kn_changes_the_neurons_it_reports_and_nothing_else(tiny):
    v = view(tiny)
    before = {name: p.detach().clone() for name, p in tiny.named_parameters()}
    values_before = [v.mlp_out_weight(l).detach().clone() for l in range(v.n_layers)]
    edit = kn.KnowledgeNeurons(kn.KNHyperParams(steps=8))(tiny, [REQUEST])
    neurons = edit.info["neurons"]
    assert neurons, "the tiny model's answer is attributed to some neurons"
    for layer in range(v.n_layers):
        changed = (v.mlp_out_weight(layer).detach() != values_before[layer]).any(dim=1).nonzero().flatten().tolist()
        assert sorted(changed) == sorted(i for l, i in neurons if l == layer)
    value_params = {id(v.mlp_out_parameter(l)) for l in range(v.n_layers)}
    for name, p in tiny.named_parameters():
        if id(p) not in value_params:
            assert torch.equal(p.detach(), before[name]), f"{name} changed"
    edit.undo()
    assert all(torch.equal(p.detach(), before[name]) for name, p in tiny.named_parameters())


def test_kn_hyperparameters_are_checked():
    with pytest.raises(ValueError, match="adaptive_threshold"):
        kn.KNHyperParams(adaptive_threshold=0)
