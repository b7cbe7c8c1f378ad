"""LAMA probing (factlens.probing.lama): rankings checked against sums of log-probabilities computed by
hand from the model's full logits, the metrics on hand-made ranks, and bad input."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from factlens.core.models import load_model, view
from factlens.data import LamaFact
from factlens.probing import analysis, baselines, lama, ranking, repeated

CAPITAL = "The capital of [X] is [Y] ."
INNER = "[X] speaks [Y] at home ."


def fact(subject: str, obj: str, template: str = CAPITAL, relation: str = "P36", corpus: str = "TREx") -> LamaFact:
    return LamaFact(subject, relation, obj, template, f"{subject}-{obj}", corpus)


TINY_MODELS = ("tiny-gemma3",)  # the conftest's `tiny` fixture loads these


def logprobs(model, text: str) -> torch.Tensor:
    """log P(token_t | tokens_<t) for every position of ``text`` (BOS first), from the full logits."""
    ids = torch.tensor([view(model).token_ids(text)])
    with torch.no_grad():
        logits = model.original_model(ids).logits[0].float()
    return logits.log_softmax(-1)[:-1].gather(-1, ids[0, 1:, None])[:, 0]


def sentence_score(model, prefix: str, continuation: str) -> float:
    """log P(continuation | prefix) = log P(prefix + continuation) - log P(prefix), by hand."""
    n_prefix = len(view(model).token_ids(prefix))
    return float(logprobs(model, prefix + continuation)[n_prefix - 1 :].sum())


# --------------------------------------------------------------------------- metrics


def test_paper_rows_average_relations_as_the_papers_table():
    frame = pd.DataFrame({
        "corpus": ["TREx", "TREx", "TREx", "Google_RE", "Google_RE", "Squad"],
        "relation": ["P36", "P19", "P19", "place_of_birth", "place_of_death", "Squad"],
        "relation_type": ["1-1", "N-1", "N-1", "N-1", "N-1", "Squad"], "rank": [1, 1, 3, 2, 2, 1]})
    rows = lama.ProbeResult(frame).paper_rows()
    # T-REx's types only: Google-RE's relations, also N-1, would pull N-1 down to (50 + 0 + 0) / 3
    assert rows["T-REx 1-1"] == 100.0 and rows["T-REx N-1"] == 50.0 and math.isnan(rows["T-REx N-M"])
    assert rows["T-REx"] == 75.0  # the mean of its relations (100 and 50), not of its facts
    assert rows["Google-RE place_of_birth"] == 0.0 and rows["Google-RE 2 relations"] == 0.0 and rows["SQuAD"] == 100.0
    assert math.isnan(rows["ConceptNet"]) and "Google-RE date_of_birth" not in rows


def test_split_at_median_splits_within_each_relation():
    frame = pd.DataFrame({"corpus": ["TREx"] * 6, "relation": ["P1", "P1", "P1", "P1", "P2", "P2"],
                          "relation_type": ["N-1"] * 6, "rank": [1, 2, 1, 3, 1, 1], "uuid": list("abcdef")})
    values = [0.9, 0.1, 0.5, float("nan"), 10.0, 20.0]  # P1's median 0.5 (of the known three), P2's 15
    high, low = analysis.split_at_median(lama.ProbeResult(frame), values)
    assert list(high.frame["uuid"]) == ["a", "f"] and list(low.frame["uuid"]) == ["b", "c", "e"]
    diff, lo, hi = analysis.p_at_1_difference(high, low, paired=False)
    assert diff == pytest.approx(100.0 - (50.0 + 100.0) / 2)  # high: P1 100, P2 100; low: P1 50, P2 100


def test_google_re_row_needs_its_three_relations():
    """The paper's Google-RE mean has birth dates; without them the row is the two-relation one."""
    frame = pd.DataFrame({"corpus": ["Google_RE"] * 4, "relation": ["place_of_birth", "place_of_birth",
                          "place_of_death", "place_of_death"], "relation_type": ["N-1"] * 4, "rank": [1, 2, 1, 1]})
    rows = lama.ProbeResult(frame).paper_rows()
    assert math.isnan(rows["Google-RE"])  # not the mean of two relations labelled as the paper's three
    assert rows["Google-RE 2 relations"] == 75.0  # (50 + 100) / 2
    three = pd.concat([frame, pd.DataFrame({"corpus": ["Google_RE"], "relation": ["date_of_birth"],
                                            "relation_type": ["N-1"], "rank": [1]})])
    assert lama.ProbeResult(three).paper_rows()["Google-RE"] == pytest.approx((50 + 100 + 100) / 3)


def test_p_at_1_interval_averages_relations_and_resamples_within_them():
    frame = pd.DataFrame({"corpus": ["TREx"] * 6, "relation": ["P1"] * 4 + ["P2"] * 2,
                          "relation_type": ["N-1"] * 6, "rank": [1, 1, 1, 1, 3, 4], "uuid": list("abcdef")})
    value, low, high = analysis.p_at_1_interval(lama.ProbeResult(frame))
    assert value == 50.0  # (100 + 0) / 2: relations, not facts
    assert low == high == 50.0  # every relation is all right or all wrong: no resample can change it
    mixed = frame.assign(rank=[1, 2, 1, 2, 1, 2])
    value, low, high = analysis.p_at_1_interval(lama.ProbeResult(mixed), seed=3)
    assert value == 50.0 and low < 50.0 < high
    assert analysis.p_at_1_interval(lama.ProbeResult(mixed), seed=3) == (value, low, high)  # seeded
    same = analysis.p_at_1_difference(lama.ProbeResult(mixed), lama.ProbeResult(mixed), paired=True)
    assert same == (0.0, 0.0, 0.0)  # paired: the same facts resampled together
    diff, low, high = analysis.p_at_1_difference(lama.ProbeResult(frame), lama.ProbeResult(mixed),
                                                      paired=True)
    assert diff == 0.0 and low < 0.0 < high
    with pytest.raises(ValueError, match="same facts"):
        analysis.p_at_1_difference(lama.ProbeResult(frame), lama.ProbeResult(mixed[::-1]), paired=True)


def test_metrics_of_hand_made_ranks():
    frame = pd.DataFrame({"corpus": ["TREx"] * 4, "relation": ["P1", "P1", "P2", "P2"],
                          "relation_type": ["N-1", "N-1", "1-1", "1-1"], "rank": [1, 2, 5, 20]})
    result = lama.ProbeResult(frame)
    assert result.p_at_1 == 25.0
    assert result.p_at_10 == 75.0
    assert result.mrr == pytest.approx(100 * (1 + 1 / 2 + 1 / 5 + 1 / 20) / 4)
    by_rel = result.by("relation")
    assert by_rel.loc["P1", "p_at_1"] == 50.0 and by_rel.loc["P2", "p_at_1"] == 0.0
    # a corpus averages its relations (the paper's table): (50 + 0) / 2, (100 + 50) / 2
    by_corpus = result.by("corpus")
    assert by_corpus.loc["TREx", "p_at_1"] == 25.0 and by_corpus.loc["TREx", "p_at_10"] == 75.0
    curve = result.p_at_k_curve(max_k=20)
    assert curve.loc[1, "TREx"] == 25.0 and curve.loc[5, "TREx"] == 75.0 and curve.loc[20, "TREx"] == 100.0
    assert curve["TREx"].is_monotonic_increasing


def test_concat_and_where_keep_facts_in_order():
    a = lama.ProbeResult(pd.DataFrame({"relation": ["P1", "P2"], "rank": [1, 2]}), method="probe(common)")
    b = lama.ProbeResult(pd.DataFrame({"relation": ["P3"], "rank": [5]}), method="probe(common)")
    both = lama.ProbeResult.concat([a, b])
    assert both.frame["rank"].tolist() == [1, 2, 5] and both.method == "probe(common)"
    picked = both.where(both.frame["rank"] > 1)
    assert picked.frame["relation"].tolist() == ["P2", "P3"] and list(picked.frame.index) == [0, 1]
    with pytest.raises(ValueError, match="mask"):
        both.where([True])


def test_freq_baseline_ranks_by_object_counts():
    facts = [fact("a", "Paris"), fact("b", "Paris"), fact("c", "Rome"), fact("d", "Dutch", relation="P37")]
    result = baselines.freq_baseline(facts)
    assert result.frame["rank"].tolist() == [1, 1, 2, 1]
    assert result.frame["top"][2][:2] == ["Paris", "Rome"]
    assert result.frame["gold_logprob"][2] == pytest.approx(math.log(1 / 3))


# --------------------------------------------------------------------------- the three template shapes


def test_final_y_matches_a_ranking_by_hand(tiny):
    """[Y] ends the sentence: rank = 1 + #tokens with a higher next-token log-probability."""
    facts = [fact("France", "Paris"), fact("Italy", "Rome"), fact("Dutch", "Italy")]
    result = lama.probe(tiny, facts, k=5, vocab="full", progress=False)
    v = view(tiny)
    for row, f in zip(result.frame.itertuples(), facts):
        ids = torch.tensor([v.token_ids(f"The capital of {f.subject} is")])
        with torch.no_grad():
            lp = tiny.original_model(ids).logits[0, -1].float().log_softmax(-1)
        gold = v.single_token_id(f.object)
        assert row.rank == 1 + int((lp > lp[gold]).sum())
        assert row.gold_logprob == pytest.approx(float(lp[gold]), abs=1e-4)
        assert row.top_logprobs == pytest.approx(lp.topk(5).values.tolist(), abs=1e-4)
        assert row.exact


def test_inner_y_reranks_by_sentence_likelihood(tiny):
    """[Y] inside: the shortlist is ordered by log P(y + suffix | prefix), computed here by hand."""
    rescore = 6
    f = fact("Dante", "Dutch", INNER, relation="P103")
    row = lama.probe(tiny, [f], k=3, vocab="full", rescore=rescore, progress=False).frame.iloc[0]
    v = view(tiny)
    prefix = v.token_ids("Dante speaks")
    tail = v.tokenizer(" at home .", add_special_tokens=False)["input_ids"]

    def score(token: int) -> float:  # log P(token, tail | prefix) from the full logits of one sequence
        ids = torch.tensor([prefix + [token] + tail])
        with torch.no_grad():
            lp = tiny.original_model(ids).logits[0].float().log_softmax(-1)
        return float(sum(lp[len(prefix) - 1 + t, i] for t, i in enumerate([token] + tail)))

    with torch.no_grad():
        first = tiny.original_model(torch.tensor([prefix])).logits[0, -1].float().log_softmax(-1)
    full = {t: score(t) for t in first.topk(rescore).indices.tolist()}
    expected = sorted(full, key=full.get, reverse=True)[:3]
    assert row["top"] == [v.tokenizer.decode([t]).removeprefix(" ") for t in expected]
    assert row["top_logprobs"] == pytest.approx([full[t] for t in expected], abs=1e-3)
    assert row["gold_logprob"] == pytest.approx(score(v.single_token_id("Dutch")), abs=1e-3)
    # the left context alone ranks by the first term: the gold's rank among all tokens, by hand
    assert row["prefix_rank"] == 1 + int((first > first[v.single_token_id("Dutch")]).sum())


def test_multi_token_objects_ranked_by_whole_sequence(tiny):
    """probe_objects: score = sum of the object's token log-probabilities; 'French' is two tokens."""
    objects = {"P103": ["French", "Dutch", "Eiffel Tower", "Paris"]}
    facts = [fact("Danielle", "French", "The mother tongue of [X] is [Y] .", relation="P103")]
    result = lama.probe_objects(tiny, facts, k=4, objects=objects, rescore=4, close=False, progress=False)
    row = result.frame.iloc[0]
    scores = {o: sentence_score(tiny, "The mother tongue of Danielle is", " " + o) for o in objects["P103"]}
    order = sorted(scores, key=scores.get, reverse=True)
    assert row["top"] == order
    assert row["rank"] == order.index("French") + 1
    assert row["gold_logprob"] == pytest.approx(scores["French"], abs=1e-3)
    assert not row["single_token"] and row["exact"]


def test_whole_object_probe_closes_the_word(tiny):
    """At a final [Y] the sentence's end is scored after each candidate ('.' for LAMA's ' .'), so a
    candidate whose tokens begin another's no longer outranks it by construction."""
    v = view(tiny)
    objects = {"P103": ["Eiffel", "Eiffel Tower", "Paris", "Dutch"]}
    assert v.target_ids("Eiffel Tower")[: len(v.target_ids("Eiffel"))] == v.target_ids("Eiffel")
    facts = [fact("Danielle", "Eiffel Tower", "The mother tongue of [X] is [Y] .", relation="P103")]
    closed = lama.probe_objects(tiny, facts, k=4, objects=objects, rescore=4, progress=False).frame.iloc[0]
    scores = {o: sentence_score(tiny, "The mother tongue of Danielle is", f" {o}.") for o in objects["P103"]}
    order = sorted(scores, key=scores.get, reverse=True)
    assert closed["top"] == order and closed["rank"] == order.index("Eiffel Tower") + 1
    assert closed["gold_logprob"] == pytest.approx(scores["Eiffel Tower"], abs=1e-3)
    open_ = lama.probe_objects(tiny, facts, k=4, objects=objects, rescore=4, close=False, progress=False)
    top = open_.frame.iloc[0]["top"]
    assert top.index("Eiffel") < top.index("Eiffel Tower")  # unclosed: the prefix always wins
    assert analysis.prefix_shadowed(tiny, facts, objects) == [True]
    assert analysis.prefix_shadowed(tiny, [fact("a", "Paris", relation="P103")], objects) == [False]


def test_vocabulary_tokens_keeps_single_tokens_only(tiny):
    tokens = ranking.vocabulary_tokens(tiny, ["Paris", "French", "Rome", "Paris"])
    assert tokens == {view(tiny).single_token_id("Paris"): "Paris", view(tiny).single_token_id("Rome"): "Rome"}


def test_split_objects_are_skipped_by_the_token_probe(tiny):
    result = lama.probe(tiny, [fact("France", "Paris"), fact("Danielle", "French")], vocab="full", progress=False)
    assert len(result) == 1 and len(result.skipped) == 1
    assert "split" in result.skipped[0][1]


def test_split_object_sample_matches_the_two_kinds_per_relation(tiny):
    """As many one-token as split objects from each relation that has both; others left out."""
    facts = [fact(s, "Paris") for s in ("France", "Gaul", "Lutetia")] + [fact("Danielle", "French"),
             fact("Ana", "Rome", relation="P103"), fact("Bo", "Eiffel Tower", relation="P17")]
    sample = analysis.split_object_sample(tiny, facts, per_relation=5, seed=0)
    assert sorted(f.object for f in sample) == ["French", "Paris"]
    assert {f.relation for f in sample} == {"P36"}
    assert analysis.split_object_sample(tiny, facts, per_relation=5, seed=0) == sample  # seeded
    with pytest.raises(ValueError, match="per_relation"):
        analysis.split_object_sample(tiny, facts, per_relation=0)


def test_paraphrase_consistency_counts_agreeing_pairs():
    frame = pd.DataFrame({"relation": ["P36"] * 3, "uuid": ["f#0", "f#1", "f#2"], "template": ["a", "b", "c"],
                          "top": [["Paris"], ["Paris"], ["Lyon"]], "rank": [1, 1, 2]})
    table = analysis.consistency(lama.ProbeResult(frame))
    assert table.loc["P36", "consistency"] == pytest.approx(100 / 3)  # 1 agreeing pair of 3
    assert table.loc["P36", "p_at_1_mean"] == pytest.approx(200 / 3)


# --------------------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors(tiny):
    with pytest.raises(ValueError, match="no facts"):
        lama.probe(tiny, [], progress=False)
    with pytest.raises(ValueError, match=r"no \[X\]"):
        lama.probe(tiny, [fact("France", "Paris", "The capital is [Y] .")], progress=False)
    with pytest.raises(ValueError, match=r"no \[Y\]"):
        lama.probe(tiny, [fact("France", "Paris", "The capital of [X] .")], progress=False)
    with pytest.raises(lama.UnknownRelationError, match="P9999"):
        lama.probe(tiny, [fact("France", "Paris", relation="P9999")], progress=False)
    with pytest.raises(lama.UnknownRelationError, match="P9999"):
        lama.lama_facts("TREx", ["P9999"])
    with pytest.raises(ValueError, match="vocab"):
        lama.probe(tiny, [fact("France", "Paris")], vocab="bert", progress=False)
    with pytest.raises(ValueError, match="subject is empty"):
        lama.query(tiny, CAPITAL, "  ")
    with pytest.raises(lama.UnknownRelationError, match="P9999"):
        lama.query(tiny, "", "France", relation="P9999")


# --------------------------------------------------------------------------- the default model


@pytest.mark.slow
def test_default_model_knows_the_capital_of_france():
    model = load_model()
    result = lama.probe(model, [fact("France", "Paris")], progress=False)
    assert result.frame["rank"].iloc[0] == 1 and result.frame["top"].iloc[0][0] == "Paris"
    assert lama.query(model, CAPITAL, "France", k=3).iloc[0]["answer"] == "Paris"
    assert len(ranking.vocabulary_tokens(model)) > 15_000  # most of LAMA's 21,018 words are one token


# --------------------------------------------------------------------------- a fixed sample, probed again and again


def _answered_by_the_probe(model, facts) -> list[bool]:
    return (lama.probe(model, facts, k=1, progress=False).frame["rank"] == 1).tolist()


def _first_and_second(model, facts) -> list:
    """Each fact twice: with the word the probe ranks first as its object, and with its second
    (answered first once, then not), so that a comparison with the probe sees both answers."""
    top = lama.probe(model, facts, k=2, progress=False).frame["top"]
    return [fact(f.subject, words[r], f.template, f.relation) for f, words in zip(facts, top) for r in (0, 1)]


def test_a_repeated_probe_answers_as_the_probe_does_before_and_after_changes(tiny):
    """P@1 of the same facts, final and inner [Y], unedited, after a change of one block (run again from
    it) and of the final norm (recorded again), each as lama.probe finds it on the model as it is."""
    subjects = ["France", "Italy", "Dante", "Japan", "Danielle", "Germany"]
    facts = _first_and_second(tiny, [fact(s, "Paris") for s in subjects]
                              + [fact(s, "Dutch", INNER, relation="P103") for s in subjects])
    facts.append(fact("France", "Zzyzx"))  # not one token of the common vocabulary: skipped, as the probe skips it
    probe = repeated.RepeatedProbe(tiny, facts)
    assert len(probe.facts) == len(facts) - 1 and probe.skipped[0][0].object == "Zzyzx"
    expected = _answered_by_the_probe(tiny, facts)
    assert 0 < sum(expected) < len(expected)  # both answers occur
    assert probe.answered_first(tiny).tolist() == expected
    v = view(tiny)
    blocks = repeated.parameter_blocks(v)
    mlp = v.mlp_out_parameter(1)
    norm = next(p for name, p in tiny.named_parameters() if blocks[name] < 0 and "norm" in name)  # the final norm
    saved = mlp.detach().clone(), norm.detach().clone()
    try:
        with torch.no_grad():
            mlp.mul_(3.0)
        assert probe.answered_first(tiny).tolist() == _answered_by_the_probe(tiny, facts)
        with torch.no_grad():
            norm.add_(0.5)
        assert probe.answered_first(tiny).tolist() == _answered_by_the_probe(tiny, facts)
    finally:
        with torch.no_grad():
            mlp.copy_(saved[0])
            norm.copy_(saved[1])
    assert probe.answered_first(tiny).tolist() == expected
    with pytest.raises(ValueError, match="another model"):
        probe.answered_first(load_model("tiny-gpt2", device="cpu"))


def test_recorded_rows_give_a_forward_pass_from_the_lowest_changed_block(tiny):
    v = view(tiny)
    rows = [v.token_ids(t) for t in ("The capital of France is", "Dante speaks", "Rome is the capital of", "a")]
    recorded = repeated.RecordedRows(batch_size=2, slack=1)

    def check(some):
        got = recorded.final_hidden(v, some)
        for row, hidden in zip(some, got):
            with torch.no_grad():
                full = v.final_hidden(torch.tensor([row]))[0]
            torch.testing.assert_close(hidden, full, atol=1e-5, rtol=1e-5)

    check(rows)
    blocks = repeated.parameter_blocks(v)
    assert {blocks[name] for name, p in tiny.named_parameters() if p is v.mlp_out_parameter(1)} == {1}
    mlp = v.mlp_out_parameter(1)
    saved = mlp.detach().clone()
    before = v.parameter_digests()
    try:
        with torch.no_grad():
            mlp.mul_(2.0)
        assert repeated.lowest_changed_layer(blocks, before, v.parameter_digests(), v.n_layers) == 1
        check(rows[1:3] + rows[:1])  # some rows of recorded batches, in another order
    finally:
        with torch.no_grad():
            mlp.copy_(saved)
    assert repeated.lowest_changed_layer(blocks, before, v.parameter_digests(), v.n_layers) == v.n_layers
    check(rows + [v.token_ids("a new row")])
    assert recorded.floats > 0 and not any(b.recording.keys for b in recorded.batches)
    recorded = repeated.RecordedRows(max_floats=0)  # nothing recorded: full forward passes
    check(rows)
    assert not recorded.batches and not recorded.where


def test_lowest_changed_layer_by_hand():
    blocks = {"embed": -1, "blocks.0.w": 0, "blocks.2.w": 2}
    before = {"embed": "a", "blocks.0.w": "b", "blocks.2.w": "c"}
    assert repeated.lowest_changed_layer(blocks, before, dict(before), 3) == 3
    assert repeated.lowest_changed_layer(blocks, before, {**before, "blocks.2.w": "x"}, 3) == 2
    assert repeated.lowest_changed_layer(blocks, before, {**before, "blocks.2.w": "x", "blocks.0.w": "y"}, 3) == 0
    assert repeated.lowest_changed_layer(blocks, before, {**before, "embed": "x"}, 3) == 0
    assert repeated.length_batches([5, 3, 4, 9, 3], 2, 1) == [[1, 4], [2, 0], [3]]
