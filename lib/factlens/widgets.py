"""Widgets that let a reader tweak prompts, facts and edits (ipywidgets).

Every widget function shows a rendered default before any interaction, so the static book,
which has no kernel, still shows a result; with a kernel the controls re-run the experiment.
Each chapter keeps its widgets in its own section below.
"""

from __future__ import annotations

# --- LAMA (chapter 1) ---------------------------------------------------------------------


def cloze_explorer(model, subject: str = "France", relation: str = "P36", k: int = 10) -> None:
    """LAMA in one query (chapter 1): pick a relation and write a subject, or write your own
    cloze with [X] and [Y]; shows the top-k answers with their probabilities
    (``factlens.probing.query``). The default query is displayed at once (the static book)."""
    import html

    import ipywidgets as w
    from IPython.display import HTML, display

    from factlens import data
    from factlens.probing import query

    relations = data.lama_relations()
    rel = w.Dropdown(options=[(f"{r.id}: {r.label}", r.id) for r in relations.values()], value=relation,
                     description="relation")
    subj = w.Text(value=subject, description="subject [X]")
    template = w.Text(value=relations[relation].template, description="cloze", layout=w.Layout(width="60%"))

    def render():
        try:
            table = query(model, template.value, subj.value, k=k)
        except ValueError as err:
            return HTML(f"<b>{html.escape(str(err))}</b>")
        caption = html.escape(template.value.replace("[X]", subj.value))
        return table.style.format({"log_prob": "{:.2f}", "prob": "{:.3f}"}).bar(subset=["prob"], color="#8ab") \
            .set_caption(caption)

    display(w.VBox([w.HBox([rel, subj]), template]))
    result = display(render(), display_id=True)

    def on_relation(change) -> None:
        template.value = relations[change["new"]].template
        result.update(render())

    rel.observe(on_relation, names="value")
    subj.on_submit(lambda _: result.update(render()))
    template.on_submit(lambda _: result.update(render()))


# --- key-value memories (chapter 2) -------------------------------------------------------


def _memory_trigger_html(model, search, corpus, layer: int, key_index: int, n_triggers: int = 5,
                         n_tokens: int = 10) -> str:
    """A key's top triggers, each token shaded by the key's coefficient there, and its value's top tokens."""
    import html

    from factlens.memories import key_coefficients, value_logits
    from factlens.models import view

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
    return (f"<b>layer {layer}, key {key}</b>: top triggers (shade = coefficient, last token = the trigger)"
            f"<ol>{''.join(lines)}</ol><b>value's top tokens:</b> {tokens}")


def _memory_prompt_html(model, prompt: str, top: int = 2) -> str:
    """Per layer, the strongest memories at the prompt's last token and what their values promote."""
    import html

    from factlens.memories import strongest_memories

    rows = strongest_memories(model, prompt, top=top)
    body = "".join(
        f"<tr><td>{r['layer']}</td><td>{r['key']}</td><td>{r['coefficient']:.2f}</td>"
        f"<td>{html.escape(', '.join(repr(t) for t in r['promotes']))}</td></tr>" for r in rows
    )
    return (f"<b>{html.escape(prompt)}</b> …<table><tr><th>layer</th><th>key</th><th>m</th>"
            f"<th>value promotes</th></tr>{body}</table>")


def memory_explorer(model, search, corpus, prompt: str = "The Eiffel Tower is located in the city of") -> None:
    """LM-Debugger in miniature (chapter 2): pick a layer and a key to see its triggers and the
    tokens its value promotes; write a prompt to see each layer's strongest memories.

    The default view is displayed at once as ordinary output (the static book shows it);
    with a kernel the controls redraw it in place.
    """
    import ipywidgets as w
    from IPython.display import HTML, display

    layers = sorted(search.triggers)
    layer = w.Dropdown(options=layers, value=layers[-1], description="layer")
    key = w.Dropdown(options=[(str(k), i) for i, k in enumerate(search.triggers[layers[-1]].keys)],
                     description="key")
    text = w.Text(value=prompt, description="prompt", layout=w.Layout(width="60%"))
    display(w.HBox([layer, key]))
    key_view = display(HTML(_memory_trigger_html(model, search, corpus, layer.value, key.value)), display_id=True)
    display(text)
    prompt_view = display(HTML(_memory_prompt_html(model, text.value)), display_id=True)

    def on_layer(change) -> None:
        key.options = [(str(k), i) for i, k in enumerate(search.triggers[change["new"]].keys)]

    def on_key(change) -> None:
        if change["new"] is not None:
            key_view.update(HTML(_memory_trigger_html(model, search, corpus, layer.value, key.value)))

    layer.observe(on_layer, names="value")
    key.observe(on_key, names="value")
    text.on_submit(lambda _: prompt_view.update(HTML(_memory_prompt_html(model, text.value))))


# --- causal tracing (chapter 3a) ----------------------------------------------------------


def trace_explorer(model, prompt: str = "The Space Needle is located in the city of",
                   subject: str = "The Space Needle", kind: str = "hidden", samples: int = 3,
                   noise: float = 3.0, window: int = 10, initial=None) -> None:
    """Causal tracing of any prompt (chapter 3a): write a prompt and its subject, choose the
    kind of state restored, the noise samples, the noise (× the embeddings' std) and the window;
    press "trace" to see the heatmap (``factlens.tracing.trace``). The default is shown at once
    (``initial``: a trace of the default already computed, shown instead of tracing it again)."""
    import html

    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import HTML, display

    from factlens.plots import plot_trace
    from factlens.tracing import KINDS, trace

    text = w.Text(value=prompt, description="prompt", layout=w.Layout(width="60%"))
    subj = w.Text(value=subject, description="subject")
    kinds = w.Dropdown(options=list(KINDS), value=kind, description="restore")
    n = w.IntSlider(value=samples, min=1, max=20, description="samples")
    scale = w.FloatSlider(value=noise, min=0.0, max=10.0, step=0.5, description="noise × σ")
    width = w.IntSlider(value=window, min=1, max=model.cfg.n_layers, description="window")
    go = w.Button(description="trace")

    def render(t=None):
        try:
            t = t or trace(model, text.value, subj.value, kinds.value, samples=n.value, noise=scale.value,
                           window=width.value)
        except ValueError as err:
            return HTML(f"<b>{html.escape(str(err))}</b>")
        fig = plot_trace(t)
        plt.close(fig)
        return fig

    display(w.VBox([w.HBox([text, subj]), w.HBox([kinds, n]), w.HBox([scale, width, go])]))
    result = display(render(initial), display_id=True)
    go.on_click(lambda _: result.update(render()))


# --- editing and evaluation (chapter 3b) --------------------------------------------------


def edit_case_browser(frames: dict, cases: list) -> None:
    """Pick a CounterFact case evaluated by ``factlens.evaluation.evaluate_counterfact``: shows
    its request and, per method, the case's scores (``frames``: ``{method: DataFrame}``).
    Needs no model: the static book shows the first case."""
    import ipywidgets as w
    import pandas as pd
    from IPython.display import display

    by_id = {c.case_id: c for c in cases}
    ids = [i for i in frames[next(iter(frames))]["case_id"] if i in by_id]
    if not ids:
        raise ValueError("the frames hold none of the given cases; pass the cases that were evaluated")
    out = w.Output()

    def render(case_id: int) -> None:
        case = by_id[case_id]
        rows = {m: f[f["case_id"] == case_id].drop(columns=["case_id"]).iloc[0] for m, f in frames.items()}
        print(f"{case.prompt.replace('{}', case.subject)} [{case.target_true} -> {case.target_new}]")
        print(f"paraphrase: {case.paraphrase_prompts[0]!r}; neighbour: {case.neighborhood_prompts[0][0]!r}")
        display(pd.DataFrame(rows).T.round(3))

    def show(case_id: int) -> None:
        out.clear_output(wait=True)
        with out:
            render(case_id)

    render(ids[0])  # a plain output: the static book shows it
    pick = w.Dropdown(options=ids, value=ids[0], description="case")
    pick.observe(lambda change: show(change["new"]), names="value")
    display(w.VBox([pick, out]))


def rome_editor(model, prompt: str = "{} is located in the city of", subject: str = "The Eiffel Tower",
                target: str = "Rome", probes: tuple[str, ...] = (), layer: int | None = None,
                max_new_tokens: int = 20) -> None:
    """Edit one fact with ROME and compare the model before and after: the top next token
    and a greedy continuation of the edited prompt and of each probe prompt. Shows the
    default edit when created (the static book); with a kernel, change the fields and press
    "edit". The edit is undone after each rendering."""
    import ipywidgets as w
    import pandas as pd
    from IPython.display import display

    from factlens import rome
    from factlens.models import view

    v = view(model)
    out = w.Output()

    def table(prompts: list[str]) -> list[str]:
        top = [row[0] for row in v.top_tokens(prompts)]
        texts = rome.generate(model, prompts, max_new_tokens)
        return [f"[{t.strip()}] {s.strip()}" for t, s in zip(top, texts)]

    def render(prompt: str, subject: str, target: str, layer: int | None) -> None:
        request = rome.EditRequest(prompt, subject, target)
        prompts = [request.text, *probes]
        before = table(prompts)
        with rome.edit(model, request, layer=layer) as e:
            after = table(prompts)
        print(f"{request.text} -> {target!r} at layer {e.layer}: P(target) {e.info['target_prob']:.2f} "
              f"after optimizing v*, {e.info['seconds']:.1f} s")
        display(pd.DataFrame({"prompt": prompts, "before [top token] greedy text": before,
                              "after": after}).style.hide(axis="index"))

    render(prompt, subject, target, layer)  # a plain output: the static book shows it
    fields = [w.Text(value=prompt, description="prompt"), w.Text(value=subject, description="subject"),
              w.Text(value=target, description="target"),
              w.IntSlider(value=rome.default_hparams(model).layer if layer is None else layer,
                          min=0, max=v.n_layers - 1, description="layer")]
    button = w.Button(description="edit")

    def run(_: object) -> None:
        out.clear_output(wait=True)
        with out:
            try:
                render(*(f.value for f in fields))
            except ValueError as err:  # bad request: say what was wrong
                print(err)

    button.on_click(run)
    display(w.VBox([*fields, button, out]))
