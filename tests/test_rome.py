"""ROME (factlens.editing.rome): exact properties on tiny random models, behaviour on the default model."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from factlens.core.models import load_model, view
from factlens.core.view import SubjectNotFoundError
from factlens.editing import generation, rome, second_moment, v_star
from factlens.editing.requests import EditRequest

FAST = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=4, mom2_samples=300)
REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")


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


# --------------------------------------------------------------------------- errors


def test_clear_errors_before_any_change(tiny):
    v = view(tiny)
    before = v.mlp_out_weight(1).clone()
    with pytest.raises(IndexError, match="out of range"):
        rome.ROME(replace(FAST, layer=v.n_layers), stats=torch.eye(v.d_mlp))(tiny, [REQUEST])
    # the essence prompt of the KL term must hold the subject too
    with pytest.raises(SubjectNotFoundError, match="does not occur"):
        rome.ROME(replace(FAST, essence_prompt="It is a"), stats=torch.eye(v.d_mlp))(tiny, [REQUEST])
    # one fact per edit
    with pytest.raises(ValueError, match="at most 1 request"):
        rome.ROME(FAST, stats=torch.eye(v.d_mlp))(tiny, [REQUEST, EditRequest("{} is in", "Rome", "France")])
    assert torch.equal(v.mlp_out_weight(1), before)


def test_rank_one_update_with_another_key_maps_that_key():
    """ROME's code passes the unprefixed key k₀ as the denominator's key: Ŵ k₀ = v*, in the
    direction C⁻¹k* all the same."""
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    K = torch.randn(6, 30, generator=gen, dtype=torch.float64)
    C = K @ K.T / 30
    k_star, k0, v_star = (torch.randn(n, generator=gen, dtype=torch.float64) for n in (6, 6, 4))
    W_hat = rome.rank_one_update(W, C, k_star, v_star, key=k0)
    torch.testing.assert_close(W_hat @ k0, v_star)
    u = torch.linalg.solve(C, k_star)
    delta = W_hat - W
    torch.testing.assert_close(delta, torch.outer(delta @ u / (u @ u), u))  # rows along C⁻¹k*


def test_kl_divergence_by_hand():
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.5, 0.25])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # Σ p log(p/q)
    torch.testing.assert_close(v_star.kl_divergence(p.log()[None], q.log()[None]), torch.tensor(expected))
    assert v_star.kl_divergence(p.log(), p.log()).item() == 0


def test_as_in_code_sets_the_reference_codes_choices():
    hp = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),))
    code = rome.as_in_code(hp)
    assert all(getattr(code, name) == value for name, (value, _) in rome.CODE_CHOICES.items())
    assert code.context_templates == rome.CODE_CONTEXT_TEMPLATES and code.layer == 1
    one = rome.as_in_code(hp, "kl_at_subject")
    assert one.kl_at_subject and one.context_templates == hp.context_templates
    with pytest.raises(ValueError, match="differs in"):
        rome.as_in_code(hp, "kl_at_the_end")


def test_the_essence_is_read_at_its_end_or_at_the_subject(tiny):
    v = view(tiny)
    prompts = {at: v_star.RewritePrompts.build(tiny, REQUEST, ["{}"], "{} is a", kl_at_subject=at)
               for at in (False, True)}
    essence = "The Eiffel Tower is a"
    assert int(prompts[False].read_positions[-1]) == len(v.token_ids(essence)) - 1
    assert int(prompts[True].read_positions[-1]) == v.subject_span(essence, REQUEST.subject).last
    with pytest.raises(ValueError, match="unprefixed prompt"):
        v_star.RewritePrompts.build(tiny, REQUEST, ["Hello. {}"], "{} is a")


@pytest.mark.parametrize("unprefixed", [True, False])
def test_the_clamp_scales_with_the_chosen_value_norm(tiny, unprefixed):
    """‖δ‖ is clamped to clamp_norm_factor · ‖v‖, ‖v‖ the unprefixed prompt's value (ROME's code)
    or the mean value over the rewriting prompts."""
    v = view(tiny)
    hp = replace(FAST, clamp_norm_factor=1e-3, norm_of_unprefixed=unprefixed)
    templates = rome.templates_for(tiny, hp)
    value = v_star.compute_value(tiny, REQUEST, hp.layer, hp, templates)
    prompts = [t.replace("{}", REQUEST.text) for t in templates]
    last = torch.tensor([v.subject_span(p, REQUEST.subject).last for p in prompts])
    values = v.capture(v.batch(prompts).ids, [v.value_hook(hp.layer)])[v.value_hook(hp.layer)]
    values = values[torch.arange(len(prompts)), last]
    norm = (values[0] if unprefixed else values.mean(0)).norm()
    torch.testing.assert_close(value.delta.norm(), 1e-3 * norm, rtol=1e-4, atol=0)


def test_the_unprefixed_key_option_writes_the_unprefixed_prompt(tiny):
    """With ROME's code's denominator the unprefixed prompt's value becomes v₀ + δ exactly."""
    v = view(tiny)
    hp = replace(FAST, unprefixed_key_in_update=True)
    ids = v.batch([REQUEST.text]).ids
    last = v.subject_span(REQUEST.text, REQUEST.subject).last
    before = v.capture(ids, [v.value_hook(hp.layer)])[v.value_hook(hp.layer)][0, last]
    with rome.ROME(hp, stats=torch.eye(v.d_mlp))(tiny, [REQUEST]) as e:
        after = v.capture(ids, [v.value_hook(hp.layer)])[v.value_hook(hp.layer)][0, last]
        torch.testing.assert_close(after, before + e.info["delta"], atol=1e-5, rtol=1e-4)
        k0 = rome.compute_key(tiny, REQUEST, hp.layer)
        u = torch.linalg.solve(torch.eye(v.d_mlp, dtype=torch.float64), e.info["k_star"].double())
        assert e.info["denominator"] == pytest.approx(float(u @ k0.double()), rel=1e-6)


def test_prefixes_sampled_from_the_start_of_text(tiny):
    """ROME's code samples its prefixes from the BOS, ``length`` tokens counting the BOS."""
    templates = rome.context_templates(tiny, ((4, 3),), seed=1, from_bos=True)
    assert len(templates) == 4 and templates[0] == "{}"
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in templates[1:])
    assert templates == rome.context_templates(tiny, ((4, 3),), seed=1, from_bos=True)  # seeded
    assert templates != rome.context_templates(tiny, ((4, 3),), seed=1)  # not MEMIT's start words


def test_partial_and_whole_forward_give_the_same_value(tiny):
    """v* from re-running only the blocks above the edit (and the positions from the subject on)
    equals v* from whole forward passes."""
    hp = replace(FAST, v_steps=6)
    templates = rome.templates_for(tiny, hp)
    fast, slow = (v_star.compute_value(tiny, REQUEST, hp.layer, hp, templates, partial=p) for p in (True, False))
    assert fast.steps == slow.steps == 6
    torch.testing.assert_close(fast.v_star, slow.v_star, atol=1e-5, rtol=1e-4)
    assert torch.nn.functional.cosine_similarity(fast.delta, slow.delta, dim=0) > 0.9999
    assert [x["total"] for x in fast.losses] == pytest.approx([x["total"] for x in slow.losses], rel=1e-4)


# --------------------------------------------------------------------------- apply / undo on tiny models


def test_edit_writes_v_star_at_the_averaged_key(tiny):
    """After the edit, the down projection's output averaged over the prefixed prompts is v*
    (W is linear, so the mean output is Ŵ k* + b with k* the mean key: eq. 2 through the model)."""
    v = view(tiny)
    with rome.ROME(FAST, stats=torch.eye(v.d_mlp))(tiny, [REQUEST]) as e:
        templates = rome.templates_for(tiny, FAST)
        prompts = [t.replace("{}", REQUEST.text) for t in templates]
        last = torch.tensor([v.subject_span(p, REQUEST.subject).last for p in prompts])
        ids = v.batch(prompts).ids
        out = v.capture(ids, [v.value_hook(FAST.layer)])[v.value_hook(FAST.layer)]
        out = out[torch.arange(len(prompts)), last].mean(0)
        assert 0 < e.info["steps"] <= FAST.v_steps
        torch.testing.assert_close(out, e.info["v_star"], atol=1e-5, rtol=1e-4)
        assert e.info["delta"].norm() > 0


def test_an_edit_is_eq_2_with_its_k_star_and_v_star(tiny):
    """The editor's update is rank_one_update's (eq. 2) with the k* of compute_key and v* = W k* + δ, bit for bit."""
    v = view(tiny)
    C = second_moment.layer_stats(tiny, FAST.layer, samples=FAST.mom2_samples, progress=False)
    with rome.ROME(FAST, stats=C)(tiny, [REQUEST]) as e:
        edited = v.mlp_out_weight(FAST.layer).detach().T.clone()
        k = e.info["k_star"]
        assert torch.equal(k, rome.compute_key(tiny, REQUEST, FAST.layer, rome.templates_for(tiny, FAST)))
        assert e.layer == FAST.layer and e.request == REQUEST and e.method == "ROME"
    # W as the edit read it: restored bit for bit, in the same storage (a copy elsewhere may round W k otherwise)
    W = v.mlp_out_weight(FAST.layer).detach().T
    assert torch.equal(edited, rome.rank_one_update(W, C, k, W @ k + e.info["delta"], FAST.damping))


def test_undo_restores_bit_for_bit_and_is_idempotent(tiny):
    v = view(tiny)
    before = v.mlp_out_weight(FAST.layer).clone()
    e = rome.ROME(FAST, stats=torch.eye(v.d_mlp))(tiny, [REQUEST])
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
        with rome.ROME(FAST, stats=torch.eye(v.d_mlp))(tiny, [REQUEST]):
            assert not torch.equal(v.mlp_out_weight(FAST.layer), before)
            raise RuntimeError("boom")
    assert torch.equal(v.mlp_out_weight(FAST.layer), before)


def test_layer_stats_is_the_second_moment_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTLENS_CACHE_DIR", str(tmp_path))
    model = load_model("tiny-gemma3", device="cpu")
    v = view(model)
    C = second_moment.layer_stats(model, 1, samples=200, chunk_tokens=32, progress=False)
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
    again = second_moment.layer_stats(model, 1, samples=200, chunk_tokens=32, progress=False)
    assert torch.equal(again, C)
    # the gathering time is kept with C: a warm cache reports the same cost, not a file read
    seconds = second_moment.layer_stats_seconds(model, 1, samples=200, chunk_tokens=32)
    assert seconds > 0
    assert second_moment.layer_stats_seconds(model, 1, samples=200, chunk_tokens=32) == seconds
    assert len(list((tmp_path / "layer_stats").glob("*.safetensors"))) == 1


def test_layer_stats_follow_the_corpus_text(tmp_path, monkeypatch):
    """C is keyed by the tokens it was computed from: other text (a changed detokenizer, another
    tokenizer) gives a new entry, never the stale one. The corpus's pieces are joined by a space."""
    from factlens import data

    monkeypatch.setenv("FACTLENS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(data, "corpus", lambda name: iter(["The Eiffel Tower is in Paris."] * 40))
    model = load_model("tiny-gemma3", device="cpu")
    first = next(second_moment.corpus_chunks(model, "wikitext", 32))
    assert "Paris. The Eiffel" in view(model).tokenizer.decode(first)
    C1 = second_moment.layer_stats(model, 1, samples=100, chunk_tokens=32, progress=False)
    monkeypatch.setattr(data, "corpus", lambda name: iter(["Dante was born in Florence."] * 40))
    model = load_model("tiny-gemma3", device="cpu")  # a fresh model: nothing remembered of the first text
    C2 = second_moment.layer_stats(model, 1, samples=100, chunk_tokens=32, progress=False)
    assert not torch.allclose(C1, C2)
    assert len(list((tmp_path / "layer_stats").glob("*.safetensors"))) == 2


# --------------------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma-3-270m", device="cpu")  # no skip: the default model is part of the install


def _top(model, prompt: str) -> str:
    return view(model).top_tokens([prompt])[0][0].strip()


@pytest.mark.slow
def test_rome_rewrites_a_known_fact_and_leaves_an_unrelated_one(gemma):
    """Gemma 3 270M knows the Eiffel Tower is in Paris; after the edit it says Rome, and its
    answer about an unrelated subject and relation (Danielle Darrieux's mother tongue) is unchanged."""
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
    unrelated = "The mother tongue of Danielle Darrieux is"
    assert _top(gemma, request.text) == "Paris"
    before_unrelated = _top(gemma, unrelated)
    assert before_unrelated == "French"
    hp = replace(rome.default_hparams(gemma), mom2_samples=3000)
    with rome.ROME(hp)(gemma, [request]) as e:
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


# --------------------------------------------------------------------------- generation with a key-value cache


PROMPTS = ["The Eiffel Tower is located in the city of", "Dante was born in", "Apple makes the", "Rome"]


def test_cached_generation_equals_the_recompute_loop(tiny):
    """Greedy text through the key-value cache is the text of re-running every prefix; the prompts
    have different lengths (left padding) and run past tiny-gemma3's 16-token sliding window."""
    cached = generation.generate(tiny, PROMPTS, 20)
    assert cached == generation.generate(tiny, PROMPTS, 20, use_cache=False)
    assert all(len(view(tiny).tokenizer(t, add_special_tokens=False)["input_ids"]) >= 15 for t in cached)
    # one prompt alone continues as it does in the batch, and three (padded to four rows, see
    # forward.row_padding) as they do among four
    assert generation.generate(tiny, PROMPTS[1:2], 20) == cached[1:2]
    assert generation.generate(tiny, PROMPTS[:3], 20) == cached[:3]
    # the first greedy token is the top next token
    first = [view(tiny).tokenizer.decode(t[:1]) for t in generation.generate_tokens(tiny, PROMPTS, 1)]
    assert first == [top[0] for top in view(tiny).top_tokens(PROMPTS)]


def test_sampled_generation_is_seeded(tiny):
    a = generation.generate(tiny, PROMPTS, 12, top_k=5, seed=3)
    assert a == generation.generate(tiny, PROMPTS, 12, top_k=5, seed=3)
    assert a == generation.generate(tiny, PROMPTS, 12, top_k=5, seed=3, use_cache=False)
    assert a != generation.generate(tiny, PROMPTS, 12, top_k=5, seed=4)


def test_generation_sees_an_applied_edit(tiny):
    """The cached path runs the weights as they are: under an edit it equals the recompute loop
    (which reads the edited weights), and after the undo the text is the unedited one again."""
    v = view(tiny)
    prompts = [REQUEST.text, *PROMPTS]
    before = generation.generate(tiny, prompts, 6, top_k=3)
    with rome.ROME(replace(FAST, clamp_norm_factor=50.0, v_steps=10), stats=torch.eye(v.d_mlp))(tiny, [REQUEST]):
        during = generation.generate(tiny, prompts, 6, top_k=3)
        assert during == generation.generate(tiny, prompts, 6, top_k=3, use_cache=False)
    assert generation.generate(tiny, prompts, 6, top_k=3) == before


def test_generation_rejects_bad_arguments(tiny):
    with pytest.raises(ValueError, match="top_k"):
        generation.generate(tiny, PROMPTS, 3, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generation.generate(tiny, PROMPTS, -1)
    assert generation.generate(tiny, [], 3) == []


def test_code_comparison_switches_one_option_at_a_time():
    hp = rome.ROMEHyperParams(layer=1)
    variants = rome.code_comparison(hp)
    assert set(variants) == {*rome.CODE_CHOICES, "all"}
    for option, changed in variants.items():
        if option == "all":
            continue
        differing = {f for f in rome.CODE_CHOICES if getattr(changed, f) != getattr(hp, f)}
        assert differing == {option}
    assert variants["kl_edited_first"].kl_edited_first is False  # we follow the code there: the row shows the other
    assert variants["kl_at_subject"].kl_at_subject is True  # we differ: the row shows the code's
    assert variants["all"] == rome.as_in_code(hp)


def test_row_groups_split_where_it_saves_work():
    # two short unprefixed rows and two long prefixed ones: re-run apart
    assert v_star.row_groups([2, 2, 30, 31], [8, 9, 40, 41]) == [[0, 1], [2, 3]]
    # rows alike: one group
    assert v_star.row_groups([5, 6, 5], [12, 12, 13]) == [[0, 2, 1]]
    groups = v_star.row_groups([3, 14, 9, 2, 13, 9], [9, 22, 17, 7, 21, 16])
    assert sorted(r for g in groups for r in g) == list(range(6))


@pytest.mark.slow
def test_partial_forward_gives_the_same_edit_on_the_default_model(gemma):
    hp = replace(rome.default_hparams(gemma), v_steps=8)
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
    templates = rome.templates_for(gemma, hp)
    fast, slow = (v_star.compute_value(gemma, request, hp.layer, hp, templates, partial=p) for p in (True, False))
    assert fast.steps == slow.steps
    assert torch.nn.functional.cosine_similarity(fast.v_star, slow.v_star, dim=0) >= 0.999
    assert fast.target_prob == pytest.approx(slow.target_prob, abs=1e-3)


@pytest.mark.slow
def test_cached_generation_on_the_default_model(gemma):
    prompts = ["The Eiffel Tower is located in the city of", "Danielle Darrieux's mother tongue is",
               "The Space Needle is in", "Toko Yasuda plays the"]
    cached = generation.generate(gemma, prompts, 24)
    assert cached == generation.generate(gemma, prompts, 24, use_cache=False)
    assert "Paris" in cached[0]
    assert len(set(cached[0].split())) > 3  # not one token repeated (the bridge's own cached generate)
