"""The widgets of the chapter "What came after" (``factlens.show.widgets`` holds the other chapters' and what
every widget shares: the panel with its status line, progress area and one run at a time, the one-line message
for bad input). Each shows its default at once (the static book), and what it shows is computed by a plain
function usable without a kernel (:func:`localization_case_html`, :func:`wild_case_html`,
:func:`knockout_table`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import ipywidgets as w
import pandas as pd
from IPython.display import HTML, display

from factlens import data
from factlens.core.models import Model, view
from factlens.locating.knockout import SOURCE_SETS, knock_out, knockout_window
from factlens.locating.tracing import window_layers
from factlens.show.widgets import _RESULT, _Button, _Panel, _text, check_text

# --- does localization inform editing? (Hase et al. 2023) ----------------------------------------

_LOCALIZATION_COLUMNS = {"mlp_effect": "MLP tracing effect", "mlp_effect_last_subject": "MLP, last subject token",
                         "hidden_effect_last_subject": "hidden, last subject token",
                         "rewrite_score": "rewrite score", "efficacy": "ES"}


def _cases_by_id(frame_ids: Sequence[int], cases: Sequence[data.CounterFactCase]) -> dict[int, data.CounterFactCase]:
    by_id = {c.case_id: c for c in cases}
    chosen = {int(i): by_id[int(i)] for i in dict.fromkeys(frame_ids) if int(i) in by_id}
    if not chosen:
        raise ValueError("the results hold none of the given cases; pass the cases that were measured")
    return chosen


def _request(case: data.CounterFactCase) -> str:
    return f"{case.filled_prompt} [{case.target_true} → {case.target_new}]"


def localization_case_html(frame: pd.DataFrame, case: data.CounterFactCase) -> str:
    """One case of ``factlens.editing.localization.localize_and_edit``: its request and, per edited layer, its
    tracing effects and ROME's rewrite score there, with the layer the MLP trace points to and the one ROME's
    edit does best at."""
    rows = frame[frame["case_id"] == case.case_id].sort_values("layer").set_index("layer")
    if rows.empty:
        raise ValueError(f"case {case.case_id} was not measured")
    table = rows[[c for c in _LOCALIZATION_COLUMNS if c in rows]].rename(columns=_LOCALIZATION_COLUMNS)
    traced = rows["mlp_effect"].idxmax() if rows["mlp_effect"].notna().any() else None
    best = rows["rewrite_score"].idxmax()
    return (f"<div {_RESULT}><b>{html.escape(_request(case))}</b><br>the trace points to layer {traced}; ROME's edit "
            f"does best at layer {best}{table.round(3).to_html()}</div>")


def localization_browser(frame: pd.DataFrame, cases: Sequence[data.CounterFactCase]) -> None:
    """Pick a case measured by ``factlens.editing.localization.localize_and_edit``: its tracing effects against
    ROME's edit success at each layer, as a figure and a table (:func:`localization_case_html`). Needs no model:
    the static book shows the first case."""
    import matplotlib.pyplot as plt

    from factlens.show.after_plots import plot_localization_case

    by_id = _cases_by_id(frame["case_id"].tolist(), cases)
    pick = w.Dropdown(options=list(by_id), value=next(iter(by_id)), description="case").add_class("factlens-case")
    panel = _Panel("localization", "case", [pick], [pick])
    display(panel.box)
    figure = display(HTML(""), display_id=True)
    table = display(HTML(""), display_id=True)

    def show() -> str:
        case = by_id[pick.value]
        fig = plot_localization_case(frame, case.case_id, title=_request(case))
        plt.close(fig)
        figure.update(fig)
        table.update(HTML(localization_case_html(frame, case)))
        return f"case {case.case_id}"

    panel.run(show)
    pick.observe(lambda _: panel.run(show), names="value")


# --- edits outside teacher forcing (Yang et al. 2025) ---------------------------------------------


def wild_case_html(frames: Mapping[str, pd.DataFrame], case: data.CounterFactCase) -> str:
    """One case of ``factlens.editing.in_the_wild.evaluate_in_the_wild``, per method: its teacher-forced token
    accuracy, ES / PS and success in generation, and the text the edited model generated, for the edited prompt
    and its paraphrase."""
    lines = []
    for method, frame in frames.items():
        rows = frame[frame["case_id"] == case.case_id]
        if rows.empty:
            continue
        r = rows.iloc[0]
        for kind, prompt in (("rewrite", case.filled_prompt),
                             ("paraphrase", case.paraphrase_prompts[0] if case.paraphrase_prompts else "")):
            if f"text_{kind}" not in r or not prompt:
                continue
            lines.append(f"<tr><td>{html.escape(method)}</td><td>{kind}</td>"
                         f"<td>{r[f'teacher_forced_{kind}']:.2f}</td><td>{r[f'probability_{kind}']:.0f}</td>"
                         f"<td>{r[f'generated_{kind}']:.0f}</td><td>{html.escape(prompt)} "
                         f"<b>{html.escape(r[f'text_{kind}'])}</b></td></tr>")
    if not lines:
        raise ValueError(f"case {case.case_id} was not measured")
    return (f"<div {_RESULT}><b>{html.escape(_request(case))}</b><table><tr><th>method</th><th>prompt</th>"
            "<th>teacher forced</th><th>ES/PS</th><th>generated</th><th>what it generated</th></tr>"
            f"{''.join(lines)}</table></div>")


def wild_case_browser(frames: Mapping[str, pd.DataFrame], cases: Sequence[data.CounterFactCase]) -> None:
    """Pick a case evaluated by ``factlens.editing.in_the_wild.evaluate_in_the_wild``: per method, the scores under
    teacher forcing and in generation, and what the edited model said (:func:`wild_case_html`). Needs no model: the
    static book shows the first case."""
    first = next(iter(frames.values()))
    by_id = _cases_by_id(first["case_id"].tolist(), cases)
    pick = w.Dropdown(options=list(by_id), value=next(iter(by_id)), description="case").add_class("factlens-case")
    panel = _Panel("wild", "case", [pick], [pick])
    display(panel.box)
    result = display(HTML(""), display_id=True)

    def show() -> str:
        result.update(HTML(wild_case_html(frames, by_id[pick.value])))
        return f"case {pick.value}"

    panel.run(show)
    pick.observe(lambda _: panel.run(show), names="value")


# --- how the attribute reaches the last token (Geva et al. 2023) -----------------------------------


def knockout_table(model: Model, prompt: str, subject: str, source: str, layers: Sequence[int],
                   k: int = 5) -> pd.DataFrame:
    """What the knockout explorer shows: the model's answer to ``prompt`` and its probability with the edges from
    the last position to ``source`` cut in ``layers`` (``factlens.locating.knockout.knock_out``), and the top ``k``
    tokens then. ``attrs["knocked"]`` holds the :class:`~factlens.locating.knockout.KnockedOut`."""
    check_text(model, prompt, "prompt", "The Eiffel Tower is located in the city of")
    check_text(model, subject, "subject", "The Eiffel Tower")
    knocked = knock_out(model, prompt, subject, source, layers, k=k)
    frame = pd.DataFrame({"top token after": [t for t, _ in knocked.top_after],
                          "p after": [p for _, p in knocked.top_after]})
    frame.attrs["knocked"] = knocked
    return frame


def _knockout_caption(table: pd.DataFrame) -> str:
    knocked = table.attrs["knocked"]
    return (f"last position cut from the {knocked.source} positions in layers {knocked.layers[0]}-{knocked.layers[-1]}"
            f": p({knocked.answer.strip()}) {knocked.base_prob:.3f} → {knocked.prob:.3f} "
            f"({100 * knocked.relative_change:+.0f}%)")


def knockout_explorer(model: Model, prompt: str = "The Eiffel Tower is located in the city of",
                      subject: str = "The Eiffel Tower", source: str = "subject",
                      layers: tuple[int, int] | None = None) -> None:
    """Attention knockout of any prompt (Geva et al. 2023): write a prompt and its subject, choose the source
    positions (subject, the other positions, the last one) and a window of layers, press "knock out" to see the
    answer's probability before and after and the top tokens then (:func:`knockout_table`). ``layers``: the first
    and last layer of the first window (default: the paper's window scaled to depth, around two thirds up). The
    default is shown at once (one forward pass)."""
    n_layers = view(model).n_layers
    if layers is None:
        window = window_layers(round(2 * (n_layers - 1) / 3), knockout_window(n_layers), n_layers)
        layers = (window.start, window.stop - 1)
    text = _text("prompt", prompt, "prompt", wide=True)
    subj = _text("subject", subject, "subject")
    sources = w.Dropdown(options=list(SOURCE_SETS), value=source, description="cut from").add_class("factlens-source")
    span = w.IntRangeSlider(value=layers, min=0, max=n_layers - 1, description="layers").add_class("factlens-layers")
    go = _Button(description="knock out").add_class("factlens-go")
    controls = [text, subj, sources, span, go]
    panel = _Panel("knockout", "knock out", [w.HBox([text, subj]), w.HBox([sources, span, go])], controls)
    display(panel.box)
    result = display(HTML(""), display_id=True)

    def knocked() -> str:
        panel.stage(f"cutting the last position from the {sources.value} positions in layers "
                    f"{span.value[0]}-{span.value[1]}")
        table = knockout_table(model, text.value, subj.value, sources.value, range(span.value[0], span.value[1] + 1))
        caption = _knockout_caption(table)
        result.update(table.style.hide(axis="index").format({"p after": "{:.3f}"}).set_caption(html.escape(caption))
                      .set_table_attributes(_RESULT))
        return caption.split(": ", 1)[1]

    panel.run(knocked)
    go.on_click(lambda _: panel.click(go, knocked))
