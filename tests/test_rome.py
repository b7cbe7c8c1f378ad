"""ROME (factlens.rome): exact properties on tiny random models, behaviour on the default model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from factlens import rome, second_moment
from factlens.models import SubjectNotFoundError, load_model, view

FAST = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=4, mom2_samples=300)
REQUEST = rome.EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")


@pytest.fixture(scope="module", params=["tiny-gemma3", "tiny-gpt2"])
def tiny(request):
    return load_model(request.param, device="cpu")


# --------------------------------------------------------------------------- eq. 2, by hand


def test_rank_one_update_writes_v_star_and_keeps_orthogonal_keys():
    gen = torch.Generator().manual_seed(0)
    d_out, d_in = 5, 8
    W = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    K = torch.randn(d_in, 50, generator=gen, dtype=torch.float64)
    C = K @ K.T / 50
    k, v = torch.randn(d_in, generator=gen, dtype=torch.float64), torch.randn(d_out, generator=gen, dtype=torch.float64)
    W_hat = rome.rank_one_update(W, C, k, v)
    torch.testing.assert_close(W_hat @ k, v)
    # a key orthogonal to C⁻¹k* is mapped as before
    u = torch.linalg.solve(C, k)
    other = torch.randn(d_in, generator=gen, dtype=torch.float64)
    other = other - (other @ u) / (u @ u) * u
    torch.testing.assert_close(W_hat @ other, W @ other)
    # the change has rank one
    assert torch.linalg.matrix_rank(W_hat - W).item() == 1


def test_rank_one_update_by_hand_with_identity_statistics():
    # W = 0, C = I, k* = e1 + e2, v* = (2, 4): Λ = v*/‖k*‖² = (1, 2), Ŵ = Λ k*ᵀ
    W = torch.zeros(2, 3)
    k = torch.tensor([1.0, 1.0, 0.0])
    W_hat = rome.rank_one_update(W, torch.eye(3), k, torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(W_hat, torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]]))


def test_rank_one_update_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes do not fit"):
        rome.rank_one_update(torch.zeros(2, 3), torch.eye(4), torch.ones(3), torch.ones(2))


# --------------------------------------------------------------------------- requests and errors


def test_request_validation_names_the_problem():
    # a prompt without the subject's slot: the subject would be absent from what the model reads
    with pytest.raises(ValueError, match="where the subject goes"):
        rome.EditRequest("The Eiffel Tower is in", "The Eiffel Tower", "Rome")
    with pytest.raises(ValueError, match="target is empty"):
        rome.EditRequest("{} is in", "The Eiffel Tower", "  ")
    with pytest.raises(ValueError, match="subject is empty"):
        rome.EditRequest("{} is in", "", "Rome")
    assert rome.EditRequest("{} is in", "Rome", "Italy").text == "Rome is in"


def test_clear_errors_before_any_change(tiny):
    v = view(tiny)
    before = v.mlp_out_weight(1).clone()
    with pytest.raises(IndexError, match="out of range"):
        rome.apply(tiny, REQUEST, hparams=FAST, layer=v.n_layers, stats=torch.eye(v.d_mlp))
    # the essence prompt of the KL term must hold the subject too
    with pytest.raises(SubjectNotFoundError, match="does not occur"):
        rome.apply(tiny, REQUEST, hparams=replace(FAST, essence_prompt="It is a"), stats=torch.eye(v.d_mlp))
    assert torch.equal(v.mlp_out_weight(1), before)


# --------------------------------------------------------------------------- apply / undo on tiny models


def test_edit_writes_v_star_at_the_averaged_key(tiny):
    """After the edit, the down projection's output averaged over the prefixed prompts is v*
    (W is linear, so the mean output is Ŵ k* + b with k* the mean key: eq. 2 through the model)."""
    v = view(tiny)
    with rome.edit(tiny, REQUEST, hparams=FAST, stats=torch.eye(v.d_mlp)) as e:
        templates = rome.templates_for(tiny, FAST)
        prompts = [t.replace("{}", REQUEST.text) for t in templates]
        last = torch.tensor([v.subject_span(p, REQUEST.subject).last for p in prompts])
        ids = v.batch(prompts).ids
        out = v.capture(ids, [v.value_hook(FAST.layer)])[v.value_hook(FAST.layer)]
        out = out[torch.arange(len(prompts)), last].mean(0)
        torch.testing.assert_close(out, e.info["v_star"], atol=1e-5, rtol=1e-4)
        assert e.info["delta"].norm() > 0


def test_undo_restores_bit_for_bit_and_is_idempotent(tiny):
    v = view(tiny)
    before = v.mlp_out_weight(FAST.layer).clone()
    e = rome.apply(tiny, REQUEST, hparams=FAST, stats=torch.eye(v.d_mlp))
    assert not torch.equal(v.mlp_out_weight(FAST.layer), before)
    assert e.delta().abs().sum() > 0
    e.undo()
    assert torch.equal(v.mlp_out_weight(FAST.layer), before)
    e.undo()
    assert torch.equal(v.mlp_out_weight(FAST.layer), before)
    assert e.undone


def test_context_manager_restores_when_the_body_raises(tiny):
    v = view(tiny)
    before = v.mlp_out_weight(FAST.layer).clone()
    with pytest.raises(RuntimeError, match="boom"):
        with rome.edit(tiny, REQUEST, hparams=FAST, stats=torch.eye(v.d_mlp)):
            assert not torch.equal(v.mlp_out_weight(FAST.layer), before)
            raise RuntimeError("boom")
    assert torch.equal(v.mlp_out_weight(FAST.layer), before)


def test_layer_stats_is_the_second_moment_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTLENS_CACHE_DIR", str(tmp_path))
    model = load_model("tiny-gemma3", device="cpu")
    v = view(model)
    C = rome.layer_stats(model, 1, samples=200, chunk_tokens=32, progress=False)
    assert C.shape == (v.d_mlp, v.d_mlp)
    torch.testing.assert_close(C, C.T)
    assert torch.linalg.eigvalsh(C.double()).min() > -1e-6  # positive semi-definite
    # by hand: the same keys, from the same chunks (BOS left out)
    chunks = second_moment.corpus_chunks(model, "wikitext", 32)
    rows = [next(chunks) for _ in range(7)]  # 7 x 31 = 217 >= 200 keys
    K = v.capture(torch.tensor(rows), [v.key_hook(1)])[v.key_hook(1)][:, 1:].reshape(-1, v.d_mlp)[:200].double()
    torch.testing.assert_close(C.double(), K.T @ K / 200, atol=1e-6, rtol=1e-5)
    files = list((tmp_path / "layer_stats").glob("*.safetensors"))
    assert len(files) == 1
    again = rome.layer_stats(model, 1, samples=200, chunk_tokens=32, progress=False)
    assert torch.equal(again, C)
    # the gathering time is kept with C: a warm cache reports the same cost, not a file read
    seconds = rome.layer_stats_seconds(model, 1, samples=200, chunk_tokens=32)
    assert seconds > 0
    assert rome.layer_stats_seconds(model, 1, samples=200, chunk_tokens=32) == seconds
    assert len(list((tmp_path / "layer_stats").glob("*.safetensors"))) == 1


# --------------------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def gemma():
    try:
        return load_model("gemma-3-270m", device="cpu")
    except Exception as err:  # no converted model and no package: say so rather than fail obscurely
        pytest.skip(f"default model unavailable: {err}")


def _top(model, prompt: str) -> str:
    return view(model).top_tokens([prompt])[0][0].strip()


@pytest.mark.slow
def test_rome_rewrites_a_known_fact_and_leaves_an_unrelated_one(gemma):
    """Gemma 3 270M knows the Eiffel Tower is in Paris; after the edit it says Rome, and its
    answer about an unrelated subject and relation (Danielle Darrieux's mother tongue) is unchanged."""
    request = rome.EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
    unrelated = "The mother tongue of Danielle Darrieux is"
    assert _top(gemma, request.text) == "Paris"
    before_unrelated = _top(gemma, unrelated)
    assert before_unrelated == "French"
    hp = replace(rome.default_hparams(gemma), mom2_samples=3000)
    with rome.edit(gemma, request, hparams=hp) as e:
        assert _top(gemma, request.text) == "Rome"
        assert _top(gemma, unrelated) == before_unrelated
        assert e.info["target_prob"] > 0.5
    assert _top(gemma, request.text) == "Paris"


# --------------------------------------------------------------------------- tuning and evaluation split


def test_tuning_and_evaluation_cases_partition_counterfact_by_case_id():
    from factlens import data

    cases = data.counterfact()
    tune, held = rome.tuning_cases(cases), rome.evaluation_cases(cases)
    assert len(tune) + len(held) == len(cases)
    assert {c.case_id for c in tune}.isdisjoint(c.case_id for c in held)
    assert all(c.case_id % 10 == 0 for c in tune) and len(tune) == len(cases) // 10 + 1  # ids 0..21918
    # a rule on the id, not a sample: any subset, in any order, splits the same way
    subset = list(reversed(cases[:50]))
    assert [c.case_id for c in rome.tuning_cases(subset)] == [c.case_id for c in subset if c.case_id % 10 == 0]
    assert rome.is_tuning_case(687) is False and rome.is_tuning_case(690) is True
