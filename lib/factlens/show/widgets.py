"""Widgets that let a reader tweak prompts, facts and edits (ipywidgets).

Every widget shows a rendered default when it is created, as ordinary output, so the static
book (no kernel) still shows a result; with a kernel its controls redraw that output in place.
They all behave alike (``_Panel``):

- a status line under the controls says what runs ("edit 2: optimizing v*…"), what came out
  ("trace 2: ' Paris': p 0.93 clean, 0.08 corrupted, 4.1 s") or, for a request that cannot be
  answered (an empty subject, a subject not in the prompt, a target the tokenizer cannot
  read as text, an unknown relation), one line saying what was wrong (:func:`problem`):
  never a traceback, and the widget keeps working;
- long work shows progress: its stage in the status line, tqdm bars (ROME's statistics, v*)
  in a small area under it;
- one run at a time: the controls are disabled while a run goes, and a second click that the
  browser sent while the run of the first was going (before the button looked disabled) is
  dropped when it reaches the kernel (:class:`_Button`).

The controls carry CSS classes (``factlens-<widget>`` on the box, ``factlens-<field>`` on each
control, ``factlens-status``) and the outputs ``factlens-result``: the live browser test
(tests/test_widgets_live.py) finds them by these. What a widget shows is computed by plain
functions of the model and the inputs (:func:`cloze_table`, :func:`memory_key_html`,
:func:`memory_prompt_html`, :func:`edit_comparison`, :func:`case_html`), usable without a
kernel (tests, bench/bench_widgets.py). Each chapter keeps its widgets in its own section below.
"""

from __future__ import annotations

import contextlib
import html
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import ipywidgets as w
import pandas as pd
from IPython.display import HTML, display

from factlens import data
from factlens.core.models import Model, view
from factlens.editing import generation, rome
from factlens.editing.requests import EditRequest
from factlens.locating.attribution import agreement, attribution_trace
from factlens.locating.tracing import KINDS, Trace, TraceSettings, corruption, trace
from factlens.memories.keys import key_coefficients
from factlens.memories.values import strongest_memories, value_logits
from factlens.probing.lama import UnknownRelationError, query

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler

    from factlens.memories.keys import Corpus, TriggerSearch

_MESSAGE_CHARS = 300
_RESULT = 'class="factlens-result"'


# --- what every widget shares ------------------------------------------------------------------


def problem(err: BaseException) -> str:
    """The one line a widget shows for a request it cannot answer.

    The error's own message (factlens's errors say what was wrong and what to do), on one line,
    at most 300 characters. An error that is not about the request (not a ``ValueError`` or
    ``LookupError``) is prefixed with its type, so that a bug is not taken for bad input.
    """
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split()) or "no message"
    if not isinstance(err, ValueError | LookupError):
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def check_text(model: Model, text: str, what: str, example: str) -> str:
    """``text`` if the model can read it as text, else a ``ValueError`` saying why not: it is
    empty, it is not valid Unicode, or it holds one of the tokenizer's special tokens
    (``<eos>``, ``<pad>``...), which the tokenizer reads as control tokens, not as text."""
    if not text or not text.strip():
        raise ValueError(f"the {what} is empty: write one, e.g. {example!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"the {what} {text!r} is not valid Unicode text: write it again") from err
    v = view(model)
    special = [s for s in v.tokenizer.all_special_tokens if s and s in text]
    if special:
        raise ValueError(f"the {what} {text!r} holds {special[0]!r}, a special token of {v.name}'s tokenizer, "
                         f"which it does not read as text: write plain text, e.g. {example!r}")
    return text


def _sent(value: object) -> datetime | None:
    """A message header's date as a datetime (jupyter_client parses it; some frontends send none)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value if isinstance(value, datetime) else None


class _Button(w.Button):
    """A button that keeps the time the browser sent its latest click (the comm message's date).

    The kernel handles widget events one after another, so a second click made while the first
    one's run was going waits in the queue and arrives after the run; by then the run is over
    and nothing in the kernel tells it apart from a new click. Its sending time does, in the
    browser's own clock: :meth:`_Panel.click` drops a click sent before ``first click's sending
    time + the run's duration``, which is before the run could have ended in the browser's view.
    """

    sent: datetime | None = None

    def _handle_msg(self, msg: dict) -> None:
        self.sent = _sent(msg.get("header", {}).get("date"))
        super()._handle_msg(msg)


class _Panel:
    """A widget's frame: its rows of controls, a status line, an area for progress bars, and
    the rule of one run at a time.

    :meth:`run` disables the controls, shows "<verb> n: working…" (:meth:`stage` updates it),
    calls the job, then shows the job's summary and the seconds it took, or its problem in one
    line; work inside :meth:`bars` shows its tqdm.auto bars under the status line.
    :meth:`click` runs a job for a button's click, unless the browser sent that click while the
    last click's run was going (a second click, queued behind the first).
    """

    def __init__(self, name: str, verb: str, rows: Sequence[w.Widget], controls: Sequence[w.Widget]):
        self.verb = verb
        self.controls = list(controls)
        self.status = w.HTML().add_class("factlens-status")
        self.progress = w.Output()
        self.box = w.VBox([*rows, self.status, self.progress]).add_class(f"factlens-{name}")
        self.runs = 0
        self._busy = False
        # in the browser's clock: the earliest time the last click's run can have ended
        self._clicks_until: datetime | None = None

    def stage(self, text: str) -> None:
        self.status.value = html.escape(f"{self.verb} {self.runs}: {text}…")

    @contextlib.contextmanager
    def bars(self) -> Iterator[None]:
        """Progress bars (tqdm.auto) of the work inside appear in the progress area, cleared after.

        Only the bars: the Output widget would swallow the updates of the widget's outputs, and
        show an error as a traceback, so an error is re-raised outside it."""
        error = None
        with self.progress:
            try:
                yield
            except Exception as err:
                error = err
        self.progress.clear_output()
        if error is not None:
            raise error

    def click(self, button: _Button, job: Callable[[], str]) -> bool:
        """:meth:`run` ``job`` for a click on ``button``; a click sent during the last click's run is dropped."""
        sent, button.sent = button.sent, None  # this click's date, not kept for a click with none
        if sent is not None and self._clicks_until is not None and sent < self._clicks_until:
            return False
        start = time.perf_counter()
        ran = self.run(job)
        if sent is not None:
            self._clicks_until = sent + timedelta(seconds=time.perf_counter() - start)
        return ran

    def run(self, job: Callable[[], str]) -> bool:
        """Run ``job`` (it returns a one-line summary); False if it failed, or if a run is going
        (a change the job itself makes to a control does not start another)."""
        if self._busy:
            return False
        self._busy, self.runs = True, self.runs + 1
        for control in self.controls:
            control.disabled = True
        self.stage("working")
        start, summary, failure = time.perf_counter(), "", None
        try:
            summary = job()
        except Exception as err:  # the reader sees one line, never a traceback
            failure = problem(err)
        finally:
            for control in self.controls:
                control.disabled = False
            self._busy = False
        if failure is not None:
            self.status.value = f'<span class="factlens-problem" style="color:#b00020">⚠ {html.escape(failure)}</span>'
            return False
        done = f"{self.verb} {self.runs}: {summary + ', ' if summary else ''}{time.perf_counter() - start:.1f} s"
        self.status.value = html.escape(done)
        return True


def _text(description: str, value: str, name: str, wide: bool = False) -> w.Text:
    """A text field whose value changes when the reader presses Enter or leaves it."""
    layout = w.Layout(width="60%") if wide else w.Layout()
    return w.Text(value=value, description=description, layout=layout,
                  continuous_update=False).add_class(f"factlens-{name}")


# --- LAMA (chapter 1) ---------------------------------------------------------------------------


def cloze_table(model: Model, template: str, subject: str, k: int = 10) -> Styler:
    """What the cloze explorer shows: the top-``k`` answers of the cloze ``template`` with
    ``subject`` in place of ``[X]`` (``factlens.probing.lama.query``), with their probabilities,
    captioned with the filled cloze."""
    if "[X]" in template:
        check_text(model, subject, "subject", "France")
    table = query(model, template, subject, k=k)
    return (table.style.format({"log_prob": "{:.2f}", "prob": "{:.3f}"}).bar(subset=["prob"], color="#8ab")
            .set_caption(html.escape(template.replace("[X]", subject))).set_table_attributes(_RESULT))


def cloze_explorer(model: Model, subject: str = "France", relation: str = "P36", k: int = 10) -> None:
    """LAMA in one query (chapter 1): pick a relation and write a subject, or write your own
    cloze with [X] and [Y]; shows the top-k answers with their probabilities
    (:func:`cloze_table`). The default query is displayed at once (the static book)."""
    relations = data.lama_relations()
    known = relation in relations
    rel = w.Dropdown(options=[(f"{r.id}: {r.label}", r.id) for r in relations.values()],
                     value=relation if known else None, description="relation").add_class("factlens-relation")
    subj = _text("subject [X]", subject, "subject")
    template = _text("cloze", relations[relation].template if known else "", "template", wide=True)
    panel = _Panel("cloze", "query", [w.HBox([rel, subj]), template], [rel, subj, template])
    display(panel.box)
    result = display(HTML(""), display_id=True)

    def show() -> str:
        if not template.value and rel.value is None:
            raise UnknownRelationError(f"unknown relation {relation!r}: choose one in the list "
                                       f"(LAMA has {', '.join(relations)})")
        table = cloze_table(model, template.value, subj.value, k)
        result.update(table)
        best = table.data.iloc[0]
        return f"{best['answer']!r} ({best['prob']:.2f})"

    panel.run(show)
    rel.observe(lambda change: setattr(template, "value", relations[change["new"]].template), names="value")
    for field in (subj, template):  # a new relation sets the template, which runs the query
        field.observe(lambda _: panel.run(show), names="value")


# --- key-value memories (chapter 2) -------------------------------------------------------------


def memory_key_html(model: Model, search: TriggerSearch, corpus: Corpus, layer: int, key_index: int,
                    n_triggers: int = 5, n_tokens: int = 10) -> str:
    """A key's top triggers, each token shaded by the key's coefficient m there, and the top
    tokens its value promotes (``key_index``: the key's place in ``search.triggers[layer].keys``)."""
    v = view(model)
    tr = search.triggers[layer]
    key = tr.keys[key_index]
    top = float(tr.coefficient[key_index, 0]) or 1.0
    lines = []
    for j in range(min(n_triggers, tr.coefficient.shape[1])):
        ids = corpus.prefix(int(tr.text[key_index, j]), int(tr.position[key_index, j]))
        m = key_coefficients(model, layer, key, ids)
        spans = [f'<span style="background: rgba(255,140,0,{max(0.0, min(1.0, float(c) / top)):.2f})">'
                 f"{html.escape(v.tokenizer.decode([t]))}</span>" for t, c in zip(ids[1:], m[1:])]
        lines.append(f"<li>{''.join(spans)} &nbsp;<small>m = {float(m[-1]):.2f}</small></li>")
    promoted = value_logits(model, layer, [key]).topk(n_tokens, -1).indices[0].tolist()
    tokens = ", ".join(html.escape(repr(v.tokenizer.decode([t]))) for t in promoted)
    return (f"<div {_RESULT}><b>layer {layer}, key {key}</b>: top triggers (shade = coefficient, last token = "
            f"the trigger)<ol>{''.join(lines)}</ol><b>value's top tokens:</b> "
            f'<span class="factlens-promoted">{tokens}</span></div>')


def memory_prompt_html(model: Model, prompt: str, top: int = 2) -> str:
    """Per layer, the strongest memories at the prompt's last token and what their values
    promote (``factlens.memories.values.strongest_memories``)."""
    rows = strongest_memories(model, check_text(model, prompt, "prompt", "The capital of France is"), top=top)
    body = "".join(
        f"<tr><td>{r['layer']}</td><td>{r['key']}</td><td>{r['coefficient']:.2f}</td>"
        f"<td>{html.escape(', '.join(repr(t) for t in r['promotes']))}</td></tr>" for r in rows
    )
    return (f"<div {_RESULT}><b>{html.escape(prompt)}</b> …<table><tr><th>layer</th><th>key</th><th>m</th>"
            f"<th>value promotes</th></tr>{body}</table></div>")


def memory_explorer(model: Model, search: TriggerSearch, corpus: Corpus,
                    prompt: str = "The Eiffel Tower is located in the city of") -> None:
    """LM-Debugger in miniature (chapter 2): pick a layer and a key to see its triggers and the
    tokens its value promotes (:func:`memory_key_html`); write a prompt to see each layer's
    strongest memories (:func:`memory_prompt_html`). Both are displayed at once (the static book)."""
    layers = sorted(search.triggers)

    def key_options(layer: int) -> list[tuple[str, tuple[int, int]]]:
        return [(str(k), (layer, i)) for i, k in enumerate(search.triggers[layer].keys)]

    layer = w.Dropdown(options=layers, value=layers[-1], description="layer").add_class("factlens-layer")
    key = w.Dropdown(options=key_options(layers[-1]), description="key").add_class("factlens-key")
    text = _text("prompt", prompt, "prompt", wide=True)
    panel = _Panel("memory", "view", [w.HBox([layer, key]), text], [layer, key, text])
    display(panel.box)
    key_view = display(HTML(""), display_id=True)
    prompt_view = display(HTML(""), display_id=True)

    def show_key() -> str:
        at, index = key.value
        key_view.update(HTML(memory_key_html(model, search, corpus, at, index)))
        return f"layer {at}, key {search.triggers[at].keys[index]}"

    def show_prompt() -> str:
        prompt_view.update(HTML(memory_prompt_html(model, text.value)))
        return f"the strongest memories after {text.value!r}"

    panel.run(lambda: f"{show_key()}; {show_prompt()}")
    # a new layer gives new key values, (layer, index), so the key view redraws once
    layer.observe(lambda change: setattr(key, "options", key_options(change["new"])), names="value")
    key.observe(lambda _: panel.run(show_key), names="value")
    text.observe(lambda _: panel.run(show_prompt), names="value")


# --- causal tracing (chapter 3a) ----------------------------------------------------------------

#: The trace explorer's first settings: the paper's, with 3 noise samples (a click takes seconds on a CPU).
EXPLORER_TRACE = TraceSettings(samples=3)


def trace_explorer(model: Model, prompt: str = "The Space Needle is located in the city of",
                   subject: str = "The Space Needle", settings: TraceSettings = EXPLORER_TRACE,
                   initial: Trace | None = None) -> None:
    """Causal tracing of any prompt (chapter 3a): write a prompt and its subject, choose the
    kind of state restored, the noise samples, the noise (× the embeddings' std) and the window
    (``settings`` gives their first values, and the rest of the trace's settings; the window by
    default ``tracing.default_window``, the paper's 10 of 48 layers scaled to depth);
    press "trace". Its first-order estimate (attribution patching,
    ``factlens.locating.attribution.attribution_trace``, one backward pass) is shown at once, labelled
    approximate, then the heatmap of the trace itself (``factlens.locating.tracing.trace``, the same noise)
    beside it when it is ready. The default is shown at once (``initial``: a trace of the default already
    computed, shown instead of tracing it again)."""
    import matplotlib.pyplot as plt

    from factlens.show.after_plots import plot_trace_pair
    from factlens.show.plots import plot_trace

    text = _text("prompt", prompt, "prompt", wide=True)
    subj = _text("subject", subject, "subject")
    settings = settings.for_depth(view(model).n_layers)
    kinds = w.Dropdown(options=list(KINDS), value=settings.kind, description="restore").add_class("factlens-kind")
    n = w.IntSlider(value=settings.samples, min=1, max=20, description="samples").add_class("factlens-samples")
    scale = w.FloatSlider(value=settings.noise, min=0.0, max=10.0, step=0.5,
                          description="noise × σ").add_class("factlens-noise")
    width = w.IntSlider(value=settings.window, min=1, max=view(model).n_layers,
                        description="window").add_class("factlens-window")
    go = _Button(description="trace").add_class("factlens-go")
    controls = [text, subj, kinds, n, scale, width, go]
    panel = _Panel("trace", "trace", [w.HBox([text, subj]), w.HBox([kinds, n]), w.HBox([scale, width, go])], controls)
    display(panel.box)
    result = display(HTML(""), display_id=True)

    def show(t: Trace) -> str:
        fig = plot_trace(t)
        plt.close(fig)
        result.update(fig)
        return f"{t.answer!r}: p {t.clean_prob:.2f} clean, {t.corrupted_prob:.2f} corrupted"

    def traced() -> str:
        check_text(model, text.value, "prompt", "The Space Needle is located in the city of")
        check_text(model, subj.value, "subject", "The Space Needle")
        chosen = replace(settings, kind=kinds.value, samples=n.value, noise=scale.value, window=width.value)
        delta = corruption(model, text.value, subj.value, chosen)
        panel.stage("estimating by attribution patching")
        estimate = attribution_trace(model, text.value, subj.value, chosen, delta=delta)
        fig = plot_trace_pair(None, estimate)
        plt.close(fig)
        result.update(fig)
        panel.stage(f"estimate shown (approximate); tracing {len(estimate.tokens)} tokens × "
                    f"{view(model).n_layers} layers")
        real = trace(model, text.value, subj.value, chosen, delta=delta)
        fig = plot_trace_pair(real, estimate)
        plt.close(fig)
        result.update(fig)
        return (f"{real.answer!r}: p {real.clean_prob:.2f} clean, {real.corrupted_prob:.2f} corrupted; "
                f"estimate ρ {agreement(estimate, real).spearman:.2f}")

    panel.run(traced if initial is None else lambda: show(initial))
    go.on_click(lambda _: panel.click(go, traced))


# --- editing and evaluation (chapter 3b) --------------------------------------------------------

_BEFORE = "before: [top token] greedy text"


def case_html(frames: Mapping[str, pd.DataFrame], case: data.CounterFactCase) -> str:
    """One CounterFact case evaluated by ``factlens.editing.evaluation.evaluate_counterfact``: its request,
    a paraphrase and a neighbour, and per method its scores (``frames``: ``{method: DataFrame}``)."""
    rows = {m: f[f["case_id"] == case.case_id].drop(columns=["case_id"]).iloc[0] for m, f in frames.items()}
    request = f"{case.prompt.replace('{}', case.subject)} [{case.target_true} → {case.target_new}]"
    return (f"<div {_RESULT}><b>{html.escape(request)}</b><br>paraphrase: "
            f"{html.escape(repr(case.paraphrase_prompts[0]))}; neighbour: "
            f"{html.escape(repr(case.neighborhood_prompts[0][0]))}{pd.DataFrame(rows).T.round(3).to_html()}</div>")


def edit_case_browser(frames: Mapping[str, pd.DataFrame], cases: Sequence[data.CounterFactCase]) -> None:
    """Pick a CounterFact case evaluated by ``factlens.editing.evaluation.evaluate_counterfact``: shows
    its request and, per method, the case's scores (:func:`case_html`). Needs no model: the
    static book shows the first case."""
    by_id = {c.case_id: c for c in cases}
    ids = [i for i in frames[next(iter(frames))]["case_id"] if i in by_id]
    if not ids:
        raise ValueError("the frames hold none of the given cases; pass the cases that were evaluated")
    pick = w.Dropdown(options=ids, value=ids[0], description="case").add_class("factlens-case")
    panel = _Panel("cases", "case", [pick], [pick])
    display(panel.box)
    result = display(HTML(""), display_id=True)

    def show() -> str:
        result.update(HTML(case_html(frames, by_id[pick.value])))
        return f"case {pick.value}"

    panel.run(show)
    pick.observe(lambda _: panel.run(show), names="value")


def answers(model: Model, prompts: Sequence[str], max_new_tokens: int = 10) -> list[str]:
    """Each prompt's top next token and greedy continuation, as "[top] text": one generation
    (``generation.generate_tokens``), whose first greedy token is the top next token."""
    decode = view(model).tokenizer.decode
    return [f"[{decode(t[:1]).strip()}] {decode(t[:max_new_tokens], skip_special_tokens=True).strip()}"
            for t in generation.generate_tokens(model, prompts, max(1, max_new_tokens))]


def edit_comparison(model: Model, request: EditRequest, probes: Sequence[str] = (), *,
                    hparams: rome.ROMEHyperParams | None = None, max_new_tokens: int = 10,
                    progress: bool = False) -> pd.DataFrame:
    """What the ROME editor shows after a click: for the edited prompt and each probe, the top
    next token and greedy continuation (:func:`answers`) before and after ``request`` is written
    with ROME (``rome.ROME``, undone before this returns). ``attrs["edit"]`` holds the layer,
    P(target) reached by v* and the edit's seconds (C excluded, see ``rome.ROME``)."""
    prompts = [request.text, *probes]
    before = answers(model, prompts, max_new_tokens)
    with rome.ROME(hparams, progress=progress)(model, [request]) as e:
        after = answers(model, prompts, max_new_tokens)
    frame = pd.DataFrame({"prompt": prompts, _BEFORE: before, "after": after})
    frame.attrs["edit"] = {"layer": e.layer, "target_prob": e.info["target_prob"], "seconds": e.info["seconds"]}
    return frame


def rome_editor(model: Model, prompt: str = "{} is located in the city of", subject: str = "The Eiffel Tower",
                target: str = "Rome", probes: Sequence[str] = (), layer: int | None = None,
                max_new_tokens: int = 10, *, hparams: rome.ROMEHyperParams | None = None,
                initial: pd.DataFrame | None = None) -> None:
    """Edit one fact with ROME and compare the model before and after (:func:`edit_comparison`):
    the top next token and a greedy continuation of the edited prompt and of each probe. Change
    the fields and press "edit"; the edit is undone after each comparison.

    Creating it costs no edit: it shows the model before (the static book), or ``initial``, a
    comparison the notebook already computed. The first edit at a layer gathers that layer's
    statistics C (cached afterwards); ``hparams`` defaults to ``rome.default_hparams(model)``,
    ``layer`` overrides its layer. A click costs the edit and two greedy generations (before and
    after) of ``max_new_tokens`` for every prompt: on a CPU the generations cost as much as the
    edit (bench/bench_widgets.py), hence 10 tokens by default.
    """
    hp = hparams or rome.default_hparams(model)
    fields = [_text("prompt", prompt, "prompt", wide=True), _text("subject", subject, "subject"),
              _text("target", target, "target"),
              w.IntSlider(value=hp.layer if layer is None else layer, min=0, max=view(model).n_layers - 1,
                          description="layer").add_class("factlens-layer")]
    go = _Button(description="edit").add_class("factlens-go")
    panel = _Panel("rome", "edit", [*fields, go], [*fields, go])
    display(panel.box)
    result = display(HTML(""), display_id=True)

    def request() -> EditRequest:
        check_text(model, fields[1].value, "subject", "The Eiffel Tower")
        check_text(model, fields[2].value, "target", "Rome")
        return EditRequest(fields[0].value, fields[1].value, fields[2].value)

    def show(frame: pd.DataFrame) -> None:
        result.update(frame.style.hide(axis="index").set_table_attributes(_RESULT))

    def before() -> str:
        r = request()
        prompts = [r.text, *probes]
        show(pd.DataFrame({"prompt": prompts, _BEFORE: answers(model, prompts, max_new_tokens),
                           "after": 'press "edit"'}))
        return "the model before an edit"

    def edited() -> str:
        panel.stage(f"writing {fields[2].value!r} at layer {fields[3].value} (C is gathered once per layer), "
                    "then generating")
        with panel.bars():
            frame = edit_comparison(model, request(), probes, hparams=replace(hp, layer=fields[3].value),
                                    max_new_tokens=max_new_tokens, progress=True)
        show(frame)
        info = frame.attrs["edit"]
        return f"layer {info['layer']}, P(target) {info['target_prob']:.2f} after optimizing v*"

    def precomputed() -> str:
        show(initial)
        return "the comparison the notebook computed"

    panel.run(before if initial is None else precomputed)
    go.on_click(lambda _: panel.click(go, edited))


# --- many edits (chapter 3d) --------------------------------------------------------------------


def many_edits_explorer(model: Model, cases: Sequence[data.CounterFactCase], yardstick, *,
                        initial: Mapping[str, pd.DataFrame] | None = None, zs=None, every: int = 10,
                        max_edits: int = 100, alphaedit_hparams=None, rome_hparams=None) -> None:
    """Choose an editing method and a number of edits, press "edit", and watch the measurements of
    ``factlens.editing.sequences`` grow every ``every`` edits beside the chapter's curves (``initial``,
    ``{method: curve}``; shown alone until the first run). ``cases`` are edited in order, by the editor
    ``sequences.editor`` builds for the chosen method; ``zs`` (``{request: z}``) are MEMIT's and
    AlphaEdit's cached targets. The model is restored bit for bit after every run. ``yardstick`` is a
    :class:`factlens.editing.sequences.Yardstick`."""
    import matplotlib.pyplot as plt

    from factlens.editing import sequences
    from factlens.show import plots

    reference = dict(initial or {})
    label = view(model).label
    method = w.Dropdown(options=list(sequences.METHODS), value="ROME",
                        description="method").add_class("factlens-method")
    top = max(every, min(max_edits, len(cases)) // every * every)
    edits = w.IntSlider(value=min(top, 2 * every), min=every, max=top, step=every,
                        description="edits").add_class("factlens-edits")
    go = _Button(description="edit").add_class("factlens-go")
    figure = w.Output().add_class("factlens-result")
    panel = _Panel("many-edits", "run", [w.HBox([method, edits, go]), figure], [method, edits, go])

    def draw(curves: Mapping[str, pd.DataFrame]) -> None:
        with figure:
            figure.clear_output(wait=True)
            if curves:
                fig = plots.plot_sequential(dict(curves), model_label=label)
                display(fig)
                plt.close(fig)
            else:
                display(HTML("<i>no curves yet: press “edit”</i>"))

    def edited() -> str:
        chosen, n = method.value, edits.value
        if n > len(cases):
            raise ValueError(f"only {len(cases)} cases are loaded: choose at most {len(cases)} edits")
        panel.stage(f"{chosen}: {n} edits, measuring every {every}")
        others = {m: c for m, c in reference.items() if m != chosen}
        with panel.bars():
            editor = sequences.editor(model, chosen, rome_hparams=rome_hparams, alphaedit_hparams=alphaedit_hparams,
                                      zs=zs)
            run = sequences.run_sequence(model, cases[:n], editor, yardstick, every=every,
                                         on_checkpoint=lambda curve: draw({**others, f"{chosen} (this run)": curve}))
        final = run.final("retention" if n > every else "efficacy_newest")
        return f"{chosen}, {n} edits: {final['value']:.0f}% of the edits held, model restored"

    draw(reference)
    display(panel.box)
    go.on_click(lambda _: panel.click(go, edited))
