"""The widgets (factlens.show.widgets) driven in-process on tiny random models: what they show, the
one-line messages for bad input, one run at a time, and an editor that costs no edit to create.

The same widgets in JupyterLab in a real browser: tests/test_widgets_live.py.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import ipywidgets as w
import pandas as pd
import pytest
import torch

from factlens import data
from factlens.core.models import view
from factlens.core.view import SubjectNotFoundError
from factlens.editing import rome
from factlens.editing.requests import EditRequest
from factlens.locating.tracing import TraceSettings
from factlens.probing.lama import UnknownRelationError, query
from factlens.show import after_widgets, widgets

FAST = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=4, mom2_samples=300)


TINY_MODELS = ("tiny-gemma3",)  # the conftest's `tiny` fixture loads these


class Shown:
    """Stands in for IPython's display: records what a widget displays and its updates."""

    def __init__(self):
        self.items: list[list[object]] = []

    def __call__(self, obj, display_id=False):
        self.items.append([obj])
        shown = self

        class Handle:
            index = len(self.items) - 1

            def update(self, new):
                shown.items[self.index].append(new)

        return Handle()

    def box(self) -> w.VBox:
        return self.items[0][0]

    def latest(self, i: int = 1) -> object:
        return self.items[i][-1]


def find(box: w.Widget, name: str) -> w.Widget:
    """The control of ``box`` with CSS class ``factlens-<name>``."""
    if f"factlens-{name}" in getattr(box, "_dom_classes", ()):
        return box
    for child in getattr(box, "children", ()):
        try:
            return find(child, name)
        except LookupError:
            pass
    raise LookupError(name)


@pytest.fixture
def shown(monkeypatch) -> Shown:
    """Displays recorded instead of shown (the widgets of both modules)."""
    recorder = Shown()
    monkeypatch.setattr(widgets, "display", recorder)
    monkeypatch.setattr(after_widgets, "display", recorder)
    return recorder


# --- the message and the checks ----------------------------------------------------------------


def test_problem_is_one_line_with_the_errors_message():
    assert widgets.problem(ValueError("the subject is empty:\n  write one")) == "the subject is empty: write one"
    assert widgets.problem(KeyError("no relation 'P9'")) == "no relation 'P9'"  # without KeyError's quotes
    assert widgets.problem(SubjectNotFoundError("subject 'x' does not occur")) == "subject 'x' does not occur"
    # not an input error: the type is named, so that a bug is not taken for bad input
    assert widgets.problem(RuntimeError("shapes differ")) == "RuntimeError: shapes differ"
    long = widgets.problem(ValueError("x" * 1000))
    assert len(long) == 300 and long.endswith("…")
    assert widgets.problem(ValueError()) == "no message"


def test_check_text_refuses_empty_text_and_special_tokens(tiny):
    assert widgets.check_text(tiny, "Paris", "target", "Rome") == "Paris"
    with pytest.raises(ValueError, match="the target is empty: write one, e.g. 'Rome'"):
        widgets.check_text(tiny, "  ", "target", "Rome")
    with pytest.raises(ValueError, match="'<eos>', a special token of tiny-gemma3's tokenizer"):
        widgets.check_text(tiny, "Par<eos>is", "target", "Rome")
    assert view(tiny).target_ids(" <eos>")[-1] == view(tiny).tokenizer.eos_token_id  # why: read as control
    with pytest.raises(ValueError, match="not valid Unicode"):
        widgets.check_text(tiny, "Par\udcffis", "target", "Rome")


def test_cloze_table_is_the_query_and_refuses_an_empty_subject(tiny):
    table = widgets.cloze_table(tiny, "[X] is the capital of [Y] .", "France", k=4)
    expected = query(tiny, "[X] is the capital of [Y] .", "France", k=4)
    assert table.data["answer"].tolist() == expected["answer"].tolist()
    assert "France is the capital of [Y] ." in table.to_html()
    with pytest.raises(ValueError, match="the subject is empty"):
        widgets.cloze_table(tiny, "[X] is the capital of [Y] .", "", k=4)
    with pytest.raises(ValueError, match="has no \\[Y\\]"):
        widgets.cloze_table(tiny, "[X] is the capital of", "France", k=4)


def test_memory_prompt_html_refuses_an_empty_prompt(tiny):
    assert "value promotes" in widgets.memory_prompt_html(tiny, "The capital of France is")
    with pytest.raises(ValueError, match="the prompt is empty"):
        widgets.memory_prompt_html(tiny, "")


# --- one run at a time ---------------------------------------------------------------------------


def test_panel_runs_one_job_at_a_time():
    button = w.Button()
    panel = widgets._Panel("test", "job", [button], [button])
    states = []

    def job() -> str:
        states.append(button.disabled)
        assert not panel.run(job)  # a change the job makes to a control starts no second run
        return "done"

    assert panel.run(job)
    assert states == [True] and not button.disabled
    assert panel.status.value.startswith("job 1: done, ")
    assert panel.run(job) and panel.runs == 2


def click_sent_at(button: widgets._Button, seconds: float) -> None:
    """A click as the kernel receives it from the browser, sent ``seconds`` after a fixed time."""
    sent = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)
    button._handle_msg({"header": {"date": sent.isoformat()}, "buffers": [],
                        "content": {"data": {"method": "custom", "content": {"event": "click"}}}})


def test_a_click_sent_while_the_last_click_ran_is_dropped():
    button = widgets._Button()
    panel = widgets._Panel("test", "job", [button], [button])
    button.on_click(lambda _: panel.click(button, lambda: time.sleep(0.2) or "done"))
    click_sent_at(button, 0.0)  # runs for 0.2 s or more
    click_sent_at(button, 0.1)  # sent during that run, queued behind it: dropped
    assert panel.runs == 1
    click_sent_at(button, 5.0)  # sent after it: runs, however soon it reaches the kernel
    assert panel.runs == 2
    button.click()  # no date (a frontend that sends none, or a test): runs
    assert panel.runs == 3


def test_panel_shows_a_failure_in_one_line_and_keeps_working():
    button = w.Button()
    panel = widgets._Panel("test", "job", [button], [button])

    def fail() -> str:
        raise SubjectNotFoundError("subject 'Paris' does not occur in prompt 'x'")

    assert not panel.run(fail)
    assert "subject &#x27;Paris&#x27; does not occur" in panel.status.value
    assert "Traceback" not in panel.status.value and "\n" not in panel.status.value
    assert not button.disabled
    assert panel.run(lambda: "fine") and "job 2: fine" in panel.status.value


# --- the widgets, driven in-process -----------------------------------------------------------------


def test_cloze_explorer_says_unknown_relation_then_works(tiny, shown):
    widgets.cloze_explorer(tiny, subject="France", relation="P999", k=3)
    status = find(shown.box(), "status")
    assert "unknown relation &#x27;P999&#x27;" in status.value
    find(shown.box(), "relation").value = "P36"
    table = shown.latest()
    cloze = data.lama_relations()["P36"].template
    assert table.data["answer"].tolist() == query(tiny, cloze, "France", k=3)["answer"].tolist()
    assert "query 2:" in status.value
    find(shown.box(), "subject").value = ""
    assert "the subject is empty" in status.value and shown.latest() is table  # no new output


def test_memory_explorer_shows_the_chosen_key(tiny, shown):
    from factlens.memories import keys

    corpus = keys.Corpus.from_texts(tiny, ["the cat sat on the mat", "a dog ran in the park today"], max_tokens=8)
    search = keys.trigger_search(tiny, {0: [3, 5], 1: [7]}, corpus, k=2, n_random=4, progress=False)
    widgets.memory_explorer(tiny, search, corpus, prompt="the cat")
    assert "layer 1, key 7" in shown.latest(1).data
    find(shown.box(), "layer").value = 0
    assert "layer 0, key 3" in shown.latest(1).data
    find(shown.box(), "key").value = (0, 1)
    assert "layer 0, key 5" in shown.latest(1).data
    assert "view 3: layer 0, key 5" in find(shown.box(), "status").value


def _titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_title()]


def test_trace_explorer_traces_the_new_prompt_and_names_a_missing_subject(tiny, shown):
    widgets.trace_explorer(tiny, prompt="The cat sat on the", subject="The cat",
                           settings=TraceSettings(samples=1, window=1))
    status = find(shown.box(), "status")
    assert status.value.startswith("trace 1: ") and "estimate ρ" in status.value
    first, last = shown.items[1][1], shown.items[1][-1]  # the estimate at once, then the trace beside it
    assert _titles(first) == ["estimate (attribution patching): approximate"]
    assert _titles(last) == ["causal trace", "estimate (attribution patching): approximate"]
    find(shown.box(), "subject").value = "dog"
    find(shown.box(), "go").click()
    assert "subject &#x27;dog&#x27; does not occur" in status.value
    find(shown.box(), "subject").value = "The cat"
    find(shown.box(), "prompt").value = "The cat sat<eos> on the"  # read as a control token: not traced
    find(shown.box(), "go").click()
    assert "the prompt &#x27;The cat sat&lt;eos&gt; on the&#x27; holds &#x27;&lt;eos&gt;&#x27;" in status.value


def test_rome_editor_costs_no_edit_to_create_and_edits_on_click(tiny, shown, monkeypatch):
    original = view(tiny).mlp_out_weight(1).clone()
    real_write = rome.ROME.write
    monkeypatch.setattr(rome.ROME, "write", lambda *a, **k: pytest.fail("creating the editor ran an edit"))
    widgets.rome_editor(tiny, prompt="{} is in", subject="The cat", target="Paris", hparams=FAST,
                        max_new_tokens=2)
    before = shown.latest().data
    assert before["after"].tolist() == ['press "edit"']
    monkeypatch.setattr(rome.ROME, "write", real_write)
    status = find(shown.box(), "status")
    find(shown.box(), "target").value = "<pad>"
    find(shown.box(), "go").click()
    assert "&#x27;&lt;pad&gt;&#x27;, a special token" in status.value
    find(shown.box(), "target").value = "Rome"
    find(shown.box(), "go").click()
    after = shown.latest().data
    assert after.iloc[0, 1] == before.iloc[0, 1] and after.attrs["edit"]["layer"] == FAST.layer
    assert "edit 3: layer 1" in status.value
    assert torch.equal(view(tiny).mlp_out_weight(1), original)  # undone


def test_edit_comparison_matches_an_edit_by_hand_and_leaves_the_model(tiny):
    request = EditRequest("{} is in", "The cat", "Rome")
    original = view(tiny).mlp_out_weight(1).clone()
    frame = widgets.edit_comparison(tiny, request, ["The dog is in"], hparams=FAST, max_new_tokens=3)
    with rome.ROME(replace(FAST))(tiny, [request]):
        expected = widgets.answers(tiny, [request.text, "The dog is in"], 3)
    assert frame["after"].tolist() == expected
    assert frame[widgets._BEFORE].tolist() == widgets.answers(tiny, [request.text, "The dog is in"], 3)
    assert torch.equal(view(tiny).mlp_out_weight(1), original)


def test_unknown_relation_error_is_a_value_error():
    assert issubclass(UnknownRelationError, ValueError)  # the widgets show its message as is


# --- the chapter "What came after" ----------------------------------------------------------------


def _localization_frame(cases) -> pd.DataFrame:
    rows = [{"case_id": c.case_id, "layer": layer, "mlp_effect": 0.1 * layer + k, "mlp_effect_last_subject": 0.0,
             "hidden_effect_last_subject": float("nan"), "rewrite_score": 1.0 - 0.1 * layer, "efficacy": 1.0}
            for k, c in enumerate(cases) for layer in (0, 2, 4)]
    return pd.DataFrame(rows)


def test_localization_browser_shows_each_case(shown):
    cases = data.counterfact()[:2]
    after_widgets.localization_browser(_localization_frame(cases), cases)
    status = find(shown.box(), "status")
    assert status.value.startswith(f"case 1: case {cases[0].case_id}")
    assert "the trace points to layer 4; ROME's edit does best at layer 0" in shown.latest(2).data
    find(shown.box(), "case").value = cases[1].case_id
    assert cases[1].target_new in shown.latest(2).data and status.value.startswith("case 2: ")
    with pytest.raises(ValueError, match="none of the given cases"):
        after_widgets.localization_browser(_localization_frame(cases), data.counterfact()[5:6])


def test_wild_case_browser_shows_each_methods_scores_and_text(shown):
    cases = data.counterfact()[:2]
    frame = pd.DataFrame({"case_id": [c.case_id for c in cases], "teacher_forced_rewrite": [1.0, 0.5],
                          "probability_rewrite": [1.0, 0.0], "generated_rewrite": [1.0, 0.0],
                          "text_rewrite": [" Paris <b>", " Lyon"], "teacher_forced_paraphrase": [0.5, 0.5],
                          "probability_paraphrase": [0.0, 0.0], "generated_paraphrase": [0.0, 0.0],
                          "text_paraphrase": [" no", " no"]})
    after_widgets.wild_case_browser({"ROME": frame}, cases)
    page = shown.latest().data
    assert "Paris &lt;b&gt;" in page and "<td>ROME</td><td>rewrite</td><td>1.00</td>" in page  # the text escaped
    find(shown.box(), "case").value = cases[1].case_id
    assert " Lyon" in shown.latest().data and "case 2: " in find(shown.box(), "status").value


def test_knockout_table_is_knock_out(tiny):
    from factlens.locating.knockout import knock_out

    table = after_widgets.knockout_table(tiny, "The Eiffel Tower is in the city of", "The Eiffel Tower", "subject",
                                         [0, 1], k=3)
    expected = knock_out(tiny, "The Eiffel Tower is in the city of", "The Eiffel Tower", "subject", [0, 1], k=3)
    assert table.attrs["knocked"] == expected and len(table) == 3
    with pytest.raises(ValueError, match="the subject is empty"):
        after_widgets.knockout_table(tiny, "The Eiffel Tower is in", " ", "subject", [0])


def test_knockout_explorer_knocks_out_the_chosen_window_and_names_bad_input(tiny, shown):
    after_widgets.knockout_explorer(tiny, prompt="The Eiffel Tower is in the city of", subject="The Eiffel Tower",
                                    layers=(0, 1))
    status = find(shown.box(), "status")
    assert status.value.startswith("knock out 1: p(") and "→" in status.value
    assert "layers 0-1" in shown.latest().caption
    find(shown.box(), "layers").value = (1, 2)
    find(shown.box(), "source").value = "last"
    find(shown.box(), "go").click()
    assert status.value.startswith("knock out 2: ") and "last positions in layers 1-2" in shown.latest().caption
    find(shown.box(), "subject").value = "The Louvre"
    find(shown.box(), "go").click()
    assert "subject &#x27;The Louvre&#x27; does not occur" in status.value
