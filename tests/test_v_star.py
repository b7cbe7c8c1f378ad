"""ROME's v* (factlens.editing.v_star, factlens.editing.v_star_loss): the one-pass loss and gradient equal
the straightforward computation; the re-run from the block above the edit equals the whole forward pass."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from factlens.core.models import view
from factlens.editing import rome, v_star
from factlens.editing.requests import EditRequest
from factlens.editing.v_star_loss import Essence, rewrite_terms

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=4, mom2_samples=300)
REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")


def _dense(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           before: torch.Tensor | None, edited_first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The straightforward terms: logits, a log-softmax, the KL of the last row (0 against itself)."""
    logits = hidden @ weight.T + (0 if bias is None else bias)
    logp = logits.log_softmax(-1)
    new = logp[torch.arange(len(targets)), targets]
    before = logp[-1:].detach() if before is None else before
    kl = (v_star.kl_divergence(logp[-1:], before) if edited_first else v_star.kl_divergence(before, logp[-1:]))
    return new, kl, before


def _compare(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             edited_first: bool, chunk: int, steps: int = 3) -> None:
    """Both computations along a few gradient steps of the same loss: values and gradients agree."""
    essence, before = Essence(), None
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        h1 = hidden.clone().requires_grad_(True)
        h2 = hidden.clone().requires_grad_(True)
        new1, kl1 = rewrite_terms(h1, targets, weight, bias, essence, edited_first=edited_first, chunk=chunk)
        new2, kl2, before = _dense(h2, targets, weight, bias, before, edited_first)
        torch.testing.assert_close(new1, new2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kl1, kl2, atol=1e-6, rtol=1e-4)
        g_new, g_kl = torch.randn(len(targets), generator=gen), torch.rand((), generator=gen) + 0.5
        ((new1 * g_new).sum() + g_kl * kl1).backward()
        ((new2 * g_new).sum() + g_kl * kl2).backward()
        torch.testing.assert_close(h1.grad, h2.grad, atol=1e-5, rtol=1e-4)
        if step == 0:  # the first evaluation is against the distribution itself: exactly 0, no gradient
            assert kl1.item() == 0 and torch.count_nonzero(h1.grad[-1]) == 0
        hidden = hidden + 0.3 * torch.randn(hidden.shape, generator=gen)


@pytest.mark.parametrize("edited_first", [True, False])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_one_pass_terms_equal_the_dense_computation_by_hand(edited_first, chunk):
    """A hand-made unembedding (200 tokens, a bias, one token far ahead so that the running maximum moves
    across chunks): the NLL terms, the KL in either direction and the gradient equal autograd's."""
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(200, 16, generator=gen), torch.randn(200, generator=gen)
    weight[150] *= 4
    hidden = torch.randn(5, 16, generator=gen)
    _compare(hidden, torch.tensor([3, 150, 199, 0]), weight, bias, edited_first, chunk)


def test_one_pass_terms_without_bias_and_with_one_target():
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(300, 8, generator=gen)
    _compare(torch.randn(2, 8, generator=gen), torch.tensor([17]), weight, None, True, 128)


def test_one_pass_terms_on_the_tiny_models_unembedding(tiny):
    """The tiny model's own unembedding (``View.unembedding_map``) on its final-normed states."""
    v = view(tiny)
    weight, bias = v.unembedding_map()
    prompts = v_star.RewritePrompts.build(tiny, REQUEST, ["{}", "Hello. {}"], "{} is a")
    with torch.no_grad():
        hidden = v.final_hidden(prompts.ids)[prompts.read_rows, prompts.read_positions]
    with v.frozen_except([]):
        _compare(hidden, prompts.target.repeat(prompts.n), weight.detach(), bias, True, 96)


def test_one_pass_terms_refuse_a_trainable_unembedding():
    with pytest.raises(ValueError, match="freeze the unembedding"):
        rewrite_terms(torch.zeros(2, 4), torch.tensor([1]), torch.zeros(9, 4, requires_grad=True), None, Essence())


def test_the_rerun_from_the_block_above_equals_the_whole_forward_pass(tiny):
    """The partial reader writes ``h_mid + N(v + δ)`` into the stream entering block ``layer + 1`` and re-runs
    from there: the read states and their gradient with respect to δ equal a whole forward pass with δ
    added to the value by a hook, at every layer (the last one included: only the final norm re-runs)."""
    v = view(tiny)
    prompts = v_star.RewritePrompts.build(tiny, REQUEST, ["{}", "Hello. {}", "It was a long and quiet day. {}"],
                                          "{} is a")
    gen = torch.Generator().manual_seed(0)
    for layer in range(v.n_layers):
        delta = (0.5 * torch.randn(v.d_model, generator=gen)).requires_grad_(True)
        weights = torch.randn(len(prompts.read_rows), v.d_model, generator=gen)
        with v.frozen_except([]):
            (values, read), (values_whole, read_whole) = (
                v_star._value_reader(tiny, prompts, layer, delta, partial=p) for p in (True, False))
            torch.testing.assert_close(values, values_whole)
            hidden, hidden_whole = read(), read_whole()
            torch.testing.assert_close(hidden, hidden_whole, atol=1e-5, rtol=1e-5)
            (grad,) = torch.autograd.grad((hidden * weights).sum(), delta)
            (grad_whole,) = torch.autograd.grad((hidden_whole * weights).sum(), delta)
        torch.testing.assert_close(grad, grad_whole, atol=1e-5, rtol=1e-4)


def test_bf16_unembedding_is_an_option_of_the_one_pass_loss_and_of_the_cache_key(tiny):
    hp = replace(FAST, unembedding_bf16=True)
    templates = rome.templates_for(tiny, hp)
    fast = v_star.compute_value(tiny, REQUEST, hp.layer, hp, templates)
    exact = v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates)
    assert torch.nn.functional.cosine_similarity(fast.delta, exact.delta, dim=0) > 0.99
    assert v_star.value_settings(hp) != v_star.value_settings(FAST)
    with pytest.raises(ValueError, match="float32 reference"):
        v_star.compute_value(tiny, REQUEST, hp.layer, hp, templates, partial=False)
