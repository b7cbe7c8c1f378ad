"""Tests of factlens.memories (keys, values, patterns and aggregation) (Geva et al. 2021): tiny
random models, constructed activations, and a few properties of the default model."""

from __future__ import annotations

import math
import random

import pytest
import torch

from factlens.core.models import load_model, view
from factlens.memories.aggregation import (
    LayerReadout,
    composition_counts,
    composition_matrix,
    large_fraction,
    mass_fraction,
    read_layers,
    refinement_counts,
    veto_counts,
)
from factlens.memories.keys import Corpus, key_coefficients, paper_layer_split, top_triggers, trigger_search
from factlens.memories.patterns import PatternScores, pattern_scores, removal_drops, remove_token
from factlens.memories.values import ValueTokens, strongest_memories, value_agreement, value_logits, value_tokens

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
    from factlens.core import cache

    real = cache.cache_dir

    def tmp_cache(*parts):
        if parts and parts[0].startswith("memories"):
            path = tmp_path.joinpath(*parts)
            path.mkdir(parents=True, exist_ok=True)
            return path
        return real(*parts)

    monkeypatch.setattr(cache, "cache_dir", tmp_cache)


def brute_force(model, layers, keys, corpus):
    """Every coefficient of every prefix, one text at a time (what the streamed search avoids):
    {layer: {(text, pos): [n_keys]}}."""
    v = view(model)
    table = {l: {} for l in layers}
    for t, ids in enumerate(corpus.ids):
        with torch.no_grad():
            seen = v.capture(torch.tensor([ids]), [v.key_hook(l) for l in layers], stop_after=False)
        for l in layers:
            for p in range(1, len(ids)):
                table[l][(t, p)] = seen[v.key_hook(l)][0, p, keys]
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
    hook = v.resid_post_hook(a.representation_layer)
    with torch.no_grad():
        _, cache = tiny.run_with_cache(torch.tensor([corpus.ids[t]]), names_filter=hook)
    torch.testing.assert_close(a.triggers[1].representation[0, 0], cache[hook][0, p])


def test_bad_keys_and_layers_are_refused(tiny):
    corpus = Corpus.from_texts(tiny, TEXTS, max_tokens=12)
    with pytest.raises(IndexError, match="keys of layer"):
        top_triggers(tiny, 0, [view(tiny).d_mlp], corpus, k=3, progress=False)
    with pytest.raises(IndexError, match="out of range"):
        top_triggers(tiny, 3, [0], corpus, k=3, progress=False)


def test_every_key_from_the_same_pass_equals_its_own_search(tiny):
    """``every_key_top``: every key's top triggers, found in the sampled keys' pass, are those a
    search of all keys finds; the sampled keys' own triggers do not change."""
    corpus = Corpus.from_texts(tiny, TEXTS, max_tokens=12)
    every = list(range(view(tiny).d_mlp))
    sampled = trigger_search(tiny, {0: [1, 2], 2: [7]}, corpus, k=4, progress=False)
    both = trigger_search(tiny, {0: [1, 2], 2: [7]}, corpus, k=4, every_key_top=2, batch_size=3, progress=False)
    alone = trigger_search(tiny, {0: every, 2: every}, corpus, k=2, progress=False)
    for layer in (0, 2):
        torch.testing.assert_close(both.triggers[layer].coefficient, sampled.triggers[layer].coefficient)
        assert both.every_key[layer].keys == every
        # the same coefficients (a tie between two prefixes with the same tokens may pick either prefix)
        torch.testing.assert_close(both.every_key[layer].coefficient, alone.triggers[layer].coefficient)
        assert (both.every_key[layer].position >= 1).all()
        assert both.every_key[layer].representation.shape == (len(every), 2, 0)
    assert sampled.every_key == {}


def test_value_projection_is_gevas_v_times_e(tiny):
    """softmax(v_i E): the value times the output embedding, no norm (Geva et al. section 4)."""
    v = view(tiny)
    layer, keys = 1, [2, 9]
    values = v.mlp_out_weight(layer)[keys]
    with torch.no_grad():
        hand = values @ tiny.unembed.original_component.weight.T
    torch.testing.assert_close(value_logits(tiny, layer, keys), hand, rtol=1e-5, atol=1e-5)


def test_normed_value_projection_by_hand(tiny):
    """The labelled variant: the block's post-FF norm (Gemma), the final norm, the unembedding."""
    v = view(tiny)
    layer, keys = 1, [2, 9]
    values = v.mlp_out_weight(layer)[keys]
    block = tiny.blocks[layer]
    with torch.no_grad():
        if hasattr(block, "ln2_post"):  # Gemma: RMSNorm with weight (1 + w), then the final RMSNorm, then W_U
            hf_post = block.ln2_post.original_component
            hf_final = tiny.ln_final.original_component
            def rms(x, w, eps):
                return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)

            x = rms(values, hf_post.weight, hf_post.eps)
            x = rms(x, hf_final.weight, hf_final.eps)
        else:  # GPT-2: no post norm; the final LayerNorm
            ln = tiny.ln_final.original_component
            x = torch.nn.functional.layer_norm(values, (v.d_model,), ln.weight, ln.bias, ln.eps)
        hand = x @ tiny.unembed.original_component.weight.T
    torch.testing.assert_close(value_logits(tiny, layer, keys, normed=True), hand, rtol=1e-4, atol=1e-4)


def test_norm_gains_rerank_a_values_tokens():
    """A norm's per-dimension gains turn the vector, so the normed variant can rank tokens
    differently from v E: with gains on the final norm the two top tokens part."""
    model = load_model("tiny-gemma3", device="cpu")
    norm = model.ln_final.original_component
    saved = norm.weight.detach().clone()
    try:
        with torch.no_grad():
            torch.manual_seed(1)
            norm.weight.copy_(torch.randn_like(norm.weight) * 3)
        geva = value_logits(model, 1).argmax(-1)
        normed = value_logits(model, 1, normed=True).argmax(-1)
        assert (geva != normed).any()
    finally:
        with torch.no_grad():
            norm.weight.copy_(saved)


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
    drops = removal_drops(tiny, search, corpus, n_triggers=2, progress=False)
    assert len(removal_drops(tiny, search, corpus, n_triggers=2, keys_per_layer=1, progress=False)
               .per_trigger["last"][0]) <= 2  # the first key only
    # the "last" and "first" drops by hand: remove a token of each key's top triggers, re-read m at the new end
    tr, last, first = search.triggers[0], [], []
    for i, key in enumerate(tr.keys):
        for j in range(2):
            prefix = corpus.prefix(int(tr.text[i, j]), int(tr.position[i, j]))
            m = float(tr.coefficient[i, j])
            if len(prefix) >= 3 and m > 0:
                last.append((m - float(key_coefficients(tiny, 0, key, prefix[:-1])[-1])) / m)
                first.append((m - float(key_coefficients(tiny, 0, key, prefix[:1] + prefix[2:])[-1])) / m)
    assert last, "the tiny model's keys should have usable triggers"
    assert drops.per_trigger["last"][0] == pytest.approx(last, rel=1e-4, abs=1e-6)
    assert drops.means()["last"][0] == pytest.approx(sum(last) / len(last), rel=1e-4)
    assert drops.paired("last", "first") == (pytest.approx(last, rel=1e-4, abs=1e-6),
                                             pytest.approx(first, rel=1e-4, abs=1e-6))
    assert set(drops.per_trigger) == {"first", "last", "random"}


def test_pattern_scores_by_hand(tiny):
    corpus = Corpus.from_texts(tiny, TEXTS, max_tokens=12)
    search = trigger_search(tiny, {1: [0, 4, 8]}, corpus, k=5, n_random=20, progress=False)
    scores = pattern_scores(search, corpus)
    tr = search.triggers[1]
    for i in range(3):  # shallow_last: P(two triggers end in the same token), by counting pairs
        last = [corpus.ids[t][p] for t, p in zip(tr.text[i].tolist(), tr.position[i].tolist())]
        same = sum(a == b for x, a in enumerate(last) for y, b in enumerate(last) if x != y)
        assert scores.per_key["shallow_last"][1][i] == pytest.approx(same / (5 * 4))
    assert len(scores.null["shallow_last"]) == 20 // 5
    means = scores.means()
    assert means["shallow_last"][1] == pytest.approx(sum(scores.per_key["shallow_last"][1]) / 3)
    assert set(means["null"]) == {"shallow_last", "shallow_bigram", "semantic"}


def test_composition_counts_every_memory_with_its_sign():
    """A memory with m_i < 0 adds -v_i and promotes argmax(-v_i E): it counts, with that token."""
    # 3 examples, 4 memories; argmax(v_i E) = 10, 11, 12, 10 and argmax(-v_i E) = 20, 21, 22, 23
    tokens = ValueTokens(positive=torch.tensor([[10], [11], [12], [10]]),
                         negative=torch.tensor([[20], [21], [22], [23]]))
    coef = torch.tensor([[1.0, 0.0, -1.0, 0.5],   # active 0, 2, 3 -> promote {10, 22, 10}
                         [0.0, 2.0, 3.0, 0.0],    # active 1, 2 -> {11, 12}
                         [0.1, -0.1, 0.1, 0.1]])  # all active -> {10, 21, 12, 10}
    layer_top = torch.tensor([22, 13, 21])
    c = composition_counts(coef, layer_top, tokens)
    assert c["active_fraction"] == pytest.approx(9 / 12)
    assert c["negative_fraction"] == pytest.approx(2 / 12)
    # examples 0 and 2 are settled by a negative memory (22, 21); only example 1 is composed
    assert c["composed"] == pytest.approx(1 / 3) and c["single"] == pytest.approx(2 / 3)
    assert c["composed_examples"].tolist() == [0.0, 1.0, 0.0]
    assert c["single_tokens"] == {22: 1, 21: 1}
    # a memory whose coefficient is exactly 0 adds nothing and settles nothing
    assert composition_counts(torch.zeros(1, 4), torch.tensor([10]), tokens)["composed"] == 1.0


def test_mass_fraction_by_hand():
    coef = torch.tensor([[4.0, -3.0, 2.0, 1.0]])
    norms = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # sizes 4, 3, 2, 1 of 10: 90% needs 4 + 3 + 2 = 9, three of four memories
    assert mass_fraction(coef, norms, mass=0.9).tolist() == [0.75]
    assert mass_fraction(coef, norms, mass=0.4).tolist() == [0.25]
    assert mass_fraction(coef, torch.tensor([0.0, 10.0, 0.0, 0.0]), mass=0.9).tolist() == [0.25]


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
    assert none["changed"] == 0.0 and math.isnan(none["to_ff_top"])  # NaN when nothing changed


def test_value_tokens_cover_every_memory_and_its_negation(tiny):
    tokens = value_tokens(tiny, 1, top=3, chunk=50)
    logits = value_logits(tiny, 1)
    assert tokens.positive.shape == tokens.negative.shape == (view(tiny).d_mlp, 3)
    assert torch.equal(tokens.positive, logits.topk(3, -1).indices)
    assert torch.equal(tokens.negative, (-logits).topk(3, -1).indices)
    coef = torch.tensor([[1.0, -1.0] + [0.0] * (view(tiny).d_mlp - 2)])
    promoted = tokens.promoted(coef)[0]
    assert promoted[0] == logits[0].argmax() and promoted[1] == logits[1].argmin()


def test_value_agreement_by_hand(tiny):
    corpus = Corpus.from_texts(tiny, TEXTS, max_tokens=12)
    keys = list(range(view(tiny).d_mlp))  # every key: read from value_tokens
    search = trigger_search(tiny, {2: [0, 1]}, corpus, k=2, every_key_top=1, progress=False)
    agreement = value_agreement(tiny, search.every_key, corpus)
    tr, tops = search.every_key[2], value_logits(tiny, 2).argmax(-1)
    hand = []
    for i, key in enumerate(keys):
        nxt = corpus.next_token(int(tr.text[i, 0]), int(tr.position[i, 0]))
        hand.append(math.nan if nxt is None else float(nxt == int(tops[key])))
    assert agreement.agrees[2] == pytest.approx(hand, nan_ok=True)
    assert agreement.flags([2]) == [x for x in hand if not math.isnan(x)]
    sampled = value_agreement(tiny, trigger_search(tiny, {2: keys[:5]}, corpus, k=2, progress=False).triggers, corpus)
    assert sampled.top_token[2] == tops[:5].tolist()  # a few keys: projected directly, the same tokens


def test_read_layers_reads_gevas_ff_top_by_hand(tiny):
    v = view(tiny)
    corpus = Corpus.from_texts(tiny, TEXTS, max_tokens=12)
    prefixes = torch.tensor([[0, 5], [3, 2]])
    readout = read_layers(tiny, corpus, prefixes, progress=False)
    for row, (t, p) in enumerate(prefixes.tolist()):
        ids = torch.tensor([corpus.prefix(t, p)])
        with torch.no_grad():
            _, cache = tiny.run_with_cache(ids)
        for layer in range(v.n_layers):
            m = cache[v.key_hook(layer)][0, -1]
            bias = tiny.blocks[layer].mlp.out.original_component.bias  # GPT-2's; Gemma has none
            ff = m @ v.mlp_out_weight(layer) + (0 if bias is None else bias)  # FF(x) = sum_i m_i v_i (+ b)
            torch.testing.assert_close(ff, cache[v.value_hook(layer)][0, -1], rtol=1e-4, atol=1e-5)
            assert int(readout.ff_top[row, layer]) == int((ff @ tiny.unembed.original_component.weight.T).argmax())
            torch.testing.assert_close(readout.coefficients[row, layer], m)
        assert int(readout.final_top[row]) == int(tiny(ids)[0, -1].argmax())


def test_paper_layer_split_keeps_the_relative_depth():
    assert paper_layer_split(16, 11) == 10 and paper_layer_split(16, 10) == 9  # the paper's own layers
    assert paper_layer_split(18, 11) == 11 and paper_layer_split(18, 10) == 10  # 10/16 and 9/16 of 18
    with pytest.raises(ValueError, match="paper_first_upper"):
        paper_layer_split(18, 17)


def test_strongest_memories_rank_by_contribution_with_sign(tiny):
    v = view(tiny)
    prompt = "The Eiffel Tower is located in"
    rows = strongest_memories(tiny, prompt, top=3, n_tokens=2)
    ids = torch.tensor([v.token_ids(prompt)])
    with torch.no_grad():
        _, cache = tiny.run_with_cache(ids)
    for layer in range(v.n_layers):
        m = cache[v.key_hook(layer)][0, -1]
        size = m.abs() * v.mlp_out_weight(layer).norm(dim=-1)
        mine = [r for r in rows if r["layer"] == layer]
        assert [r["key"] for r in mine] == size.topk(3).indices.tolist()
        for r in mine:
            assert r["coefficient"] == pytest.approx(float(m[r["key"]]), abs=1e-6)
            signed = value_logits(tiny, layer, [r["key"]])[0] * (1 if r["coefficient"] >= 0 else -1)
            assert r["promotes"] == [v.tokenizer.decode([t]) for t in signed.topk(2).indices.tolist()]
    with pytest.raises(ValueError, match="prompt is empty"):
        strongest_memories(tiny, "  ")


@pytest.mark.slow
def test_default_model_normed_projection_is_the_models_own_path():
    """A memory left alone (every other coefficient zeroed) adds exactly what the normed variant
    projects; Geva's projection (no norm) ranks the tokens differently for some of its values."""
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
    projected = value_logits(model, layer, [key], normed=True)[0]
    assert torch.equal(own.topk(10).indices, projected.topk(10).indices)
    keys = list(range(64))
    geva = value_logits(model, layer, keys).argmax(-1)
    normed = value_logits(model, layer, keys, normed=True).argmax(-1)
    assert (geva != normed).any(), "Gemma's norm gains should re-rank some values' tokens"
    rows = strongest_memories(model, "The Eiffel Tower is located in the city of", top=2)
    assert len(rows) == 2 * v.n_layers
    assert any(r["coefficient"] < 0 for r in rows), "a gated MLP's strongest memories include negative ones"


def test_a_key_shows_a_pattern_above_the_random_groups_quantile():
    nan = float("nan")
    scores = PatternScores(
        per_key={"shallow_last": {0: [0.9, 0.0, nan], 1: [0.0]}, "semantic": {0: [0.0, 0.5, nan], 1: [0.05]}},
        null={"shallow_last": [0.0, 0.1, 0.2, 0.3, 0.4], "semantic": [0.0, 0.0, 0.0, 0.0, 0.6]})
    cut = scores.thresholds(0.5)
    assert cut == {"shallow_last": pytest.approx(0.2), "semantic": pytest.approx(0.0)}
    shown, chance = scores.with_pattern(("shallow_last", "semantic"), quantile=0.5)
    # key 0: shallow above 0.2; key 1: semantic above 0; key 2: undefined everywhere; layer 1's key: semantic
    assert shown == [True, True, False, True]
    assert chance == pytest.approx(2 / 5)  # groups 3 and 4 pass on shallow (> 0.2), group 4 on semantic too
    assert scores.with_pattern(("shallow_last", "semantic"), layers=[1], quantile=0.5)[0] == [True]


def test_large_coefficients_are_counted_against_the_layers_largest():
    coef = torch.tensor([[[10.0, -2.0, 0.5, 1.5], [1.0, 1.0, 1.0, 1.0]],
                         [[0.0, 0.0, 0.0, 0.0], [-4.0, 0.3, 0.5, 0.1]]])  # [examples, layers, memories]
    # example 0: |m| > 1 in layer 0 -> 10, -2, 1.5; every memory in layer 1; example 1: none (all 0), then -4 and 0.5
    assert large_fraction(coef).tolist() == [[0.75, 1.0], [0.0, 0.5]]
    assert large_fraction(coef, threshold=0.5).tolist() == [[0.25, 1.0], [0.0, 0.25]]


def test_the_composition_matrix_and_the_veto_counts_per_example():
    agg = {"composed_examples": {3: torch.tensor([1.0, 0.0]), 1: torch.tensor([1.0, 1.0])}}
    layers, matrix = composition_matrix(agg)
    assert layers == [1, 3] and matrix.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert float(matrix.mean(0).min()) == 0.5  # the composition claim's minimum over layers
    before = torch.tensor([[1, 1, 1], [5, 5, 5]])
    after = torch.tensor([[1, 3, 7], [5, 5, 6]])  # example 0 changes twice (to 3 = FF's top, to 7), example 1 once
    added = torch.tensor([[9, 3, 2], [9, 9, 6]])
    readout = LayerReadout(torch.zeros(2, 3, 1), added, added, before, before, after, after[:, -1])
    assert veto_counts(readout).tolist() == [[2.0, 1.0], [1.0, 1.0]]
