"""The ripple report (factlens.editing.ripple) on a tiny random model: it lists exactly the answers that changed."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from factlens.core.models import view
from factlens.editing import evaluation, ripple
from factlens.editing.requests import EditRequest
from factlens.evidence.stats import newcombe
from factlens.probing import lama

REQUEST = EditRequest("The native language of {} is", "Danielle Darrieux", "Dutch")
REVERSE = [("The most famous speaker of Dutch is", "Danielle Darrieux"), ("Dutch is spoken by", "Danielle Darrieux")]


TINY_MODELS = ("tiny-gpt2",)  # the conftest's `tiny` fixture loads these


def _probe(tiny):
    return ripple.RippleProbe(tiny, [REQUEST], ["P103"], per_relation=40, pararel_per_relation=10,
                              request_relations=["P103"], reverse=REVERSE)


def test_nothing_changed_nothing_listed(tiny):
    report = _probe(tiny).report()
    assert report.changed.empty
    assert report.counts.loc["relation", "asked"] > 0 and report.counts.loc["paraphrase", "asked"] > 0
    assert (report.reverse["log_p_before"] == report.reverse["log_p_after"]).all()


def test_the_report_lists_exactly_the_answers_that_changed(tiny):
    v = view(tiny)
    probe = _probe(tiny)
    facts = probe.questions["relation"]
    assert all(f.subject != REQUEST.subject for f in facts)  # the edited subject is left out
    before = lama.probe(tiny, facts, k=1, progress=False).frame["top"].str[0].tolist()
    original = v.mlp_out_weight(2).detach().clone()
    try:
        v.set_mlp_out_weight(2, -3 * original)  # a crude edit that moves many answers
        edited = lama.probe(tiny, facts, k=1, progress=False).frame
        after = edited["top"].str[0].tolist()
        report = probe.report()
    finally:
        v.set_mlp_out_weight(2, original)
    frame = lama.probe(tiny, facts, k=1, progress=False).frame
    expected = {(s, o) for s, o, b, a in zip(frame["subject"], frame["object"], before, after) if b != a}
    listed = report.changed[report.changed["kind"] == "relation"]
    assert expected, "the crude edit changes some answers"
    assert set(zip(listed["subject"], listed["object"])) == expected
    assert report.counts.loc["relation", "changed"] == len(expected)
    assert set(report.changed["kind"]) <= set(ripple.KINDS)
    assert not torch.equal(torch.tensor(report.reverse["log_p_before"].to_numpy()),
                           torch.tensor(report.reverse["log_p_after"].to_numpy()))
    # P@1 after minus before (ROME's specificity) against the probe's own ranks, by hand
    right_before, right_after = (frame["rank"] == 1).to_numpy(), (edited["rank"] == 1).to_numpy()
    relation = report.answers[report.answers["kind"] == "relation"]
    assert relation["right_before"].tolist() == right_before.tolist()
    assert relation["right_after"].tolist() == right_after.tolist()
    assert report.counts.loc["relation", "right_after"] == right_after.sum()
    diff, low, high, n = report.p_at_1_change("relation")
    assert n == len(facts) and low <= diff <= high
    assert diff == pytest.approx(100 * (right_after.mean() - right_before.mean()))
    with pytest.raises(ValueError, match="no 'reverse' questions"):
        report.p_at_1_change("reverse")


def test_unknown_relation_is_a_clear_error(tiny):
    with pytest.raises(lama.UnknownRelationError, match="P9999"):
        ripple.RippleProbe(tiny, [REQUEST], request_relations=["P9999"])


def test_p_at_1_change_is_the_paired_difference_of_accuracies():
    answers = pd.DataFrame({"kind": ["relation"] * 4 + ["edited"], "right_before": [True, True, True, False, False],
                            "right_after": [False, False, True, False, True]})
    report = ripple.RippleReport(answers, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    diff, low, high, n = report.p_at_1_change("relation")
    assert (diff, n) == (-50.0, 4)  # 1 of 4 right after, 3 of 4 before
    _, *expected = newcombe([0, 0, 1, 0], [1, 1, 1, 0], paired=True)  # Newcombe's, paired by question
    assert (low, high) == pytest.approx(tuple(100 * x for x in expected)) and -100.0 <= low < diff < high
    edited = report.p_at_1_change("edited")
    assert (edited[0], edited[3]) == (100.0, 1)
    unchanged = answers.assign(right_after=answers["right_before"])
    same = ripple.RippleReport(unchanged, pd.DataFrame(), pd.DataFrame(), pd.DataFrame()).p_at_1_change("relation")
    assert same[0] == 0.0 and same[1] < -20 and same[2] > 20  # four unchanged answers: not the point [0, 0]


def test_neighbourhood_scores_compare_the_true_object_with_the_target(tiny):
    facts = _probe(tiny).questions["relation"][:6]
    scores = ripple.neighbourhood_scores(tiny, facts, "Rome")
    assert 0 < len(scores) <= len(facts)
    for _, row in scores.iterrows():
        fact = next(f for f in facts if f.subject == row["subject"] and f.object == row["object"])
        prefix = fact.template.split("[Y]")[0].replace("[X]", fact.subject).rstrip()
        true, new = (float(x) for x in evaluation.target_log_probs(tiny, [prefix, prefix], [fact.object, "Rome"]))
        assert row["NS"] == float(true > new) and row["NM"] == pytest.approx(math.exp(true) - math.exp(new), abs=1e-6)
