"""Attribution patching: the first-order estimate of causal tracing, against the trace itself."""

from __future__ import annotations

import pytest
import torch

from factlens.core.models import load_model, view
from factlens.core.view import SubjectNotFoundError
from factlens.locating.attribution import agreement, attribution_trace, compare, window_sums
from factlens.locating.tracing import TraceSettings, corruption, restored_layers, trace

PROMPT, SUBJECT = "The Eiffel Tower is in Paris", "Eiffel Tower"


pytestmark = pytest.mark.usefixtures("one_thread")  # the conftest's: tiny models on one thread


@pytest.fixture(scope="module")
def tiny64(tiny):
    """The same tiny model in float64, for the small-noise limit (the attention softmax stays float32)."""
    return load_model(view(tiny).name, device="cpu", dtype=torch.float64)


def _embedding_std(model) -> float:
    v = view(model)
    with torch.no_grad():
        return float(v.embeddings(v.batch([PROMPT]).ids)[0, len(v.bos):].std())


def _relative_error(model, settings: TraceSettings) -> float:
    delta = corruption(model, PROMPT, SUBJECT, settings)
    estimate = attribution_trace(model, PROMPT, SUBJECT, settings, delta=delta)
    real = trace(model, PROMPT, SUBJECT, settings, delta=delta)
    return float((estimate.indirect_effect - real.indirect_effect).abs().max() / real.indirect_effect.abs().max())


@pytest.mark.parametrize("kind", ["hidden", "mlp", "attn"])
def test_the_estimate_meets_the_trace_as_the_noise_shrinks(tiny64, kind):
    """First order: the error of IE~ against the real restoration effect is O(ν²) while IE is O(ν), so the
    relative error shrinks about as fast as the noise (ν: 0.3 then 0.03 embedding standard deviations;
    measured: 4 to 12 times smaller). Smaller noise reaches the float32 resolution of the trace's
    scores (P*[o] + IE, with IE a ten-thousandth of P*)."""
    std = _embedding_std(tiny64)
    errors = [_relative_error(tiny64, TraceSettings(kind, window=1, samples=3, noise=noise, std=std, seed=1))
              for noise in (0.3, 0.03)]
    print(kind, errors)
    assert errors[1] < errors[0] / 3
    assert errors[1] < 0.15


def test_a_window_sum_misses_the_paths_between_its_layers(tiny64):
    """Restoring two MLP outputs together cuts the path from the first through the second at the same token,
    which each single-layer gradient runs through: the window sum stays off the joint restoration even at
    a noise where the single-layer estimate is close (the module's docstring)."""
    std = _embedding_std(tiny64)
    single, window = [_relative_error(tiny64, TraceSettings("mlp", window=w, samples=3, noise=0.03, std=std, seed=1))
                      for w in (1, 2)]
    print(single, window)
    assert window > 3 * single


def test_a_window_is_the_sum_of_its_layers(tiny):
    """The estimate of an MLP window restoration is the sum of the single-layer estimates of its layers."""
    delta = corruption(tiny, PROMPT, SUBJECT, TraceSettings(samples=2, std=2.0, seed=3))
    L = view(tiny).n_layers
    for kind in ("mlp", "attn"):
        single = attribution_trace(tiny, PROMPT, SUBJECT, TraceSettings(kind, window=1), delta=delta).indirect_effect
        window = attribution_trace(tiny, PROMPT, SUBJECT, TraceSettings(kind, window=2), delta=delta).indirect_effect
        summed = torch.stack([single[:, restored_layers(kind, l, 2, L)].sum(1) for l in range(L)], 1)
        torch.testing.assert_close(window, summed, rtol=1e-5, atol=1e-9)
    terms = torch.arange(12.0).reshape(4, 3)
    torch.testing.assert_close(window_sums(terms, "mlp", 2), torch.stack([terms[:, 0], terms[:, :2].sum(1),
                                                                         terms[:, 1:].sum(1)], 1))
    assert torch.equal(window_sums(terms, "hidden", 2), terms)


@pytest.mark.parametrize("kind", ["hidden", "mlp"])
def test_the_map_has_the_traces_axes(tiny, kind):
    settings = TraceSettings(kind, window=2, samples=3, std=2.0, seed=1)
    delta = corruption(tiny, PROMPT, SUBJECT, settings)
    estimate = attribution_trace(tiny, PROMPT, SUBJECT, settings, delta=delta)
    real = trace(tiny, PROMPT, SUBJECT, settings, delta=delta)
    assert estimate.scores.shape == real.scores.shape == (len(real.tokens), view(tiny).n_layers)
    assert (estimate.tokens, estimate.subject_span, estimate.kind) == (real.tokens, real.subject_span, real.kind)
    assert (estimate.answer_id, estimate.answer) == (real.answer_id, real.answer)
    assert estimate.clean_prob == pytest.approx(real.clean_prob, rel=1e-4)
    assert estimate.corrupted_prob == pytest.approx(real.corrupted_prob, rel=1e-4)
    # before the subject nothing differs between the runs: both are exactly P*[o] there
    before = slice(0, real.subject_span.start)
    assert torch.equal(estimate.scores[before], torch.full_like(estimate.scores[before], estimate.corrupted_prob))
    assert estimate.settings["estimate"].startswith("attribution patching")
    assert {k: v for k, v in estimate.settings.items() if k != "estimate"} == real.settings
    found = agreement(estimate, real)
    assert -1 <= found.spearman <= 1 and found.sites > 0
    assert found.layer_gap == abs(found.estimate_peak[1] - found.trace_peak[1])


def test_repeatable_under_a_seed(tiny):
    settings = TraceSettings("hidden", samples=3, std=2.0, seed=7)
    first = attribution_trace(tiny, PROMPT, SUBJECT, settings)
    again = attribution_trace(tiny, PROMPT, SUBJECT, settings)
    other = attribution_trace(tiny, PROMPT, SUBJECT, TraceSettings("hidden", samples=3, std=2.0, seed=8))
    assert torch.equal(first.scores, again.scores)
    assert not torch.equal(first.scores, other.scores)


def test_a_subject_not_in_the_prompt_is_an_error(tiny):
    with pytest.raises(SubjectNotFoundError, match="does not occur"):
        attribution_trace(tiny, PROMPT, "Louvre", TraceSettings(samples=1, std=2.0))
    with pytest.raises(ValueError, match="sever"):
        attribution_trace(tiny, PROMPT, SUBJECT, TraceSettings(sever="mlp", samples=1, std=2.0))


def test_agreement_of_a_map_with_itself_and_its_mirror(tiny):
    settings = TraceSettings("hidden", samples=2, std=2.0, seed=1)
    real = trace(tiny, PROMPT, SUBJECT, settings)
    same = agreement(real, real)
    assert same.spearman == pytest.approx(1.0) and same.same_peak and same.layer_gap == 0
    mirror = type(real)(**{**real.__dict__, "scores": 2 * real.corrupted_prob - real.scores})
    assert agreement(mirror, real).spearman == pytest.approx(-1.0)
    other = trace(tiny, "The Louvre is in Paris", "Louvre", settings)
    with pytest.raises(ValueError, match="same prompt"):
        agreement(other, real)


def test_the_shortfall_is_read_at_the_traces_peak(tiny):
    found = compare(tiny, PROMPT, SUBJECT, TraceSettings("hidden", samples=2, std=2.0, seed=1))
    i, l = found.agreement.trace_peak
    assert found.shortfall == pytest.approx(float(found.trace.indirect_effect[i, l]
                                                  - found.estimate.indirect_effect[i, l]))


@pytest.mark.slow
def test_the_estimate_ranks_the_sites_as_the_trace_on_the_default_model():
    model = load_model("gemma-3-270m")
    found = compare(model, "The Eiffel Tower is located in the city of", "The Eiffel Tower",
                    TraceSettings("hidden", samples=10))
    a = found.agreement
    print(f"Spearman {a.spearman:.3f} over {a.sites} sites; peaks {a.estimate_peak} (estimate) and {a.trace_peak} "
          f"(trace); {found.estimate_seconds:.2f} s against {found.trace_seconds:.2f} s ({found.speedup:.1f}x)")
    assert found.trace.answer.strip() == "Paris"
    assert a.spearman > 0
