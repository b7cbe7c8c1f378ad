"""Edits judged outside teacher forcing (factlens.editing.in_the_wild, Yang et al. 2025): the success rule on
hand-made generations, the scores of a tiny model against the book's own teacher forcing and generation, the
summaries and the gap by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from factlens import data
from factlens.core.models import view
from factlens.editing import in_the_wild, rome
from factlens.editing.evaluation import target_token_accuracy
from factlens.editing.generation import generate
from factlens.evidence import stats

TINY_MODELS = ("tiny-gemma3",)
FAST = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=3, mom2_samples=300)


pytestmark = pytest.mark.usefixtures("one_thread")  # the conftest's: tiny models on one thread


@pytest.mark.parametrize("continuation, target, expected", [
    (" Rome, the capital of Italy", "Rome", True),
    (" Rome", " Rome", True),
    ("ROME is", "Rome", True),                       # case aside
    ("  New   York City", "New York", True),         # runs of white space aside
    (" Ｒome.", "Rome", True),                         # NFKC: the full-width letter is an R
    (" Romeo and Juliet", "Rome", False),            # the word goes on
    (" the city of Rome", "Rome", False),            # not the answer's first words
    (" New Yorker", "New York", False),
    (" Ro", "Rome", False),                          # cut short
    ("", "Rome", False),
])
def test_the_success_rule_on_hand_made_generations(continuation, target, expected):
    assert in_the_wild.answer_matches(continuation, target) is expected


def test_an_empty_target_is_an_error():
    with pytest.raises(ValueError, match="target is empty"):
        in_the_wild.answer_matches(" Rome", "  ")
    with pytest.raises(ValueError, match="extra_tokens"):
        in_the_wild.WildSettings(extra_tokens=0)


def test_the_scores_are_the_books_teacher_forcing_and_generation(tiny):
    case = data.counterfact()[0]
    found = in_the_wild.wild_scores(tiny, case)
    prompts = {"rewrite": case.filled_prompt, "paraphrase": case.paraphrase_prompts[0]}
    n_new = len(view(tiny).target_ids(case.target_new))
    for kind, prompt in prompts.items():
        assert found[f"teacher_forced_{kind}"] == pytest.approx(
            float(target_token_accuracy(tiny, [prompt], [case.target_new])[0]))
        text = generate(tiny, [prompt], n_new + 3)[0]
        assert found[f"text_{kind}"] == text
        assert found[f"generated_{kind}"] == float(in_the_wild.answer_matches(text, case.target_new))
        assert found[f"probability_{kind}"] in (0.0, 1.0)
    none = in_the_wild.wild_scores(tiny, case, in_the_wild.WildSettings(paraphrases=0))
    assert np.isnan(none["generated_paraphrase"]) and none["text_paraphrase"] == ""


def test_an_edit_is_scored_then_undone(tiny):
    v = view(tiny)
    cases = data.counterfact()[:2]
    weight = v.mlp_out_weight(FAST.layer).clone()
    edited = in_the_wild.evaluate_in_the_wild(tiny, cases, rome.ROME(FAST), progress=False)
    assert torch.equal(v.mlp_out_weight(FAST.layer), weight)
    assert edited["case_id"].tolist() == [c.case_id for c in cases] and edited["edit_seconds"].notna().all()
    unedited = in_the_wild.evaluate_in_the_wild(tiny, cases, progress=False)
    assert unedited["edit_seconds"].isna().all()
    assert unedited.loc[0, "text_rewrite"] == in_the_wild.wild_scores(tiny, cases[0])["text_rewrite"]


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"case_id": range(6),
                         "teacher_forced_rewrite": [1.0, 1.0, 0.5, 1.0, 0.75, 1.0],
                         "probability_rewrite": [1.0, 1.0, 0.0, 1.0, 1.0, 1.0],
                         "generated_rewrite": [1.0, 0.0, 0.0, 1.0, 0.0, 1.0],
                         "teacher_forced_paraphrase": [0.5] * 6, "probability_paraphrase": [0.0] * 6,
                         "generated_paraphrase": [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]})


def test_summaries_and_the_gap_by_hand():
    frame = _frame()
    summary = in_the_wild.summarize_wild(frame, n_boot=200)
    low, high = stats.wilson(3, 6)
    assert summary["generated_rewrite"] == pytest.approx({"mean": 50.0, "low": 100 * low, "high": 100 * high})
    assert summary["teacher_forced_rewrite"]["mean"] == pytest.approx(100 * 5.25 / 6)
    diff, low, high = in_the_wild.gap(frame)
    assert (diff, low, high) == pytest.approx(tuple(100 * x for x in stats.newcombe(
        frame["teacher_forced_rewrite"], frame["generated_rewrite"], paired=True)))
    assert diff == pytest.approx(100 * (5.25 - 3) / 6) and low < diff < high
    # every case agrees: the interval still spans what 6 cases cannot rule out, not the point [0, 0]
    agreeing = frame.assign(teacher_forced_rewrite=1.0, generated_rewrite=1.0)
    diff, low, high = in_the_wild.gap(agreeing)
    assert diff == 0 and low == pytest.approx(-high) and high > 30
    assert in_the_wild.gap(frame, "paraphrase")[0] == pytest.approx(100 * (3 - 1) / 6)
    with pytest.raises(ValueError, match="kind must be"):
        in_the_wild.gap(frame, "neighbourhood")


def test_a_claim_stands_beside_the_papers_row():
    frames = {"ROME": _frame(), "FT": _frame()}
    evidence = in_the_wild.claim_gap(frames, "FT")
    assert evidence["paper"].source.startswith("Yang et al. 2025, Table 3") and evidence["n"] == 6
    assert evidence["paper"].value == pytest.approx(100 * np.mean([1.0 - 0.867, 1.0 - 0.733, 1.0 - 0.916]))
    assert evidence["ours"] == pytest.approx(in_the_wild.gap(frames["FT"])[0])
    table = in_the_wild.gap_table(frames, n_boot=50)
    assert list(table["method"]) == ["ROME", "ROME", "FT", "FT"]
    assert table["paper's gap"].iloc[0] == "+12.7"


@pytest.mark.slow
def test_a_rome_edit_of_the_default_model_is_said_in_generation():
    """The editing chapter's example on the default model: after ROME writes "medicine" for Marie Curie's field,
    the teacher-forced tokens and the greedy continuation both give it; before, neither does."""
    from factlens.core.models import load_model

    model = load_model("gemma-3-270m")
    case = next(c for c in data.counterfact() if c.case_id == 687)
    before = in_the_wild.wild_scores(model, case)
    assert before["teacher_forced_rewrite"] < 1 and before["generated_rewrite"] == 0.0
    edited = in_the_wild.evaluate_in_the_wild(model, [case], rome.ROME(), progress=False).iloc[0]
    print(f"after: {edited['text_rewrite']!r}, paraphrase {edited['text_paraphrase']!r}")
    assert edited["teacher_forced_rewrite"] == 1.0 and edited["generated_rewrite"] == 1.0
    assert in_the_wild.wild_scores(model, case)["text_rewrite"] == before["text_rewrite"]  # undone
