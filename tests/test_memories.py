"""Tests of factlens.memories (Geva et al. 2021): tiny random models, constructed activations,
and a few properties of the default model."""

from __future__ import annotations

import random

import pytest
import torch

from factlens.memories import (
    Corpus,
    composition_counts,
    key_coefficients,
    refinement_counts,
    remove_token,
    removal_drops,
    top_triggers,
    trigger_search,
    value_logits,
)
from factlens.models import load_model, view

TEXTS = [
    "The Eiffel Tower is located in the city of Paris.",
    "The Space Needle is in Seattle.",
    "Dante was born in Florence.",
    "Rome is the capital of Italy.",
    "Apple makes the iPhone.",
    "The capital of France is Paris.",
    "Toko Yasuda plays the guitar.",
    "Danielle Darrieux's mother tongue is French.",
    "The mother tongue of Thomas Joannes Stieltjes is Dutch.",
]


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    """Every test builds its own trigger tables (nothing read from another run's cache);
    the converted models stay where they are."""
    from factlens import cache

    real = cache.cache_dir

    def tmp_cache(*parts):
        if parts and parts[0].startswith("memories"):
            path = tmp_path.joinpath(*parts)
            path.mkdir(parents=True, exist_ok=True)
            return path
        return real(*parts)

    monkeypatch.setattr(cache, "cache_dir", tmp_cache)


@pytest.fixture(scope="module", params=["tiny-gemma3", "tiny-gpt2"])
def tiny(request):
    return load_model(request.param, device="cpu")


def brute_force(model, layers, keys, corpus):
    """Every coefficient of every prefix, one text at a time (what the streamed search avoids):
    {layer: {(text, pos): [n_keys]}}."""
    v = view(model)
    table = {l: {} for l in layers}
    for t, ids in enumerate(corpus.ids):
        seen = {}
        hooks = [(v.key_hook(l), lambda x, hook, l=l: seen.__setitem__(l, x[0])) for l in layers]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(torch.tensor([ids]))
        for l in layers:
            for p in range(1, len(ids)):
                table[l][(t, p)] = seen[l][p, keys]
    return table


def test_streamed_search_equals_brute_force(tiny):
    corpus = Corpus.from_texts(tiny, TEXTS, max_tokens=12)
    keys, k = [0, 5, 17, 42], 7
    tables = brute_force(tiny, (0, 2), keys, corpus)
    for layer, table in tables.items():
        got = top_triggers(tiny, layer, keys, corpus, k=k, batch_size=3, progress=False)  # 3 batches
        coef = torch.stack(list(table.values()), 1)  # [n_keys, n_prefixes]
        torch.testing.assert_close(got.coefficient, coef.sort(1, descending=True).values[:, :k], rtol=1e-5, atol=1e-6)
        for i in range(len(keys)):  # each returned prefix is a distinct prefix with that coefficient
            where = list(zip(got.text[i].tolist(), got.position[i].tolist()))
            assert len(set(where)) == k
            for j, prefix in enumerate(where):
                assert float(table[prefix][i]) == pytest.approx(float(got.coefficient[i, j]), rel=1e-5, abs=1e-6)
        assert (got.position >= 1).all()  # the BOS token alone is never a prefix


def test_search_is_cached_and_batch_size_does_not_matter(tiny):
    corpus = Corpus.from_texts(tiny, TEXTS, max_tokens=12)
    a = trigger_search(tiny, {1: [3, 4]}, corpus, k=5, batch_size=4, progress=False)
    b = trigger_search(tiny, {1: [3, 4]}, corpus, k=5, batch_size=1, progress=False)  # read from the cache
    assert torch.equal(a.triggers[1].coefficient, b.triggers[1].coefficient)
    c = trigger_search(tiny, {1: [3, 4]}, corpus, k=5, batch_size=3, progress=False, seed=1)  # rebuilt
    torch.testing.assert_close(a.triggers[1].coefficient, c.triggers[1].coefficient)
    # the representation kept with each trigger is the residual at that prefix's last token
    v = view(tiny)
    t, p = int(a.triggers[1].text[0, 0]), int(a.triggers[1].position[0, 0])
    with torch.no_grad():
        _, cache = tiny.run_with_cache(torch.tensor([corpus.ids[t]]), names_filter=v.resid_post_hook(a.representation_layer))
    torch.testing.assert_close(a.triggers[1].representation[0, 0], cache[v.resid_post_hook(a.representation_layer)][0, p])


def test_bad_keys_and_layers_are_refused(tiny):
    corpus = Corpus.from_texts(tiny, TEXTS, max_tokens=12)
    with pytest.raises(IndexError, match="keys of layer"):
        top_triggers(tiny, 0, [view(tiny).d_mlp], corpus, k=3, progress=False)
    with pytest.raises(IndexError, match="out of range"):
        top_triggers(tiny, 3, [0], corpus, k=3, progress=False)


def test_value_projection_by_hand(tiny):
    v = view(tiny)
    layer, keys = 1, [2, 9]
    values = v.mlp_out_weight(layer)[keys]
    block = tiny.blocks[layer]
    with torch.no_grad():
        if v._post_norms:  # Gemma: RMSNorm with weight (1 + w), then the final RMSNorm, then W_U
            hf_post = block.ln2_post.original_component
            hf_final = tiny.ln_final.original_component
            rms = lambda x, w, eps: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)  # noqa: E731
            x = rms(values, hf_post.weight, hf_post.eps)
            x = rms(x, hf_final.weight, hf_final.eps)
        else:  # GPT-2: no post norm; the final LayerNorm
            ln = tiny.ln_final.original_component
            x = torch.nn.functional.layer_norm(values, (v.d_model,), ln.weight, ln.bias, ln.eps)
        hand = x @ tiny.unembed.original_component.weight.T
    torch.testing.assert_close(value_logits(tiny, layer, keys), hand, rtol=1e-4, atol=1e-4)


def test_token_removal_refuses_one_token_prefix():
    with pytest.raises(ValueError, match="at least two tokens after BOS"):
        remove_token([2, 17], "last")
    assert remove_token([2, 5, 6, 7], "first") == [2, 6, 7]
    assert remove_token([2, 5, 6, 7], "last") == [2, 5, 6]
    dropped = remove_token([2, 5, 6, 7], "random", random.Random(0))
    assert len(dropped) == 3 and dropped[0] == 2
    with pytest.raises(ValueError, match="'first', 'last' or 'random'"):
        remove_token([2, 5, 6], "middle")


def test_removal_drops_on_tiny_model(tiny):
    corpus = Corpus.from_texts(tiny, TEXTS, max_tokens=12)
    search = trigger_search(tiny, {0: [1, 2, 3]}, corpus, k=4, progress=False)
    drops = removal_drops(tiny, search, corpus, n_triggers=1, progress=False)
    # the "last" drop by hand: remove the last token of each key's top trigger, re-read m at the new end
    tr, by_hand = search.triggers[0], []
    for i, key in enumerate(tr.keys):
        prefix = corpus.prefix(int(tr.text[i, 0]), int(tr.position[i, 0]))
        m = float(tr.coefficient[i, 0])
        if len(prefix) >= 3 and m > 0:
            by_hand.append((m - float(key_coefficients(tiny, 0, key, prefix[:-1])[-1])) / m)
    assert by_hand, "the tiny model's keys should have usable triggers"
    assert drops["last"][0] == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-4)
    assert set(drops) == {"first", "last", "random"}


def test_composition_counts_by_hand():
    # 3 examples, 4 memories; memory top tokens 10, 11, 12, 10
    coef = torch.tensor([[1.0, 0.0, -1.0, 0.5],   # active 0, 3 -> tops {10}
                         [0.0, 2.0, 3.0, 0.0],    # active 1, 2 -> tops {11, 12}
                         [0.1, 0.1, 0.1, 0.1]])   # all active -> {10, 11, 12}
    layer_top = torch.tensor([10, 13, 12])
    memory_top = torch.tensor([10, 11, 12, 10])
    c = composition_counts(coef, layer_top, memory_top)
    assert c["active_fraction"] == pytest.approx(8 / 12)
    assert c["composed"] == pytest.approx(1 / 3)  # only example 1 (13 is no memory's top)
    assert c["single"] == pytest.approx(2 / 3)
    assert c["single_tokens"] == {10: 1, 12: 1}


def test_refinement_counts_by_hand():
    before = torch.tensor([1, 1, 1, 1, 5])
    second = torch.tensor([2, 2, 2, 2, 6])
    ff_top = torch.tensor([9, 3, 2, 9, 5])
    after = torch.tensor([1, 3, 2, 7, 5])  # unchanged, to FF top, to FF top (= runner-up), to other, unchanged
    final = torch.tensor([1, 3, 4, 4, 5])
    r = refinement_counts(before, second, after, ff_top, final)
    assert r["final"] == pytest.approx(3 / 5)
    assert r["changed"] == pytest.approx(3 / 5)
    assert (r["to_ff_top"], r["to_runner_up"], r["to_other"]) == pytest.approx((2 / 3, 0.0, 1 / 3))
    veto = refinement_counts(torch.tensor([1]), torch.tensor([2]), torch.tensor([2]), torch.tensor([9]),
                             torch.tensor([2]))
    assert veto["to_runner_up"] == 1.0
    none = refinement_counts(before[:1], second[:1], before[:1], ff_top[:1], final[:1])
    assert none["changed"] == 0.0 and none["to_ff_top"] != none["to_ff_top"]  # NaN when nothing changed


def test_value_top_tokens_cover_every_memory(tiny):
    from factlens.memories import value_top_tokens

    top = value_top_tokens(tiny, 1, top=3, chunk=50)
    assert top.shape == (view(tiny).d_mlp, 3)
    assert torch.equal(top, value_logits(tiny, 1).topk(3, -1).indices)


@pytest.mark.slow
def test_default_model_value_projection_is_the_models_own_path():
    """A memory left alone (every other coefficient zeroed) adds exactly what value_logits projects."""
    from factlens.memories import strongest_memories

    model = load_model()
    v = view(model)
    layer, key = 12, 7
    ids = torch.tensor([v.token_ids("The Eiffel Tower is located in the city of")])

    def only_this_memory(m, hook):
        alone = torch.zeros_like(m)
        alone[..., key] = 2.5
        return alone

    seen = []
    with torch.no_grad(), model.hooks(fwd_hooks=[(v.key_hook(layer), only_this_memory),
                                               (v.mlp_out_hook(layer), lambda x, hook: seen.append(x))]):
        v.final_hidden(ids)
    own = v.to_logits(seen[0][0, -1])
    projected = value_logits(model, layer, [key])[0]
    assert torch.equal(own.topk(10).indices, projected.topk(10).indices)
    rows = strongest_memories(model, "The Eiffel Tower is located in the city of", top=2)
    assert len(rows) == 2 * v.n_layers
    assert all(r["coefficient"] > 0 for r in rows)
