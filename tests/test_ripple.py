"""The ripple report (factlens.ripple) on a tiny random model: it lists exactly the answers that changed."""

from __future__ import annotations

import pytest
import torch

from factlens import probing, ripple
from factlens.models import load_model, view
from factlens.rome import EditRequest

REQUEST = EditRequest("The native language of {} is", "Danielle Darrieux", "Dutch")
REVERSE = [("The most famous speaker of Dutch is", "Danielle Darrieux"), ("Dutch is spoken by", "Danielle Darrieux")]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt2", device="cpu")


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
    before = probing.probe(tiny, facts, k=1, progress=False).frame["top"].str[0].tolist()
    original = v.mlp_out_weight(2).detach().clone()
    try:
        v.set_mlp_out_weight(2, -3 * original)  # a crude edit that moves many answers
        after = probing.probe(tiny, facts, k=1, progress=False).frame["top"].str[0].tolist()
        report = probe.report()
    finally:
        v.set_mlp_out_weight(2, original)
    frame = probing.probe(tiny, facts, k=1, progress=False).frame
    expected = {(s, o) for s, o, b, a in zip(frame["subject"], frame["object"], before, after) if b != a}
    listed = report.changed[report.changed["kind"] == "relation"]
    assert expected, "the crude edit changes some answers"
    assert set(zip(listed["subject"], listed["object"])) == expected
    assert report.counts.loc["relation", "changed"] == len(expected)
    assert set(report.changed["kind"]) <= set(ripple.KINDS)
    assert not torch.equal(torch.tensor(report.reverse["log_p_before"].to_numpy()),
                           torch.tensor(report.reverse["log_p_after"].to_numpy()))


def test_unknown_relation_is_a_clear_error(tiny):
    with pytest.raises(probing.UnknownRelationError, match="P9999"):
        ripple.RippleProbe(tiny, [REQUEST], request_relations=["P9999"])
