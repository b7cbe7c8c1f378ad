"""The partial forward pass (factlens.core.forward through the View) equals a full forward pass with the
same change, on every architecture: GPT-2, Gemma 3 (sliding and full attention, GQA, its norms)
and Llama (SmolLM2)."""

from __future__ import annotations

import pytest
import torch

from factlens.core import forward
from factlens.core.models import load_model, view

# longer than tiny-gemma3's sliding window (16 tokens), so that its sliding layers mask keys
LONG = ("The Eiffel Tower is located in the city of Paris. The Space Needle is in Seattle. "
        "Danielle Darrieux's mother tongue is French.")
SHORT = "Dante was born in Florence"


pytestmark = pytest.mark.usefixtures("one_thread")  # the conftest's: tiny models on one thread


def _noise(shape, seed=0, scale=1.0):
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _add_from(start: int, extra: torch.Tensor):
    """Hook: add ``extra`` [b, t - start, d] to positions ``start ..``."""
    def add(x, hook):
        x = x.clone()
        x[:, start:] += extra
        return x
    return add


def _check_resid_change(model, text: str, layer: int, start: int, rtol=1e-5, atol=1e-5):
    v = view(model)
    ids = v.batch([text]).ids
    assert ids.shape[1] > start
    rec = v.record(ids)
    extra = _noise((1, ids.shape[1] - start, v.d_model), scale=float(rec.resid[layer].std()))
    with torch.no_grad():
        full = v.final_hidden(ids, fwd_hooks=[(v.resid_pre_hook(layer), _add_from(start, extra))])
        partial = v.run_from(rec, layer, rec.resid[layer][:, start:] + extra, start=start)
        untouched = v.final_hidden(ids)
    assert partial.shape == (1, ids.shape[1] - start, v.d_model)
    torch.testing.assert_close(partial, full[:, start:], rtol=rtol, atol=atol)
    assert (full[:, start:] - untouched[:, start:]).abs().max() > 100 * atol  # the change did change it
    torch.testing.assert_close(full[:, :start], untouched[:, :start])  # and nothing before it


@pytest.mark.parametrize("layer,start", [(0, 0), (1, 5), (2, 20), (1, 0)])
def test_rerunning_from_a_changed_residual_equals_the_full_forward(tiny, layer, start):
    _check_resid_change(tiny, LONG, layer, start)


def test_the_long_prompt_spans_tiny_gemmas_sliding_window():
    """So that the tests above re-run sliding-window layers whose masks hide early keys."""
    model = load_model("tiny-gemma3", device="cpu")
    v = view(model)
    rec = v.record(v.batch([LONG]).ids)
    sliding, full = (rec.block_args[l]["attention_mask"][0, 0] for l in (0, 2))
    last = len(v.token_ids(LONG)) - 1
    assert (sliding[last] < -1e30).sum() > (full[last] < -1e30).sum()  # the last query sees fewer keys
    assert (full[last] == 0).all()


def test_last_layer_and_output_positions(tiny):
    v = view(tiny)
    ids = v.batch([SHORT]).ids
    rec = v.record(ids)
    with torch.no_grad():
        full = v.final_hidden(ids)
        torch.testing.assert_close(v.run_from(rec, v.n_layers), full)  # no block runs: the final norm
        torch.testing.assert_close(v.run_from(rec, 1, start=2), full[:, 2:], rtol=1e-5, atol=1e-5)
        at = v.run_from(rec, 1, start=2, at=[ids.shape[1] - 1])
        torch.testing.assert_close(at, full[:, -1], rtol=1e-5, atol=1e-5)
        two = v.run_from(rec, 1, start=2, at=torch.tensor([[2, 4]]))
        torch.testing.assert_close(two, full[:, [2, 4]], rtol=1e-5, atol=1e-5)


def _add_at_index(delta: torch.Tensor, index: int):
    def add(x, hook):
        x = x.clone()
        x[:, index] += delta
        return x
    return add


def test_a_rome_style_delta_gives_the_same_loss_and_gradient(tiny):
    """δ added to the value (MLP output) of layer l at the subject's last token i: only positions
    ≥ i of layers ≥ l change; logits read at two later positions; gradients reach δ alike."""
    v = view(tiny)
    ids = v.batch([LONG]).ids
    layer, i, read = 1, 6, [9, 12]
    rec = v.record(ids)
    targets = ids[0, [r + 1 for r in read]]

    def loss_of(hidden):  # hidden [1, 2, d] at the read positions
        return torch.nn.functional.cross_entropy(v.unembed(hidden)[0], targets)

    delta_full = (0.5 * _noise((v.d_model,), seed=3)).requires_grad_(True)
    with v.frozen_except([]):
        full = v.final_hidden(ids, fwd_hooks=[(v.value_hook(layer), _add_at_index(delta_full, i))])[:, read]
        loss_full = loss_of(full)
        loss_full.backward()
    delta_part = delta_full.detach().clone().requires_grad_(True)
    with v.frozen_except([]):
        part = v.run_from(rec, layer, start=i, fwd_hooks=[(v.value_hook(layer), _add_at_index(delta_part, 0))],
                          at=torch.tensor([read]))
        loss_part = loss_of(part)
        loss_part.backward()
    torch.testing.assert_close(loss_part, loss_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(delta_part.grad, delta_full.grad, rtol=1e-4, atol=1e-6)
    assert delta_full.grad.abs().max() > 1e-4


def test_a_changed_weight_rerun_from_its_layer_gives_the_same_gradient(tiny):
    """Fine-tuning one MLP: record once, then the forward from layer l (start 0) with the new weight."""
    v = view(tiny)
    layer = 1
    ids = v.batch([SHORT, LONG]).ids  # two rows, right-padded
    rec = v.record(ids)
    param = v.mlp_out_parameter(layer)
    before = param.detach().clone()
    target = ids[:, 3]
    try:
        with torch.no_grad():
            param.add_(0.05 * _noise(param.shape, seed=4))
        grads = []
        for run in (lambda: v.final_hidden(ids)[:, 2], lambda: v.run_from(rec, layer, at=[2, 2])):
            with v.frozen_except([param]):
                loss = torch.nn.functional.cross_entropy(v.unembed(run()[:, None])[:, 0], target)
                loss.backward()
                grads.append((loss.detach(), param.grad.detach().clone()))
    finally:
        with torch.no_grad():
            param.copy_(before)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)


def test_rows_continue_the_recorded_rows_of_a_padded_batch(tiny):
    v = view(tiny)
    batch = v.batch([SHORT, LONG])
    rec = v.record(batch.ids)
    layer, start = 1, 3
    rows = torch.tensor([1, 0, 1])
    extra = _noise((3, batch.ids.shape[1] - start, v.d_model), seed=5, scale=float(rec.resid[layer].std()))
    with torch.no_grad():
        partial = v.run_from(rec, layer, rec.resid[layer][rows, start:] + extra, start=start, rows=rows)
        for r, source in enumerate(rows.tolist()):
            n = int(batch.lengths[source])
            ids = batch.ids[source:source + 1, :n]
            change = _add_from(start, extra[r:r + 1, :n - start])
            full = v.final_hidden(ids, fwd_hooks=[(v.resid_pre_hook(layer), change)])
            torch.testing.assert_close(partial[r, :n - start], full[0, start:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hooks", [True, False])
@pytest.mark.parametrize("start", [0, 3, -1])
def test_the_last_block_read_at_the_last_position_equals_the_whole_block(tiny, start, hooks):
    """``last_only``: the last block's attention outputs and MLP at the last position alone, the other
    positions giving their keys and values only (LONG: tiny-gemma3's sliding window hides early keys;
    start -1: the last position is the only one re-run). ``hooks=False``: the Hugging Face blocks
    themselves give the bridges' numbers."""
    v = view(tiny)
    batch = v.batch([LONG, SHORT])
    rec = v.record(batch.ids)
    start = start % batch.ids.shape[1]
    layer, rows = 1, torch.tensor([0, 1, 0])
    extra = _noise((3, batch.ids.shape[1] - start, v.d_model), seed=7, scale=float(rec.resid[layer].std()))
    resid = rec.resid[layer][rows, start:] + extra
    with torch.no_grad():
        whole = v.run_blocks(rec, resid, range(layer, v.n_layers), start=start, rows=rows)
        hf = v.run_blocks(rec, resid, range(layer, v.n_layers), start=start, rows=rows, hooks=hooks)
        last = v.run_blocks(rec, resid, range(layer, v.n_layers), start=start, rows=rows, last_only=True,
                            hooks=hooks)
    assert last.shape == (3, 1, v.d_model)
    torch.testing.assert_close(hf, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, whole[:, -1:], rtol=1e-5, atol=1e-5)


def test_blocks_without_hooks_take_no_hooks(tiny):
    v = view(tiny)
    rec = v.record(v.batch([SHORT]).ids)
    with pytest.raises(ValueError, match="hooks=False"):
        v.run_blocks(rec, rec.resid[1], range(1, 2), hooks=False, fwd_hooks=[(v.mlp_out_hook(1), lambda x, hook: x)])


def test_hooks_in_the_rerun_see_the_rerun_positions(tiny):
    v = view(tiny)
    ids = v.batch([SHORT]).ids
    rec = v.record(ids, names=[v.mlp_out_hook(2)])
    seen = {}

    def grab(x, hook):
        seen["x"] = x
    with torch.no_grad():
        v.run_from(rec, 1, start=3, fwd_hooks=[(v.mlp_out_hook(2), grab)])
    torch.testing.assert_close(seen["x"], rec.captured[v.mlp_out_hook(2)][:, 3:], rtol=1e-5, atol=1e-5)


def test_token_log_probs_equal_the_log_softmax_of_the_logits(tiny):
    v = view(tiny)
    normed = v.final_hidden(v.batch([LONG, SHORT]).ids).reshape(-1, v.d_model).detach()
    logits = v.unembed(normed[:, None])[:, 0]
    log_z, top = forward.log_normalizer(v, normed, vocab_block=100, row_block=7)  # ragged last blocks
    torch.testing.assert_close(log_z, logits.logsumexp(-1), rtol=1e-5, atol=1e-5)
    assert torch.equal(top, logits.argmax(-1))
    tokens = torch.tensor([[3, 7, v.d_vocab - 1]]).expand(len(normed), -1)
    log_softmax = logits.log_softmax(-1)
    got = forward.token_log_probs(v, normed, tokens, log_z=log_z)
    torch.testing.assert_close(got, log_softmax.gather(1, tokens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v.token_log_probs(normed, [5])[:, 0], log_softmax[:, 5], rtol=1e-5, atol=1e-5)
    # the gradient of log Z is the softmax (the running maximum carries none)
    states = normed.clone().requires_grad_()
    forward.log_normalizer(v, states, vocab_block=100, row_block=7)[0].sum().backward()
    expected = log_softmax.exp() @ v.model.unembed.W_U.T.detach()
    torch.testing.assert_close(states.grad, expected, rtol=1e-4, atol=1e-5)


def test_bad_requests_are_clear_errors(tiny):
    v = view(tiny)
    ids = v.batch([SHORT]).ids
    rec = v.record(ids, layers=[2])
    with pytest.raises(ValueError, match="not recorded"):
        v.run_from(rec, 1)
    with pytest.raises(ValueError, match=r"resid must be \[rows, 3"):
        v.run_from(rec, 2, rec.resid[2], start=ids.shape[1] - 3)
    with pytest.raises(ValueError, match="start must be"):
        v.run_from(rec, 2, start=ids.shape[1])
    with pytest.raises(IndexError, match="out of range"):
        v.run_from(rec, v.n_layers + 1)
    two = v.record(v.batch([SHORT, LONG]).ids)
    with pytest.raises(ValueError, match="rows="):
        v.run_from(two, 1, two.resid[1].repeat(2, 1, 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m"])
def test_partial_forward_on_the_real_models(name):
    """Gemma 3 270M beyond its 512-token sliding window, and SmolLM2 (Llama family)."""
    model = load_model(name, device="cpu")
    v = view(model)
    text = " ".join([LONG] * 24)  # about 600 tokens
    n = len(v.token_ids(text))
    assert n > 520
    _check_resid_change(model, text, v.n_layers // 2, n - 8, rtol=1e-4, atol=2e-4)
    _check_resid_change(model, LONG, 3, 7, rtol=1e-4, atol=2e-4)


def test_unembed_pads_few_rows_and_gives_the_bridges_logits(tiny):
    """View.unembed pads rows to a multiple of forward.ROW_MULTIPLE (a speed matter) and drops the
    padding: every shape gives the bridge's own logits, and gradients reach every input row."""
    v = view(tiny)
    assert [forward.row_padding(n) for n in (1, 2, 3, 4, 5, 7, 8, 9)] == [0, 2, 1, 0, 3, 1, 0, 3]
    for shape in [(1, 1), (3, 1), (7, 1), (2, 3), (5,)]:
        normed = torch.randn(*shape, v.d_model, requires_grad=True)
        logits = v.unembed(normed)
        assert logits.shape == (*shape, v.d_vocab)
        torch.testing.assert_close(logits, tiny.unembed(normed.reshape(-1, 1, v.d_model)).reshape(logits.shape),
                                   rtol=1e-5, atol=1e-5)
        logits.sum().backward()
        assert normed.grad is not None and (normed.grad != 0).all(-1).all()
    normed = torch.randn(3, v.d_model)
    torch.testing.assert_close(forward.log_normalizer(v, normed)[0], v.unembed(normed).logsumexp(-1),
                               rtol=1e-5, atol=1e-5)


def test_own_modules_run_the_wrapped_modules_and_the_bridges_come_back(tiny):
    """``forward.own_modules`` (generation's): the Hugging Face model without a bridge component gives
    the bridge's logits; on exit, an error included, every bridge is back where it was."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    v = view(tiny)
    ids = v.batch([LONG]).ids
    tree = [(name, type(m)) for name, m in tiny.original_model.named_modules()]
    with torch.no_grad(), forward.own_modules(v) as hf:
        assert not any(isinstance(m, GeneralizedComponent) for m in hf.modules())
        own = hf(ids).logits
    torch.testing.assert_close(own, tiny(ids), rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="inside"), forward.own_modules(v):
        raise RuntimeError("inside")
    assert [(name, type(m)) for name, m in tiny.original_model.named_modules()] == tree


def test_decoding_through_the_cache_equals_the_full_forward_of_the_prefix(tiny):
    """``View.decoding``: a left-padded batch, then tokens one step at a time through one key-value cache,
    gives at every step the logits a full forward pass over each row's whole prefix gives (LONG passes
    tiny-gemma3's sliding window)."""
    v = view(tiny)
    rows = [v.token_ids(LONG), v.token_ids(SHORT)]
    width = max(map(len, rows))
    ids = torch.tensor([[v.pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    new = torch.tensor([[5, 9], [17, 3], [2, 2]])  # three steps, one token per row each
    with v.decoding() as step:
        got = [step(ids, mask, positions)]
        for token in new:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            got.append(step(token[:, None], mask, positions))
    for i, r in enumerate(rows):
        for k in range(len(new) + 1):
            prefix = r + new[:k, i].tolist()
            full = v.logits_at(v.batch([prefix]).ids, [len(prefix) - 1])[0]
            torch.testing.assert_close(got[k][i], full, rtol=1e-4, atol=1e-4)
