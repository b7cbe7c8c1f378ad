"""The request, the one undo record and the Editor interface (factlens.editing.requests), and every editor
(ROME, MEMIT, AlphaEdit, FT, FT+L, KN) on tiny random models: one record, undone bit for bit."""

from __future__ import annotations

import pytest
import torch

from factlens.core.models import view
from factlens.editing import alphaedit, fine_tuning, knowledge_neurons, memit, rome
from factlens.editing.requests import Edit, Editor, EditRequest, check_requests

REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")
OTHER = EditRequest("{} is the capital of", "Rome", "France")

FAST_ROME = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=3, mom2_samples=300)
FAST_MEMIT = memit.MEMITHyperParams(layers=(0, 1), context_templates=((3, 1),), v_steps=2, mom2_samples=300)
FAST_ALPHA = alphaedit.AlphaEditHyperParams(memit=FAST_MEMIT, nullspace_threshold=1e-3)
EDITORS = {
    "ROME": lambda: rome.ROME(FAST_ROME),
    "MEMIT": lambda: memit.MEMIT(FAST_MEMIT),
    "AlphaEdit": lambda: alphaedit.AlphaEdit(FAST_ALPHA),
    "FT": lambda: fine_tuning.FineTuner(fine_tuning.FTHyperParams(layer=1, lr=1e-2, steps=3)),
    "FT+L": lambda: fine_tuning.FineTuner(fine_tuning.FTHyperParams(layer=0, lr=1e-2, steps=3, norm_constraint=1e-3,
                                                                    tune_bias=True)),
    "KN": lambda: knowledge_neurons.KnowledgeNeurons(knowledge_neurons.KNHyperParams(steps=4)),
}


def _parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --------------------------------------------------------------------------- requests


def test_request_validation_names_the_problem():
    # a prompt without the subject's slot: the subject would be absent from what the model reads
    with pytest.raises(ValueError, match="where the subject goes"):
        EditRequest("The Eiffel Tower is in", "The Eiffel Tower", "Rome")
    with pytest.raises(ValueError, match="target is empty"):
        EditRequest("{} is in", "The Eiffel Tower", "  ")
    with pytest.raises(ValueError, match="subject is empty"):
        EditRequest("{} is in", "", "Rome")
    assert EditRequest("{} is in", "Rome", "Italy").text == "Rome is in"
    assert REQUEST.prefixed(["{}", "Hello. {}"]) == [REQUEST.text, "Hello. " + REQUEST.text]


def test_check_requests():
    assert check_requests(iter([REQUEST, OTHER])) == [REQUEST, OTHER]
    with pytest.raises(ValueError, match="no requests"):
        check_requests([])
    with pytest.raises(TypeError, match="not a factlens.editing.requests.EditRequest"):
        check_requests([REQUEST, "Rome"])
    with pytest.raises(ValueError, match="both rewrite subject"):
        check_requests([REQUEST, EditRequest(REQUEST.prompt, REQUEST.subject, "Rome")])


# --------------------------------------------------------------------------- the record


def test_the_record_restores_weights_and_other_parameters_bit_for_bit(tiny):
    v = view(tiny)
    before = _parameters(tiny)
    other = next(p for p in tiny.parameters() if all(p is not v.mlp_out_parameter(l) for l in range(v.n_layers)))
    with Edit(tiny, "by hand", [REQUEST], layers=[0, 2], parameters=[other]) as edit:
        v.set_mlp_out_weight(2, torch.zeros_like(v.mlp_out_weight(2)))
        with torch.no_grad():
            other.mul_(3.0)
        assert edit.layers == [0, 2] and edit.request == REQUEST
        assert torch.equal(edit.delta(0), torch.zeros_like(edit.original[0]))
        assert torch.equal(edit.delta(2), -edit.original[2])
        assert torch.equal(edit.original_of(other) * 3.0, other.detach())
        with pytest.raises(ValueError, match="not one"):
            edit.layer  # noqa: B018
        with pytest.raises(KeyError, match="not recorded"):
            edit.delta(1)
    assert edit.undone
    assert all(torch.equal(p.detach(), before[name]) for name, p in tiny.named_parameters())
    edit.undo()  # idempotent
    assert all(torch.equal(p.detach(), before[name]) for name, p in tiny.named_parameters())


def test_extend_takes_a_later_edit_into_one_record(tiny):
    """A sequence's record covers each layer as it was before the first edit that changed it."""
    v = view(tiny)
    before = _parameters(tiny)
    sequence = Edit(tiny, "sequence")
    for layer in (1, 1, 0):
        step = Edit(tiny, "step", [REQUEST], layers=[layer])
        v.set_mlp_out_weight(layer, v.mlp_out_weight(layer) * 2.0)
        sequence.extend(step)
    assert sequence.layers == [0, 1] and len(sequence.requests) == 3
    sequence.undo()
    assert all(torch.equal(p.detach(), before[name]) for name, p in tiny.named_parameters())
    with pytest.raises(ValueError, match="another model"):
        sequence.extend(Edit(object(), "elsewhere"))


class _Halving(Editor):
    """Halves layer 0's values, one request per edit."""

    name = "halving"
    max_requests = 1

    def write(self, model, requests):
        edit = Edit(model, self.name, requests, layers=[0])
        view(model).set_mlp_out_weight(0, edit.original[0] / 2)
        return edit


def test_an_editor_checks_the_requests_before_any_work(tiny):
    v = view(tiny)
    before = v.mlp_out_weight(0).detach().clone()
    halving = _Halving()
    with pytest.raises(ValueError, match="at most 1 request"):
        halving(tiny, [REQUEST, OTHER])
    halving.max_requests = None  # a batch method: two requests for one key are still an error
    with pytest.raises(ValueError, match="both rewrite"):
        halving(tiny, [REQUEST, EditRequest(REQUEST.prompt, REQUEST.subject, "Rome")])
    assert torch.equal(v.mlp_out_weight(0), before)
    with halving(tiny, [REQUEST]) as edit:
        assert torch.equal(v.mlp_out_weight(0), before / 2) and edit.method == "halving"
    assert torch.equal(v.mlp_out_weight(0), before)


# --------------------------------------------------------------------------- every editor


@pytest.mark.parametrize("method", list(EDITORS))
def test_every_editor_returns_the_one_record_and_undo_restores_every_parameter(tiny, method):
    before = _parameters(tiny)
    editor = EDITORS[method]()
    assert isinstance(editor, Editor) and editor.name == method
    edit = editor(tiny, [REQUEST])
    assert type(edit) is Edit and edit.method == method and edit.requests == [REQUEST]
    changed = [name for name, p in tiny.named_parameters() if not torch.equal(p.detach(), before[name])]
    if method != "KN":  # KN may find no neuron to move on a random model
        assert changed, f"{method} changed nothing"
    assert edit.info["seconds"] > 0
    edit.undo()
    for name, p in tiny.named_parameters():
        assert torch.equal(p.detach(), before[name]), f"{name} differs after {method}'s undo"
    edit.undo()
    assert all(torch.equal(p.detach(), before[name]) for name, p in tiny.named_parameters())
