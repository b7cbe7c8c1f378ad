"""CounterFact and zsRE metrics (factlens.editing.evaluation): hand-computed numbers and exact invariants
on a tiny random model, and the unedited default model on a fact it knows."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from factlens.core.models import load_model, view
from factlens.data import CounterFactCase
from factlens.editing import evaluation
from factlens.editing.requests import Edit, Editor, EditRequest
from factlens.evidence.stats import newcombe, wilson
from factlens.probing.repeated import RecordedRows

TINY_MODELS = ("tiny-gemma3",)  # the conftest's `tiny` fixture loads these


def _case(target_new="Seattle", target_true="Paris"):
    return CounterFactCase(
        case_id=7, prompt="{} is located in the city of", subject="The Eiffel Tower",
        target_new=target_new, target_true=target_true,
        paraphrase_prompts=("The Eiffel Tower is in",),
        neighborhood_prompts=(("The capital of France is", "Paris"),),
    )


# --------------------------------------------------------------------------- fluency and S, by hand


def test_ngram_entropy_by_hand():
    # "a b a b": bigrams ab, ba, ab -> H2 = H(2/3, 1/3) = 0.918296 bits; trigrams aba, bab -> H3 = 1
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert evaluation.ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert evaluation.ngram_entropy("Paris Paris Paris Paris Paris") == 0.0  # one repeated n-gram
    assert evaluation.ngram_entropy("Paris, France.") > evaluation.ngram_entropy("Paris Paris Paris")


def test_harmonic_mean_by_hand():
    assert evaluation.harmonic_mean(1.0, 0.5, 0.25) == pytest.approx(3 / 7)
    assert evaluation.harmonic_mean(1.0, 0.0, 1.0) == 0.0


def test_paired_differences_by_hand():
    a = pd.DataFrame({"case_id": [1, 2, 3, 4], "ES": [1.0, 1.0, 0.0, 1.0], "PS": [1.0] * 4, "NS": [1.0, 0.0, 1.0, 1.0],
                      "GE": [2.0, 4.0, 4.0, 2.0]})
    b = pd.DataFrame({"case_id": [4, 3, 2, 1], "ES": [1.0, 0.0, 0.0, 0.0], "PS": [1.0] * 4, "NS": [1.0] * 4,
                      "GE": [2.0, 2.0, 4.0, 2.0]})  # same cases, another order: matched on case_id
    d, low, high = evaluation.paired_difference(a, b, "ES", n_boot=300)
    assert d == pytest.approx(50.0)
    # a proportion: Newcombe's interval, on the pairs matched by case_id (b lists cases 4, 3, 2, 1)
    _, *expected = newcombe([1, 1, 0, 1], [0, 0, 0, 1], paired=True)
    assert (low, high) == pytest.approx(tuple(100 * x for x in expected))
    # a share of a case's prompts (two paraphrases): Newcombe's with the shares as the closest pairing,
    # not a bootstrap that is the point [0, 0] when every case agrees
    shares_a, shares_b = a.assign(PS=[0.5, 1.0, 1.0, 0.0]), b.assign(PS=[0.0, 1.0, 0.0, 0.5])  # b: cases 4, 3, 2, 1
    d, low, high = evaluation.paired_difference(shares_a, shares_b, "PS")
    _, *expected = newcombe([0.5, 1.0, 1.0, 0.0], [0.5, 0.0, 1.0, 0.0], paired=True)
    assert d == pytest.approx(25.0) and (low, high) == pytest.approx(tuple(100 * x for x in expected))
    same, low, high = evaluation.paired_difference(shares_a, shares_a, "PS")
    assert same == 0.0 and low < -20 and high > 20  # four agreeing cases leave a wide interval
    d, _, _ = evaluation.paired_difference(a, b, "S", n_boot=10)
    assert d == pytest.approx(100 * (3 / (1 / 0.75 + 1 + 1 / 0.75) - 3 / (1 / 0.25 + 1 + 1)))
    d, low, high = evaluation.paired_difference(a, b, "GE", relative=True, n_boot=300)
    assert d == pytest.approx(100 * (3 / 2.5 - 1))
    same, low, high = evaluation.paired_difference(a, a, "GE", n_boot=50)
    assert same == low == high == 0.0  # paired bootstrap: a method against itself has no spread
    with pytest.raises(ValueError, match="same cases"):
        evaluation.paired_difference(a, b.iloc[:3], "ES")


def test_paper_differences_come_from_the_registry():
    from factlens.evidence.papers import paper

    s = evaluation.paper_difference("counterfact", "ROME", "FT", "S")
    assert s.value == pytest.approx(paper("rome.counterfact.ROME.S").value - paper("rome.counterfact.FT.S").value)
    assert "Table 4" in s.source and "S of ROME minus FT" in s.source
    ge = evaluation.paper_difference("counterfact", "ROME", "unedited", "GE", relative=True)
    unedited, edited = paper("rome.counterfact.unedited.GE").value, paper("rome.counterfact.ROME.GE").value
    assert ge.value == pytest.approx(100 * (edited / unedited - 1)) and ge.value < 0


def test_summarize_means_intervals_and_score():
    frame = pd.DataFrame({"ES": [1.0, 0.0, 1.0, 1.0], "PS": [1.0, 1.0, 0.0, 1.0], "NS": [1.0] * 4,
                          "EM": [0.5, -0.5, 0.5, 0.5], "PM": [0.1] * 4, "NM": [0.2] * 4, "GE": [math.nan] * 4})
    s = evaluation.summarize(frame, n_boot=200)
    assert s["ES"]["mean"] == pytest.approx(75.0)
    assert s["EM"]["mean"] == pytest.approx(25.0)
    assert s["S"]["mean"] == pytest.approx(100 * 3 / (1 / 0.75 + 1 / 0.75 + 1))
    assert "GE" not in s  # no generation, no fluency
    for m in ("ES", "S", "EM"):
        assert s[m]["low"] <= s[m]["mean"] <= s[m]["high"]
    assert s["ES"]["low"] < s["ES"]["high"]
    # proportions get Wilson's interval: 4 of 4 is not a certainty (a bootstrap would say [100, 100])
    assert (s["NS"]["low"], s["NS"]["high"]) == pytest.approx(tuple(100 * x for x in wilson(4, 4)))
    assert (s["ES"]["low"], s["ES"]["high"]) == pytest.approx(tuple(100 * x for x in wilson(3, 4)))
    assert s["EM"]["low"] < s["EM"]["high"]  # a mean of other values: the bootstrap
    assert evaluation.summarize(frame, n_boot=200) == s  # seeded


# --------------------------------------------------------------------------- teacher forcing


def _full_logprobs(model, prompt, target):
    v = view(model)
    head, tail = v.token_ids(prompt), v.target_ids(target)
    logits = model(torch.tensor([head + tail]))[0].float()
    rows = torch.arange(len(head) - 1, len(head) - 1 + len(tail))
    logp = logits.log_softmax(-1)[rows, torch.tensor(tail)]
    hits = (logits[rows].argmax(-1) == torch.tensor(tail)).float()
    return logp, hits


def test_target_scores_match_a_full_forward_pass_and_ignore_batching(tiny):
    prompts = ["The Eiffel Tower is located in", "Dante was born in", "Rome is the capital of"]
    targets = ["the city of Paris", "Florence", "Italy. The"]
    assert len(view(tiny).target_ids(targets[0])) > 1  # a multi-token target is covered
    lp = evaluation.target_log_probs(tiny, prompts, targets)
    acc = evaluation.target_token_accuracy(tiny, prompts, targets)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        full_lp, full_hits = _full_logprobs(tiny, p, t)
        torch.testing.assert_close(lp[i], full_lp.mean(), atol=1e-4, rtol=1e-4)
        assert acc[i].item() == pytest.approx(full_hits.mean().item())
    # one at a time (no padding) gives the same numbers as the padded batch
    one = torch.cat([evaluation.target_log_probs(tiny, [p], [t]) for p, t in zip(prompts, targets)])
    torch.testing.assert_close(one, lp, atol=1e-4, rtol=1e-4)


def test_target_scores_from_recorded_rows_are_the_forward_passes_scores(tiny):
    """Rows recorded once and re-run from the lowest changed block give the scores of full forward passes,
    unedited and after a change of block 1, for rows recorded before and rows new to it."""
    prompts = ["The Eiffel Tower is located in", "Dante was born in", "Rome is the capital of"] * 2
    targets = ["the city of Paris", "Florence", "Italy", "Paris", "Rome", "France"]
    recorded = RecordedRows()
    for some in (slice(0, 4), slice(1, 6)):
        torch.testing.assert_close(evaluation.target_log_probs(tiny, prompts[some], targets[some], recorded=recorded),
                                   evaluation.target_log_probs(tiny, prompts[some], targets[some]),
                                   atol=1e-5, rtol=1e-5)
    mlp = view(tiny).mlp_out_parameter(1)
    with Edit(tiny, "scale block 1") as edit:
        edit.cover(1)
        with torch.no_grad():
            mlp.mul_(2.0)
        for some in (slice(0, 6), slice(2, 3)):
            torch.testing.assert_close(
                evaluation.target_log_probs(tiny, prompts[some] + ["Paris is in"], targets[some] + ["France"],
                                            recorded=recorded),
                evaluation.target_log_probs(tiny, prompts[some] + ["Paris is in"], targets[some] + ["France"]),
                atol=1e-5, rtol=1e-5)


def test_target_scores_reject_mismatched_lists(tiny):
    with pytest.raises(ValueError, match="one target per prompt"):
        evaluation.target_log_probs(tiny, ["a", "b"], ["c"])


# --------------------------------------------------------------------------- CounterFact and zsRE


def test_counterfact_scores_flip_when_the_targets_swap(tiny):
    a = evaluation.counterfact_scores(tiny, _case("Seattle", "Paris"))
    b = evaluation.counterfact_scores(tiny, _case("Paris", "Seattle"))
    assert a["ES"] + b["ES"] == 1.0 and a["PS"] + b["PS"] == 1.0
    assert a["EM"] == pytest.approx(-b["EM"]) and a["PM"] == pytest.approx(-b["PM"])
    assert math.isnan(a["GE"])
    # P(o*) and P(o) by hand, from the teacher-forced log-probabilities
    lp = evaluation.target_log_probs(tiny, ["The Eiffel Tower is located in the city of"] * 2, ["Seattle", "Paris"])
    assert a["EM"] == pytest.approx((lp[0].exp() - lp[1].exp()).item(), abs=1e-6)
    assert a["ES"] == float(lp[0] > lp[1])


def test_counterfact_generation_gives_a_fluency_score(tiny):
    scores = evaluation.counterfact_scores(tiny, _case(), generate_tokens=6)
    assert scores["GE"] > 0


class _Noop(Editor):
    """Records layer 1 and changes nothing."""

    name = "noop"

    def write(self, model, requests):
        return Edit(model, self.name, requests, layers=[1])


class _Scramble(Editor):
    """Replaces layer 1's values by noise."""

    name = "scramble"

    def write(self, model, requests):
        edit = Edit(model, self.name, requests, layers=[1])
        view(model).set_mlp_out_weight(1, torch.randn_like(edit.original[1]))
        return edit


def test_evaluate_undoes_every_edit_and_a_noop_matches_the_unedited_model(tiny):
    before = [p.detach().clone() for p in tiny.parameters()]
    cases = [_case(), _case("Rome", "Paris")]
    unedited = evaluation.evaluate_counterfact(tiny, cases, None, generate_tokens=4, progress=False)
    noop = evaluation.evaluate_counterfact(tiny, cases, _Noop(), generate_tokens=4, progress=False)
    scrambled = evaluation.evaluate_counterfact(tiny, cases, _Scramble(), generate_tokens=4, progress=False)
    metrics = ["ES", "EM", "PS", "PM", "NS", "NM", "GE"]  # GE: the same prompts, lengths and seed
    pd.testing.assert_frame_equal(unedited[metrics], noop[metrics])
    assert not scrambled[metrics].equals(unedited[metrics])  # the edit was in force while scoring
    assert list(unedited["case_id"]) == [7, 7]
    for p, q in zip(before, tiny.parameters()):
        assert torch.equal(p, q)


def test_zsre_edit_follows_rome_and_scores_are_token_accuracies(tiny):
    # ROME's MENDQADataset edits toward answers[0], the true answer, not MEND's "alt"
    record = {"subject": "Dante", "src": "Where was Dante born?", "alt": "Paris",
              "rephrase": "What is the birthplace of Dante?", "loc": "nq question: capital of italy",
              "loc_ans": "Rome", "answers": ["Florence", "Firenze"]}
    case = evaluation.zsre_edit(record, 3)
    assert case.request == EditRequest("Where was {} born?", "Dante", "Florence")
    assert case.neighborhood_prompt == "nq question: capital of italy?"
    scores = evaluation.zsre_scores(tiny, case)
    acc = evaluation.target_token_accuracy(tiny, ["Where was Dante born?"], ["Florence"])
    assert scores["efficacy"] == pytest.approx(acc.item())
    assert all(0.0 <= x <= 1.0 for x in scores.values())
    with pytest.raises(ValueError, match="not in the question"):
        evaluation.zsre_edit({**record, "subject": "Petrarch"})
    assert evaluation.zsre_usable([record, {**record, "subject": "Petrarch"}]) == [record]
    from factlens.data import ZsreCase

    typed = ZsreCase(case_id=3, subject="Dante", src=record["src"], rephrase=record["rephrase"], target_new="Paris",
                     answers=("Florence", "Firenze"), loc=record["loc"], loc_ans="Rome")
    assert evaluation.zsre_edit(typed) == case
    with pytest.raises(ValueError, match="no answer"):
        evaluation.zsre_edit(ZsreCase(4, "Dante", record["src"], record["rephrase"], "Paris", (), record["loc"], "R"))


def test_a_case_is_scored_in_one_forward_pass_with_shared_rows(tiny, monkeypatch):
    v = view(tiny)
    shapes = []
    final_hidden = v.final_hidden

    def counted(ids, *args, **kwargs):
        shapes.append(tuple(ids.shape))
        return final_hidden(ids, *args, **kwargs)

    monkeypatch.setattr(v, "final_hidden", counted)
    case = _case("Seattle", "Paris")
    assert len(v.target_ids("Seattle")) == 2 and len(v.target_ids("Paris")) == 1
    scores = evaluation.counterfact_scores(tiny, case)
    # 3 prompts x 2 targets: one pass over 3 rows, prompt + " Seatt" for each prompt (" Paris" is
    # read at the prompt's last position, which that row has too)
    assert len(shapes) == 1 and shapes[0][0] == 3
    monkeypatch.setattr(v, "final_hidden", final_hidden)
    prompt = "The Eiffel Tower is located in the city of"
    one_by_one = [evaluation.target_log_probs(tiny, [prompt], [t]).item() for t in ("Seattle", "Paris")]
    assert scores["ES"] == float(one_by_one[0] > one_by_one[1])


def test_teacher_forcing_reads_each_position_once_and_the_same_numbers(tiny):
    """Two targets after one prompt read the same logits, unembedded once: the numbers are those of
    unembedding every read (a row of a product does not depend on the others; one row alone is never
    unembedded where several reads share it)."""
    v = view(tiny)
    pairs = [("The Eiffel Tower is in", " Paris"), ("The Eiffel Tower is in", " Seattle"),
             ("The capital of France is", " Paris"), ("The capital of France is", " Rome"),
             ("Dante was born in", " Rome")]
    for chosen in (pairs, pairs[:2], pairs[2:4], pairs[4:]):  # [2:4]: two one-token targets, one read
        prompts, targets = [p for p, _ in chosen], [t for _, t in chosen]
        logps, hits = evaluation._teacher_forced(tiny, prompts, targets)
        heads, tails = [v.token_ids(p) for p in prompts], [v.target_ids(t) for t in targets]
        rows, row_of = evaluation._rows(heads, tails)
        with torch.no_grad():  # the same forward pass, then every read its own row of one product
            hidden = v.final_hidden(v.batch(rows).ids)
            reads = [hidden[row_of[i], len(h) - 1 + j] for i, (h, t) in enumerate(zip(heads, tails))
                     for j in range(len(t))]
            tokens = [token for t in tails for token in t]
            logits = v.unembed(torch.stack(reads)[:, None])[:, 0].float()
            expected = logits.log_softmax(-1)[torch.arange(len(tokens)), torch.tensor(tokens)]
            expected_hits = (logits.argmax(-1) == torch.tensor(tokens)).float()
        assert torch.equal(torch.cat(logps), expected) and torch.equal(torch.cat(hits), expected_hits)


# --------------------------------------------------------------------------- the default model


@pytest.mark.slow
def test_unedited_default_model_prefers_the_true_object():
    model = load_model()
    case = CounterFactCase(
        case_id=0, prompt="{} is located in the city of", subject="The Eiffel Tower",
        target_new="Rome", target_true="Paris", paraphrase_prompts=("The Eiffel Tower can be found in",),
        neighborhood_prompts=(("The Louvre is located in the city of", "Paris"),),
    )
    scores = evaluation.counterfact_scores(model, case)
    assert scores["ES"] == 0.0 and scores["EM"] < 0   # before an edit: Paris beats Rome
    assert scores["NS"] == 1.0 and scores["NM"] > 0
