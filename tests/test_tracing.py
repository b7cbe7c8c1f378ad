"""Causal tracing: exact properties on tiny random models, the paper's picture on the default model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from factlens.core.models import load_model, view
from factlens.core.view import SubjectNotFoundError, TokenSpan
from factlens.locating.average_effects import (
    average_indirect_effects,
    band_difference,
    fact_effects,
    layer_thirds,
    peak_depth,
    peak_effect,
    scaled_layer,
)
from factlens.locating.tracing import (
    TOKEN_GROUPS,
    Trace,
    TraceSettings,
    corruption,
    default_window,
    embedding_std,
    token_groups,
    trace,
    trace_facts,
    trace_straightforward,
    window_layers,
)

PROMPT, SUBJECT = "The Eiffel Tower is in Paris", "Eiffel Tower"


pytestmark = pytest.mark.usefixtures("one_thread")  # the conftest's: tiny models on one thread


@pytest.fixture(scope="module")
def gemma_tiny():
    return load_model("tiny-gemma3", device="cpu")


def _delta(model, prompt=PROMPT, subject=SUBJECT, samples=3, seed=1):
    # a large noise, so that the corrupted run differs clearly from the clean one
    return corruption(model, prompt, subject, TraceSettings(samples=samples, noise=3.0, std=2.0, seed=seed))


@pytest.mark.parametrize("kind,sever,window,batch_size", [
    ("hidden", None, 2, 7), ("mlp", None, 2, 7), ("attn", None, 3, 256), ("hidden", "mlp", 2, 7),
    ("hidden", "attn", 2, 1), ("mlp", None, 1, 1)])
def test_batched_trace_agrees_with_the_straightforward_loop(tiny, kind, sever, window, batch_size):
    """Every restoration re-run from its first changed block on the later positions only, the
    restorations of a token batched across layers (and cut into batches of ``batch_size`` rows)."""
    delta = _delta(tiny)
    settings = TraceSettings(kind, window=window, sever=sever)
    fast = trace(tiny, PROMPT, SUBJECT, settings, delta=delta, batch_size=batch_size)
    slow = trace_straightforward(tiny, PROMPT, SUBJECT, settings, delta=delta)
    assert fast.answer_id == slow.answer_id
    assert fast.clean_prob == pytest.approx(slow.clean_prob, rel=1e-4)
    assert fast.corrupted_prob == pytest.approx(slow.corrupted_prob, rel=1e-4)
    # a random tiny model's probabilities are small: compare at a tolerance far below the effects
    torch.testing.assert_close(fast.scores, slow.scores, rtol=1e-5, atol=2e-8)
    assert slow.indirect_effect.abs().max() > 50 * 2e-8


def test_traced_positions_only(tiny):
    delta = _delta(tiny)
    mlp = TraceSettings("mlp", window=2)
    full = trace(tiny, PROMPT, SUBJECT, mlp, delta=delta)
    some = trace(tiny, PROMPT, SUBJECT, mlp, delta=delta, positions=[2, -1])
    n = full.scores.shape[0]
    torch.testing.assert_close(some.scores[[2, n - 1]], full.scores[[2, n - 1]], rtol=1e-5, atol=1e-8)
    assert torch.isnan(some.scores[[0, 1, 3]]).all()
    named = trace(tiny, PROMPT, SUBJECT, mlp, delta=delta, positions=["last subject token", "last token"])
    rows = [named.subject_span.last, n - 1]
    torch.testing.assert_close(named.scores[rows], full.scores[rows], rtol=1e-5, atol=1e-8)
    assert int((~torch.isnan(named.scores[:, 0])).sum()) == 2
    with pytest.raises(ValueError, match="unknown token groups"):
        trace(tiny, PROMPT, SUBJECT, delta=delta, positions=["subject"])
    with pytest.raises(TypeError, match="must be a list"):
        trace(tiny, PROMPT, SUBJECT, delta=delta, positions="last token")


def test_trace_facts_maps_the_first_facts_and_reads_the_rest_at_their_tokens(tiny):
    facts = [SimpleNamespace(subject=SUBJECT, prompt=PROMPT),
             SimpleNamespace(subject="Dante", prompt="Dante was born in Florence")] * 2
    # rows_per_pass=30: the facts' restorations share some passes over the unembedding, not all
    settings = TraceSettings("hidden", samples=2, std=1.0)
    traces = trace_facts(tiny, facts, settings, full_maps=1, positions=["last token"], rows_per_pass=30,
                         progress=False)
    assert not torch.isnan(traces[0].scores).any()
    for t in traces[1:]:
        assert (~torch.isnan(t.scores[:, 0])).nonzero().flatten().tolist() == [t.scores.shape[0] - 1]
    for k in (0, 3):  # fact k: seed + k
        alone = trace(tiny, facts[k].prompt, facts[k].subject, TraceSettings(samples=2, std=1.0, seed=k),
                      positions=None if k == 0 else ["last token"])
        torch.testing.assert_close(traces[k].scores, alone.scores, equal_nan=True, rtol=1e-5, atol=1e-8)
        assert traces[k].answer_id == alone.answer_id
        assert traces[k].corrupted_prob == pytest.approx(alone.corrupted_prob, rel=1e-5)
        assert traces[k].settings == alone.settings == {**settings.for_depth(view(tiny).n_layers).record(), "seed": k}


def test_settings_are_a_checked_value_that_a_trace_records(tiny):
    settings = TraceSettings("mlp", samples=2, std=1.0, swap_subjects=["Rome"])
    assert settings.swap_subjects == ("Rome",) and hash(settings) == hash(TraceSettings("mlp", samples=2, std=1.0,
                                                                                        swap_subjects=("Rome",)))
    assert TraceSettings().window is None and TraceSettings().for_depth(48).window == 10  # the paper's
    assert settings.for_depth(18) == TraceSettings("mlp", window=4, samples=2, std=1.0, swap_subjects=["Rome"])
    t = trace(tiny, PROMPT, SUBJECT, settings, positions=[-1])
    assert t.kind == "mlp"
    assert t.settings == dict(samples=2, noise=3.0, noise_kind="gaussian", window=default_window(view(tiny).n_layers),
                              sever=None, seed=0)
    given = trace(tiny, PROMPT, SUBJECT, settings, delta=_delta(tiny, samples=3), positions=[-1])
    assert given.settings["samples"] == 3  # the rows of the corruption given


def test_the_window_scales_with_depth():
    assert default_window(48) == 10  # GPT-2 XL: the paper's own window
    assert default_window(18) == 4  # Gemma 3 270M: round(3.75)
    assert default_window(30) == 6  # SmolLM2
    assert default_window(12) == 3  # GPT-2: 2.5 rounds up
    assert default_window(3) == 1  # at least one layer


def test_zero_noise_gives_zero_indirect_effects(tiny):
    t = trace(tiny, PROMPT, SUBJECT, TraceSettings("hidden", noise=0.0, std=1.0, samples=2))
    assert t.corrupted_prob == pytest.approx(t.clean_prob, rel=1e-5)
    assert t.total_effect == pytest.approx(0.0, abs=1e-6)
    assert t.indirect_effect.abs().max() < 1e-6


def test_restoring_every_corrupted_state_of_a_layer_gives_the_clean_probability(tiny):
    v = view(tiny)
    prompt, subject = "The capital of France is Paris", "Paris"  # a one-token subject, last in the prompt
    span = v.subject_span(prompt, subject)
    assert len(span) == 1 and span.stop == len(v.token_ids(prompt))
    t = trace(tiny, prompt, subject, TraceSettings("hidden"), delta=_delta(tiny, prompt, subject))
    # the subject's state is then the only corrupted state of its layer
    torch.testing.assert_close(t.scores[span.last], torch.full_like(t.scores[span.last], t.clean_prob),
                               rtol=1e-4, atol=1e-7)
    assert abs(t.total_effect) > 1e-4


def test_restoring_the_last_state_gives_the_clean_probability(tiny):
    t = trace(tiny, PROMPT, SUBJECT, TraceSettings("hidden"), delta=_delta(tiny))
    assert float(t.scores[-1, -1]) == pytest.approx(t.clean_prob, rel=1e-4)


def test_a_restoration_before_the_subject_changes_nothing(tiny):
    prompt, subject = "Rome is the capital of Italy", "capital of Italy"
    span = view(tiny).subject_span(prompt, subject)
    assert span.start >= 2
    delta = _delta(tiny, prompt, subject)
    slow = trace_straightforward(tiny, prompt, subject, TraceSettings("mlp", window=2), delta=delta)
    fast = trace(tiny, prompt, subject, TraceSettings("mlp", window=2), delta=delta)
    before = slow.scores[: span.start]
    torch.testing.assert_close(before, torch.full_like(before, slow.corrupted_prob), rtol=1e-5, atol=1e-8)
    assert (fast.scores[: span.start] == fast.corrupted_prob).all()


def test_a_subject_not_in_the_prompt_is_a_clear_error(tiny):
    with pytest.raises(SubjectNotFoundError, match="Space Needle"):
        trace(tiny, PROMPT, "Space Needle", TraceSettings(std=1.0, samples=1))


def test_bad_options_are_clear_errors(tiny):
    with pytest.raises(ValueError, match="kind must be one of"):
        TraceSettings("resid")
    with pytest.raises(ValueError, match="noise_kind must be one of"):
        TraceSettings(noise_kind="pink")
    with pytest.raises(ValueError, match="kind='hidden'"):
        TraceSettings("mlp", sever="attn")
    with pytest.raises(ValueError, match="sever must be"):
        TraceSettings(sever="hidden")
    with pytest.raises(ValueError, match="window must be at least 1"):
        TraceSettings("mlp", window=0)
    with pytest.raises(ValueError, match="samples must be at least 1"):
        TraceSettings(samples=0)
    with pytest.raises(TypeError, match="list of subjects"):
        TraceSettings(noise_kind="swap", swap_subjects="Rome")
    with pytest.raises(ValueError, match="as many tokens"):
        corruption(tiny, PROMPT, SUBJECT, TraceSettings(noise_kind="swap", swap_subjects=["Rome"]))


def test_the_seed_makes_a_trace_repeatable(gemma_tiny):
    a = trace(gemma_tiny, PROMPT, SUBJECT, TraceSettings(std=2.0, samples=2, seed=5))
    b = trace(gemma_tiny, PROMPT, SUBJECT, TraceSettings(std=2.0, samples=2, seed=5))
    c = trace(gemma_tiny, PROMPT, SUBJECT, TraceSettings(std=2.0, samples=2, seed=6))
    assert torch.equal(a.scores, b.scores)
    assert not torch.equal(a.scores, c.scores)


@pytest.mark.parametrize("noise_kind", ["gaussian", "uniform", "student-t"])
def test_noise_kinds_have_the_requested_standard_deviation(gemma_tiny, noise_kind):
    delta = corruption(gemma_tiny, PROMPT, SUBJECT,
                       TraceSettings(samples=4000, noise=3.0, std=0.5, noise_kind=noise_kind))
    assert delta.shape[0] == 4000 and delta.shape[2] == 64
    assert float(delta.std()) == pytest.approx(1.5, rel=0.03)


def test_swap_puts_another_subject_in_place(gemma_tiny):
    v = view(gemma_tiny)
    prompt, subject = "Dante was born in Florence", "Florence"
    delta = corruption(gemma_tiny, prompt, subject, TraceSettings(samples=2, noise_kind="swap",
                                                                   swap_subjects=["Seattle"]))
    ids = torch.tensor([v.token_ids(prompt)])
    span = v.subject_span(prompt, subject)
    emb = gemma_tiny.embed.original_component
    swapped = torch.tensor(v.token_ids("Dante was born in Seattle"))[span.start:span.stop]
    expected = (emb.weight[swapped] - emb.weight[ids[0, span.start:span.stop]]) * emb.embed_scale
    torch.testing.assert_close(delta[0], expected, rtol=1e-5, atol=1e-5)


def test_embedding_std_is_measured_where_layer_0_reads_it(gemma_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTLENS_CACHE_DIR", str(tmp_path))
    v = view(gemma_tiny)
    texts = ["Eiffel Tower", "Space Needle", "Dante"]
    emb = gemma_tiny.embed.original_component  # Gemma scales its table by sqrt(d_model) = 8
    ids = torch.tensor([i for t in texts for i in v.token_ids(t)[1:]])
    expected = float((emb.weight[ids] * emb.embed_scale).detach().double().std())
    assert float(emb.embed_scale) == pytest.approx(8.0)
    assert embedding_std(gemma_tiny, texts) == pytest.approx(expected, rel=1e-6)
    assert embedding_std(gemma_tiny, texts) == pytest.approx(expected, rel=1e-6)  # from the cache
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1


def test_window_layers_follow_the_papers_code():
    assert list(window_layers(0, 10, 48)) == [0, 1, 2, 3, 4]
    assert list(window_layers(20, 10, 48)) == list(range(15, 25))
    assert list(window_layers(47, 10, 48)) == list(range(42, 48))
    assert list(window_layers(5, 1, 18)) == [5]


def test_token_groups_of_a_prompt():
    groups = token_groups(TokenSpan(1, 4), 9)
    assert groups == {"first subject token": [1], "middle subject tokens": [2], "last subject token": [3],
                      "first subsequent token": [4], "further tokens": [5, 6, 7], "last token": [8]}
    assert token_groups(TokenSpan(2, 3), 4)["middle subject tokens"] == []
    assert token_groups(TokenSpan(2, 3), 4)["first subsequent token"] == []  # it is the last token


def _fake(scores, span, corrupted=0.1, clean=0.5):
    return Trace(prompt="", subject="", kind="hidden", tokens=[], subject_span=span, answer="", answer_id=0,
                 clean_prob=clean, corrupted_prob=corrupted, scores=torch.tensor(scores), settings={})


def test_fact_effects_and_peaks_by_hand():
    a = _fake([[.1, .1, .1], [.2, .3, .1], [.4, .1, .1], [.6, .2, .1], [.1, .5, .1]], TokenSpan(1, 4))
    b = _fake([[.1, .1, .1], [.3, .4, .2], [.1, .1, .1], [.2, .4, .1]], TokenSpan(1, 2), corrupted=0.1)
    rows = fact_effects([a, b], "last subject token")
    torch.testing.assert_close(rows, torch.tensor([[.5, .1, 0.], [.2, .3, .1]], dtype=torch.double))
    assert peak_effect(rows) == pytest.approx(0.35)  # layer 0: (.5 + .2) / 2
    assert peak_depth(rows) == pytest.approx(0.0)
    assert peak_depth(torch.tensor([[0., 0., 1.]])) == pytest.approx(1.0)
    assert fact_effects([a, b], "middle subject tokens").shape == (1, 3)
    with pytest.raises(ValueError, match="unknown token group"):
        fact_effects([a], "subject")


def test_average_indirect_effects_by_hand():
    # two facts, 2 layers; fact a: 5 tokens, subject 1..3; fact b: 4 tokens, subject at 1 only
    a = _fake([[.1, .1], [.2, .3], [.4, .1], [.6, .2], [.1, .5]], TokenSpan(1, 4))
    b = _fake([[.1, .1], [.3, .1], [.1, .1], [.2, .4]], TokenSpan(1, 2), corrupted=0.1, clean=0.3)
    aie = average_indirect_effects([a, b])
    g = {name: i for i, name in enumerate(TOKEN_GROUPS)}
    torch.testing.assert_close(aie.mean[g["last subject token"]], torch.tensor([(.5 + .2) / 2, (.1 + 0) / 2]))
    torch.testing.assert_close(aie.mean[g["middle subject tokens"]], torch.tensor([.3, 0.0]))  # fact a only
    assert aie.count == [2, 1, 2, 1, 0, 2]  # b: the subsequent token is the last token
    assert torch.isnan(aie.mean[g["further tokens"]]).all()
    half = 1.96 * torch.tensor([.5, .2]).std() / math.sqrt(2)
    last = g["last subject token"]
    assert float(aie.high[last, 0] - aie.mean[last, 0]) == pytest.approx(float(half), rel=1e-5)
    assert aie.total_effect == pytest.approx(0.3)
    assert aie.peak("last token") == (1, pytest.approx(0.35))


@pytest.mark.slow
def test_gemma_recalls_the_space_needle_through_the_last_subject_token():
    model = load_model()
    v = view(model)
    std = embedding_std(model)
    table_std = float(model.embed.original_component.weight.detach().std())
    assert std > 10 * table_std  # Gemma multiplies its table by sqrt(640) before layer 0
    prompt, subject = "The Space Needle is located in the city of", "The Space Needle"
    t = trace(model, prompt, subject, TraceSettings("hidden", samples=3),
              positions=[v.subject_span(prompt, subject).last, -1])
    assert t.answer.strip() == "Seattle"
    assert t.corrupted_prob < t.clean_prob / 5  # the noise does hide the subject
    ie = t.indirect_effect
    last_subject = t.subject_span.last
    assert v.str_tokens("The Space Needle")[last_subject].strip() == "Needle"
    # the early site: restoring the last subject token in the lower half recovers much of the effect
    assert float(ie[last_subject, : v.n_layers // 2].max()) > 0.3 * t.total_effect
    assert torch.isnan(t.scores[1]).all()  # a token not asked for
    # the late site: the last token's state at the top carries the answer
    assert float(ie[-1, -1]) == pytest.approx(t.total_effect, rel=1e-3)


@pytest.mark.slow
def test_the_fast_trace_equals_the_straightforward_loop_on_the_default_model():
    model = load_model()
    prompt, subject = "Dante was born in", "Dante"
    delta = corruption(model, prompt, subject, TraceSettings(samples=2, seed=3))
    for kind in ("hidden", "attn"):
        fast = trace(model, prompt, subject, TraceSettings(kind), delta=delta)
        slow = trace_straightforward(model, prompt, subject, TraceSettings(kind), delta=delta)
        assert fast.answer_id == slow.answer_id
        torch.testing.assert_close(fast.scores, slow.scores, rtol=1e-4, atol=2e-6)
        assert slow.indirect_effect.abs().max() > 0.01


def test_sites_and_bands_fixed_in_advance():
    assert scaled_layer(15, 48, 18) == 5 and scaled_layer(15, 48, 48) == 15 and scaled_layer(47, 48, 12) == 11
    assert layer_thirds(18) == (list(range(6)), list(range(6, 12)), list(range(12, 18)))
    first, middle, last = layer_thirds(7)
    assert first + middle + last == list(range(7)) and middle == [3, 4]
    effects = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.2, 0.2, 0.6, 0.2]])
    assert band_difference(effects, [1, 2], [0, 3]).tolist() == pytest.approx([1.0, 0.2])
