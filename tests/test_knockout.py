"""Attention knockout and attribute extraction (Geva et al. 2023): exact properties on tiny random models,
a subject knockout's drop on the default model."""

from __future__ import annotations

import pytest
import torch

from factlens.core.models import load_model, view
from factlens.core.view import SubjectNotFoundError, TokenSpan
from factlens.locating.knockout import (
    ExtractionSettings,
    Knockout,
    KnockoutSettings,
    attribute_extraction,
    band_change,
    drop_depth,
    knock_out,
    knockout,
    knockout_hooks,
    knockout_window,
    mean_relative_change,
    source_positions,
)
from factlens.locating.tracing import window_layers

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "Eiffel Tower"
# longer than tiny-gemma3's sliding window (16 tokens): its sliding layers mask the earliest keys
LONG = "The Eiffel Tower, a wrought iron lattice tower built for the fair of 1889, is located in the city of"


pytestmark = pytest.mark.usefixtures("one_thread")  # the conftest's: tiny models on one thread


def _blocked(n_rows: int, n_layers: int, n_tokens: int, layers, keys) -> torch.Tensor:
    blocked = torch.zeros(n_rows, n_layers, n_tokens, dtype=torch.bool)
    for l in layers:
        blocked[:, l, keys] = True
    return blocked


def test_knocking_out_no_edge_changes_nothing(tiny):
    v = view(tiny)
    ids = v.batch([PROMPT]).ids
    T = ids.shape[1]
    with torch.no_grad():
        plain = v.logits_at(ids, [T - 1])
        hooks = knockout_hooks(v, _blocked(1, v.n_layers, T, [], []), T - 1)
        assert len(hooks) == v.n_layers  # installed at every layer, blocking nothing
        assert torch.equal(v.logits_at(ids, [T - 1], fwd_hooks=hooks), plain)


def test_cutting_every_earlier_edge_leaves_the_last_position_alone(tiny):
    """With every edge from the last position to positions 0..n-2 cut at every layer, the last position
    attends to itself only: two prompts that differ only before it give the same prediction."""
    v = view(tiny)
    first, second = v.batch([PROMPT, "A small red house stood on the hill of"]).ids.split(1)
    n = min(first.shape[1], second.shape[1])
    first, second = first[:, -n:].clone(), second[:, -n:].clone()
    first[0, 0] = second[0, 0] = v.bos[0]
    second[0, -1] = first[0, -1]
    assert not torch.equal(first, second)
    cut = knockout_hooks(v, _blocked(1, v.n_layers, n, range(v.n_layers), range(n - 1)), n - 1)
    with torch.no_grad():
        assert not torch.allclose(v.logits_at(first, [n - 1]), v.logits_at(second, [n - 1]))
        torch.testing.assert_close(v.logits_at(first, [n - 1], fwd_hooks=cut),
                                   v.logits_at(second, [n - 1], fwd_hooks=cut), rtol=0, atol=1e-6)


@pytest.mark.parametrize("prompt", [PROMPT, LONG])
def test_the_hook_blocks_exactly_the_named_edges(tiny, prompt):
    """At a knocked layer the blocked sources get zero weight from the last query and the other keys keep
    their weights renormalized (a softmax over fewer keys), each row summing to 1; the layers below and
    every other query are untouched (no earlier position attends to the last one)."""
    v = view(tiny)
    ids = v.batch([prompt]).ids
    T, L = ids.shape[1], v.n_layers
    span = list(v.subject_span(prompt, SUBJECT))
    names = [v.attn_pattern_hook(l) for l in range(L)]
    with torch.no_grad():
        before = v.capture(ids, names)
        middle = v.capture(ids, names, fwd_hooks=knockout_hooks(v, _blocked(1, L, T, [1], span), T - 1))
        every = v.capture(ids, names, fwd_hooks=knockout_hooks(v, _blocked(1, L, T, range(L), span), T - 1))
    kept = [j for j in range(T) if j not in span]
    for l in range(L):
        old = before[names[l]][0]  # [heads, query, key]: one row per query head (Gemma's grouped keys repeated)
        assert old.shape == (tiny.cfg.n_heads, T, T)
        for after in (middle, every):
            new = after[names[l]][0]
            torch.testing.assert_close(new.sum(-1), torch.ones_like(new.sum(-1)))
            torch.testing.assert_close(new[:, :-1], old[:, :-1], rtol=0, atol=0)
        assert (every[names[l]][0][:, -1, span] == 0).all()
    torch.testing.assert_close(middle[names[0]][0], before[names[0]][0], rtol=0, atol=0)
    knocked, old = middle[names[1]][0][:, -1], before[names[1]][0][:, -1]
    assert (knocked[:, span] == 0).all()
    torch.testing.assert_close(knocked[:, kept], old[:, kept] / old[:, kept].sum(-1, keepdim=True),
                               rtol=1e-5, atol=1e-7)
    if prompt == LONG and v.gated:  # Gemma's sliding layers (0 and 1, window 16) mask the earliest keys
        assert T > 16 and (knocked[:, :T - 16] == 0).all() and (old[:, :T - 16] == 0).all()


def test_a_query_left_without_keys_is_an_error(tiny):
    v = view(tiny)
    ids = v.batch([PROMPT]).ids
    T = ids.shape[1]
    with pytest.raises(ValueError, match="every key"):
        v.logits_at(ids, [T - 1], fwd_hooks=knockout_hooks(v, _blocked(1, v.n_layers, T, [1], range(T)), T - 1))
    with pytest.raises(ValueError, match="blocked must be"):
        knockout_hooks(v, torch.zeros(1, v.n_layers + 1, T, dtype=torch.bool), T - 1)


def test_source_sets_and_window():
    assert source_positions(TokenSpan(2, 4), 7) == {"subject": [2, 3], "non-subject": [1, 4, 5], "last": [6]}
    assert source_positions(TokenSpan(0, 2), 4, first=0)["non-subject"] == [2]
    with pytest.raises(ValueError, match="go on after the subject"):
        source_positions(TokenSpan(2, 5), 5)
    assert knockout_window(48) == 9 and knockout_window(18) == 3 and knockout_window(28) == 5
    assert knockout_window(2) == 1
    with pytest.raises(ValueError, match="sources"):
        KnockoutSettings(sources=("object",))
    with pytest.raises(ValueError, match="window"):
        KnockoutSettings(window=0)


def test_knockout_rows_are_the_single_interventions(tiny):
    """Each (source set, layer) row of the batched knockout is the knockout run alone."""
    v = view(tiny)
    settings = KnockoutSettings(window=2)
    found = knockout(tiny, PROMPT, SUBJECT, settings)
    ids = v.batch([PROMPT]).ids
    T, L = ids.shape[1], v.n_layers
    assert found.window == 2 and set(found.probs) == {"subject", "non-subject", "last"}
    assert found.positions["subject"] == list(v.subject_span(PROMPT, SUBJECT))
    assert found.positions["non-subject"][0] == 1  # the BOS token is never knocked out
    with torch.no_grad():
        base = v.logits_at(ids, [T - 1]).softmax(-1)[0]
        assert found.answer_id == int(base.argmax())
        assert found.base_prob == pytest.approx(float(base.max()), rel=1e-5)
        for source in found.probs:
            for layer in range(L):
                blocked = _blocked(1, L, T, window_layers(layer, 2, L), found.positions[source])
                alone = v.logits_at(ids, [T - 1], fwd_hooks=knockout_hooks(v, blocked, T - 1)).softmax(-1)[0]
                assert float(found.probs[source][layer]) == pytest.approx(float(alone[found.answer_id]), rel=1e-5)
    change = found.relative_change["subject"]
    torch.testing.assert_close(change, (found.probs["subject"] - found.base_prob) / found.base_prob)
    averaged = mean_relative_change([found, found])
    torch.testing.assert_close(averaged["last"], found.relative_change["last"])
    with pytest.raises(SubjectNotFoundError):
        knockout(tiny, PROMPT, "Louvre")


def test_a_knockout_of_chosen_layers_is_the_hooks_run_by_hand(tiny):
    """knock_out cuts the edges in exactly the chosen layers: its probability is the hooked run's, its answer the
    unhooked run's top token; a window of the batched knockout is the same intervention."""
    v = view(tiny)
    ids = v.batch([PROMPT]).ids
    T, L = ids.shape[1], v.n_layers
    positions = source_positions(v.subject_span(PROMPT, SUBJECT), T, len(v.bos))["subject"]
    found = knock_out(tiny, PROMPT, SUBJECT, "subject", [1, 0], k=3)
    with torch.no_grad():
        base = v.logits_at(ids, [T - 1]).softmax(-1)[0]
        cut = v.logits_at(ids, [T - 1], fwd_hooks=knockout_hooks(v, _blocked(1, L, T, [0, 1], positions), T - 1))
        cut = cut.softmax(-1)[0]
    assert found.layers == (0, 1) and found.answer == v.tokenizer.decode([int(base.argmax())])
    assert found.base_prob == pytest.approx(float(base.max()), rel=1e-5)
    assert found.prob == pytest.approx(float(cut[int(base.argmax())]), rel=1e-5)
    assert [p for _, p in found.top_after] == pytest.approx(cut.topk(3).values.tolist(), rel=1e-4)
    assert found.relative_change == pytest.approx((found.prob - found.base_prob) / found.base_prob)
    window = knockout(tiny, PROMPT, SUBJECT, KnockoutSettings(window=2, sources=("subject",)))
    assert window.probs["subject"][1] == pytest.approx(knock_out(tiny, PROMPT, SUBJECT, "subject", [0, 1]).prob,
                                                       rel=1e-5)  # the window of 2 around layer 1: layers 0 and 1
    for bad, message in ((("object", [0]), "source must be"), (("subject", []), "at least one layer")):
        with pytest.raises(ValueError, match=message):
            knock_out(tiny, PROMPT, SUBJECT, *bad)
    with pytest.raises(IndexError):
        knock_out(tiny, PROMPT, SUBJECT, "subject", [L])


def _made_up(changes: dict[str, list[float]]) -> Knockout:
    """A knockout whose relative changes are ``changes`` (base probability 0.5)."""
    probs = {s: 0.5 * (1 + torch.tensor(c, dtype=torch.float64)) for s, c in changes.items()}
    return Knockout(prompt="p", subject="s", tokens=[], subject_span=TokenSpan(1, 2), answer="a", answer_id=0,
                    base_prob=0.5, window=1, positions={}, probs=probs)


def test_band_change_and_drop_depth_by_hand():
    first = _made_up({"subject": [0.0, -0.2, -0.6, 0.0, 0.1], "non-subject": [-0.4, 0.0, 0.0, 0.0, 0.0]})
    second = _made_up({"subject": [0.0, 0.0, 0.0, 0.0, -1.0], "non-subject": [0.0, 0.0, 0.0, 0.0, 0.0]})
    torch.testing.assert_close(band_change([first, second], "subject", range(1, 3)),
                               torch.tensor([-0.4, 0.0], dtype=torch.float64))
    # drops 0.2 at depth 1/4 and 0.6 at depth 2/4 (the rise at layer 4 is no drop): (0.05 + 0.3) / 0.8
    assert drop_depth(first, "subject") == pytest.approx(0.4375)
    assert drop_depth(first, "non-subject") == pytest.approx(0.0)
    assert drop_depth(second, "subject") == pytest.approx(1.0)
    assert drop_depth(second, "non-subject") != drop_depth(second, "non-subject")  # NaN: nothing drops
    with pytest.raises(ValueError, match="no layers"):
        band_change([first], "subject", [])


@pytest.mark.parametrize("final_norm", [False, True])
def test_extraction_is_the_hand_computation(tiny, final_norm):
    """Each sublayer's output at the last position, read from TransformerLens' own cache, times W_U (+ b_U),
    through the final norm when asked: its top token, and an event where that is the model's prediction."""
    prompts = [PROMPT, "The Louvre is in the city of", "Mount Everest is a"]
    found = attribute_extraction(tiny, prompts, ExtractionSettings(final_norm=final_norm, batch_size=2))
    L = view(tiny).n_layers
    for f, prompt in enumerate(prompts):
        ids = view(tiny).batch([prompt]).ids
        with torch.no_grad():
            logits, cache = tiny.run_with_cache(ids)
            assert int(found.answers[f]) == int(logits[0, -1].argmax())
            for sublayer, hook in (("attn", "hook_attn_out"), ("mlp", "hook_mlp_out")):
                for l in range(L):
                    x = cache[f"blocks.{l}.{hook}"][0, -1]
                    if final_norm:
                        x = tiny.ln_final(x[None, None])[0, 0]
                    assert int(found.tops[sublayer][f, l]) == int((x @ tiny.unembed.W_U + tiny.unembed.b_U).argmax())
    hits = found.hits
    assert hits["attn"].shape == (3, L)
    assert torch.equal(hits["mlp"], found.tops["mlp"] == found.answers[:, None])
    torch.testing.assert_close(found.rate("mlp"), hits["mlp"].double().mean(0))
    assert found.any_layer_rate("attn") == float(hits["attn"].any(1).double().mean())
    assert found.any_layer_rate("attn", [L - 1]) == float(found.rate("attn")[L - 1])
    with pytest.raises(ValueError, match="sublayer"):
        found.rate("mhsa")


def test_an_extraction_event_by_construction(tiny):
    """When the last MLP writes a large multiple of one token's unembedding at the last position, the
    prediction follows it, and that MLP's output, through the final norm, is an extraction event: the rate
    at that layer is 1 (a random tiny model has none)."""
    v = view(tiny)
    L = v.n_layers
    before = attribute_extraction(tiny, [PROMPT], ExtractionSettings(final_norm=True))
    direction = tiny.unembed.W_U[:, 7].detach()
    saved = v.mlp_out_weight(L - 1).detach().clone()
    with torch.no_grad():
        coefficients = v.capture(v.batch([PROMPT]).ids, [v.key_hook(L - 1)])[v.key_hook(L - 1)][0, -1]
    try:
        with torch.no_grad():  # every memory writes the direction, signed by its coefficient: Σ_i |m_i| · 1e3 · d
            v.set_mlp_out_weight(L - 1, torch.sign(coefficients)[:, None] * direction[None] * 1e3)
        after = attribute_extraction(tiny, [PROMPT], ExtractionSettings(final_norm=True))
    finally:
        with torch.no_grad():
            v.set_mlp_out_weight(L - 1, saved)
    assert before.rate("mlp")[L - 1] == 0
    assert after.rate("mlp")[L - 1] == 1
    assert torch.equal(after.tops["attn"], before.tops["attn"])  # the attention below and at L-1 is unchanged


@pytest.mark.slow
def test_subject_knockout_drops_the_answer_on_the_default_model():
    model = load_model("gemma-3-270m")
    found = knockout(model, PROMPT, "The Eiffel Tower")
    change = found.relative_change
    print(f"{found.answer!r} p = {found.base_prob:.3f}, window {found.window}")
    for source, values in change.items():
        print(source, " ".join(f"{100 * c:+.0f}%" for c in values.tolist()))
    assert found.answer.strip() == "Paris"
    assert float(change["subject"].min()) < -0.2
