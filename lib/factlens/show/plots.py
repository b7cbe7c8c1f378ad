"""Figures shared by the chapters and the playground (matplotlib, one function per figure).

Each chapter keeps its figures in its own section below; a function takes results, not a
model, and returns the matplotlib ``Figure`` so a notebook shows it and a test can check it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

# --- LAMA (chapter 1) ---------------------------------------------------------------------


def plot_lama_comparison(ours: dict, paper: dict, model_label: str = "ours",
                         paper_label: str = "BERT-large") -> "plt.Figure":
    """P@1 per row of the paper's table: our bar beside the paper's (``{row: P@1 %}``; rows
    missing on either side are left empty)."""
    import numpy as np

    rows = list(ours)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * len(rows), 3.4))
    ax.bar(x - 0.2, [ours[r] for r in rows], 0.4, label=model_label)
    ax.bar(x + 0.2, [paper.get(r, np.nan) for r in rows], 0.4, label=f"{paper_label} (Petroni et al.)", color="grey")
    ax.set_xticks(x, rows, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("P@1 (%)")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_p_at_k(curves, paper_p_at_1: dict | None = None, title: str = "") -> "plt.Figure":
    """P@k for k = 1..100 per corpus (``ProbeResult.p_at_k_curve``), log k axis; the paper's
    P@1 of BERT-large as a diamond at k = 1 in the corpus's colour."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, name in enumerate(curves.columns):
        ax.plot(curves.index, curves[name], label=name, color=f"C{i}")
        if paper_p_at_1 and name in paper_p_at_1:
            ax.scatter([1], [paper_p_at_1[name]], marker="D", color=f"C{i}", edgecolor="k", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("P@k (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "P@k; diamonds: BERT-large's P@1 in the paper", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_reliability(table, spearman: float | None = None) -> "plt.Figure":
    """P@1 against the model's confidence in its top answer (``probing.reliability``): a
    calibrated model lies on the diagonal."""
    fig, ax = plt.subplots(figsize=(4, 3.4))
    ax.plot([0, 100], [0, 100], ls="--", c="grey", lw=1, label="calibrated")
    ax.plot(table["confidence"] * 100, table["p_at_1"], marker="o", label="ours")
    ax.set_xlabel("confidence: P(top answer) (%)")
    ax.set_ylabel("P@1 (%)")
    ax.set_title("reliability" + (f" (Spearman {spearman:.2f})" if spearman is not None else ""), fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_binned_p_at_1(tables: dict, xlabels: dict | None = None) -> "plt.Figure":
    """P@1 per equal-count bin of a per-fact quantity (``probing.binned_p_at_1``), one panel
    per quantity (object frequency, subject-object similarity...)."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.2), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        ax.plot(table["value"], table["p_at_1"], marker="o")
        ax.set_xlabel((xlabels or {}).get(name, name))
        ax.set_ylabel("P@1 (%)")
        ax.set_title(name, fontsize=9)
        if name.lower().startswith("object frequency"):
            ax.set_xscale("symlog")
    fig.tight_layout()
    return fig

# --- key-value memories (chapter 2) -------------------------------------------------------
def _memory_layer_lines(ax, series: dict, styles: dict | None = None) -> None:
    """One line per named {layer: value} series, layers on the x axis."""
    for name, values in series.items():
        layers = sorted(values)
        ax.plot(layers, [values[l] for l in layers], marker="o", ms=3, label=name, **(styles or {}).get(name, {}))
    ax.set_xlabel("layer")
    ax.legend(fontsize=8)


def plot_trigger_patterns(scores: dict) -> "plt.Figure":
    """Shallow and semantic pattern scores of the keys' triggers per layer, random prefixes dashed
    (``factlens.memories.keys.pattern_scores``)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    null = scores["null"]
    _memory_layer_lines(a, {"same last token": scores["shallow_last"], "same last bigram": scores["shallow_bigram"]})
    a.axhline(null["shallow_last"], ls="--", c="C0", lw=1, label="random prefixes")
    a.axhline(null["shallow_bigram"], ls="--", c="C1", lw=1)
    a.set_title("shallow: triggers share their ending")
    a.set_ylabel("P(two triggers share it)")
    a.legend(fontsize=8)
    _memory_layer_lines(b, {"triggers (different last tokens)": scores["semantic"]},
                        {"triggers (different last tokens)": {"c": "C2"}})
    b.axhline(null["semantic"], ls="--", c="C2", lw=1, label="random prefixes")
    b.set_title("semantic: similar in the model's residual stream")
    b.set_ylabel("mean cosine (centered)")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_removal_drops(drops: dict) -> "plt.Figure":
    """Relative drop of a key's coefficient when the first, last or a random token of its
    top triggers is removed, per layer (``factlens.memories.keys.removal_drops``)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    _memory_layer_lines(ax, {f"remove {w} token": d for w, d in drops.items()})
    ax.axhline(0, c="gray", lw=0.5)
    ax.set_ylabel("relative drop of m_i")
    ax.set_title("which token triggers the key?")
    fig.tight_layout()
    return fig


def plot_value_agreement(agreement: dict, baseline: dict, paper_upper: float) -> "plt.Figure":
    """Share of keys whose value's top token is the next token of the key's top trigger,
    per layer, against chance and the paper's upper-layer level (``factlens.memories.values.value_agreement``)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    _memory_layer_lines(ax, {"value top token = next token of top trigger": agreement,
                             "chance (corpus frequency)": baseline}, {"chance (corpus frequency)": {"ls": "--"}})
    ax.axhline(paper_upper, c="k", ls=":", lw=1, label=f"Geva et al., upper layers (~{paper_upper:.1%})")
    ax.set_ylabel("agreement")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_memory_aggregation(agg: dict, paper_active: tuple[float, float], paper_composed: float) -> "plt.Figure":
    """Left: active memories (m_i != 0), negative ones, the share carrying 90% of the output and
    composed predictions per layer; right: the residual's refinement (already final) and, when
    the FF changes the top token, what it becomes (``factlens.memories.aggregation.aggregation``)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    _memory_layer_lines(a, {"active memories (m_i != 0)": agg["active_fraction"],
                            "negative coefficients (m_i < 0)": agg["negative_fraction"],
                            "memories carrying 90% of the output": agg["mass_fraction"],
                            "top differs from every memory's": agg["composed"]})
    a.axhspan(*paper_active, color="C0", alpha=0.1, label=f"Geva: active {paper_active[0]:.0%}-{paper_active[1]:.0%}")
    a.axhline(paper_composed, c="C3", ls=":", label=f"Geva: composed >= {paper_composed:.0%}")
    a.set_ylim(0, 1.02)
    a.set_title("composition")
    a.legend(fontsize=7)
    _memory_layer_lines(b, {"residual top = final prediction": agg["final"], "FF changes the top": agg["changed"],
                            "... to the FF's own top": agg["to_ff_top"],
                            "... to the runner-up (veto)": agg["to_runner_up"],
                            "... to another token": agg["to_other"]})
    b.set_ylim(0, 1)
    b.set_title("refinement of the residual")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --- causal tracing (chapter 3a) ----------------------------------------------------------
_TRACE_COLORS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
_TRACE_TITLES = {"hidden": "single restored layer", "mlp": "restored MLP (window)",
                 "attn": "restored attention (window)"}


def plot_trace(trace, ax=None) -> "plt.Figure":
    """Heatmap of one causal trace (``factlens.locating.tracing.trace``), as the paper's Figure 1:
    tokens down, layers across, P*[o] with the state restored; subject tokens starred."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 0.3 * len(trace.tokens) + 1.2))
    image = ax.pcolormesh(trace.scores.numpy(), cmap=_TRACE_COLORS[trace.kind], vmin=trace.corrupted_prob)
    ax.invert_yaxis()
    ax.set_yticks([i + 0.5 for i in range(len(trace.tokens))])
    ax.set_yticklabels([repr(t)[1:-1] + ("*" if i in trace.subject_span else "") for i, t in enumerate(trace.tokens)],
                       fontsize=8)
    ax.set_xlabel("layer")
    sever = trace.settings.get("sever")
    ax.set_title(f"{_TRACE_TITLES[trace.kind]}{', ' + sever + ' severed' if sever else ''}", fontsize=9)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"p({trace.answer.strip()})", fontsize=8)
    return fig


def plot_traces(traces) -> "plt.Figure":
    """The three kinds of trace of one prompt side by side."""
    fig, axes = plt.subplots(1, len(traces), figsize=(4.6 * len(traces), 0.3 * len(traces[0].tokens) + 1.4))
    for ax, t in zip(axes, traces):
        plot_trace(t, ax=ax)
    fig.suptitle(f"{traces[0].prompt!r} → {traces[0].answer.strip()!r}: p = {traces[0].clean_prob:.3f} clean, "
                 f"{traces[0].corrupted_prob:.3f} corrupted", fontsize=9)
    fig.tight_layout()
    return fig


def plot_average_effects(effects: dict, model_label: str, paper: str = "") -> "plt.Figure":
    """AIE by token group × layer for each kind (the paper's Figure 2), plus the last subject
    token's AIE per layer with its 95% band; ``paper``: the paper's numbers, under the title."""
    kinds = list(effects)
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.4 * (len(kinds) + 1), 3.2))
    for ax, kind in zip(axes, kinds):
        e = effects[kind]
        image = ax.pcolormesh(e.mean.numpy(), cmap=_TRACE_COLORS[kind], vmin=0)
        ax.invert_yaxis()
        ax.set_yticks([i + 0.5 for i in range(len(e.groups))])
        ax.set_yticklabels(e.groups if ax is axes[0] else [], fontsize=8)
        ax.set_xlabel("layer")
        ax.set_title(f"AIE, {_TRACE_TITLES[kind]}", fontsize=9)
        fig.colorbar(image, ax=ax)
    ax = axes[-1]
    for kind in kinds:
        e = effects[kind]
        g = e.groups.index("last subject token")
        layers = range(e.mean.shape[1])
        ax.plot(layers, e.mean[g].numpy(), label=kind, color={"hidden": "C4", "mlp": "C2", "attn": "C3"}[kind])
        ax.fill_between(layers, e.low[g].numpy(), e.high[g].numpy(), alpha=0.2,
                        color={"hidden": "C4", "mlp": "C2", "attn": "C3"}[kind])
    ax.set_xlabel("layer")
    ax.set_title("AIE at the last subject token (95% band)", fontsize=9)
    ax.legend(fontsize=8)
    e = effects[kinds[0]]
    fewest = min(c for c in e.count if c)
    title = f"{model_label}, {e.n_facts} known facts"
    if fewest < e.n_facts:
        title += f" (rows other than the last subject token and last token: the {fewest} traced at every token)"
    fig.suptitle(title + (f"\n{paper}" if paper else ""), fontsize=9)
    fig.tight_layout()
    return fig


def plot_severed(baseline, severed: dict, model_label: str, paper: str = "") -> "plt.Figure":
    """AIE of restoring the last subject token's hidden state, with the MLPs or the attention
    of the layers above frozen at their corrupted values (the paper's Figure 7); ``paper``:
    the paper's finding, under the title."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    g = baseline.groups.index("last subject token")
    layers = range(baseline.mean.shape[1])
    for label, e, color in [("no severing", baseline, "C4"),
                            *[(f"{k} severed", e, {"mlp": "C2", "attn": "C3"}[k]) for k, e in severed.items()]]:
        ax.plot(layers, e.mean[g].numpy(), label=label, color=color)
        ax.fill_between(layers, e.low[g].numpy(), e.high[g].numpy(), alpha=0.2, color=color)
    ax.set_xlabel("layer restored")
    ax.set_ylabel("AIE at the last subject token")
    ax.set_title(f"{model_label}: severing the path above the restored state" + (f"\n{paper}" if paper else ""),
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- editing and evaluation (chapter 3b) --------------------------------------------------


def plot_edit_metrics(summaries: dict, paper: dict, metrics: list[str] | tuple[str, ...],
                      title: str = "", model_label: str = "ours", row_of: dict | None = None):
    """Grouped bars: one group per metric, one bar per method (our mean with its 95% interval),
    and the paper's number for the same method as a black diamond on the bar.

    ``summaries`` is ``{method: factlens.editing.evaluation.summarize(...)}``, ``paper``
    ``{method: {metric: value}}`` (``factlens.editing.evaluation.PAPER_COUNTERFACT`` / ``PAPER_ZSRE``);
    ``row_of`` maps our method names to the paper's rows where they differ.
    """
    import numpy as np

    methods = list(summaries)
    metrics = [m for m in metrics if any(m in summaries[k] for k in methods)]
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.4 + 1.3 * len(metrics), 3.6))
    for i, method in enumerate(methods):
        x = np.arange(len(metrics)) + (i - (len(methods) - 1) / 2) * width
        s = summaries[method]
        mean = np.array([s[m]["mean"] if m in s else np.nan for m in metrics])
        err = np.array([[s[m]["mean"] - s[m]["low"], s[m]["high"] - s[m]["mean"]] if m in s else [0, 0]
                        for m in metrics]).T
        ax.bar(x, mean, width, yerr=err, capsize=2, label=method, color=f"C{i}", alpha=0.85)
        ref = [paper.get((row_of or {}).get(method, method), {}).get(m, np.nan) for m in metrics]
        ax.scatter(x, ref, marker="D", color="black", s=14, zorder=3,
                   label="paper (GPT-2 XL)" if i == 0 else None)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(np.arange(len(metrics)), metrics)
    ax.set_ylabel("percent")
    ax.set_title(title or f"Editing metrics ({model_label}); diamonds: the paper")
    ax.legend(fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def plot_layer_sweep(sweep, tracing_peak: int | None = None, chosen: int | None = None,
                     metrics: tuple[str, ...] = ("S", "ES", "PS", "NS"), model_label: str = "ours"):
    """ROME at each layer (``sweep``: a DataFrame with a ``layer`` column and one column per
    metric, in percent): one line per metric, the tracing chapter's peak of the MLP effect at
    the last subject token as a dashed line (or a note that tracing has not been run), and
    the default layer as a dotted one."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for i, m in enumerate(metrics):
        if m in sweep:
            ax.plot(sweep["layer"], sweep[m], marker="o", ms=3, color=f"C{i}", label=m,
                    lw=2.2 if m == "S" else 1.2)
    if tracing_peak is not None:
        ax.axvline(tracing_peak, color="black", ls="--", lw=1, label=f"tracing peak (layer {tracing_peak})")
    else:
        ax.text(0.01, 0.02, "tracing chapter not run: no peak to mark", transform=ax.transAxes, fontsize=7)
    if chosen is not None:
        ax.axvline(chosen, color="grey", ls=":", lw=1, label=f"default layer {chosen}")
    ax.set_xlabel("edited layer")
    ax.set_ylabel("percent")
    ax.set_ylim(-3, 103)
    ax.set_title(f"ROME at each layer ({model_label})")
    ax.legend(fontsize=7, frameon=False, ncol=3)
    fig.tight_layout()
    return fig


def plot_stats_convergence(frame, model_label: str = "ours"):
    """How ROME converges with the number of keys in C (``frame``: columns ``keys``, ``cosine``
    (of C⁻¹k* to the direction with the most keys) and metrics in percent; a row with ``keys``
    0 is the C = I ablation, drawn as horizontal lines)."""
    real = frame[frame["keys"] > 0].sort_values("keys")
    identity = frame[frame["keys"] == 0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    a.plot(real["keys"], real["cosine"], marker="o", color="C0")
    if len(identity):
        a.axhline(float(identity["cosine"].iloc[0]), color="C3", ls="--", label="C = I")
        a.legend(fontsize=7, frameon=False)
    a.set_xscale("log")
    a.set_xlabel("keys in C")
    a.set_ylabel("cos(C⁻¹k*, reference)")
    a.set_title("the update's direction")
    for i, m in enumerate(("S", "ES", "PS", "NS")):
        if m in frame:
            b.plot(real["keys"], real[m], marker="o", ms=3, color=f"C{i}", label=m)
            if len(identity):
                b.axhline(float(identity[m].iloc[0]), color=f"C{i}", ls="--", lw=0.8)
    b.set_xscale("log")
    b.set_xlabel("keys in C (dashed: C = I)")
    b.set_ylabel("percent")
    b.set_ylim(-3, 103)
    b.set_title("edit quality")
    b.legend(fontsize=7, frameon=False, ncol=2)
    fig.suptitle(f"Estimating C = KKᵀ ({model_label})", fontsize=10)
    fig.tight_layout()
    return fig


# --- many edits (chapter 3d) --------------------------------------------------------------------

SEQUENTIAL_LABELS = {"efficacy_newest": "efficacy of the newest edits (%)",
                     "retention": "retention of earlier edits (%)",
                     "specificity": "neighbourhood specificity (%)",
                     "lama_p_at_1": "LAMA P@1, untouched facts (%)",
                     "entropy": "generation entropy (×100)"}


def plot_sequential(curves: dict, metrics: tuple[str, ...] = tuple(SEQUENTIAL_LABELS), flagged: dict | None = None,
                    model_label: str = "ours"):
    """Sequential editing, one panel per metric: each method's measurements (``curves``:
    ``{method: DataFrame with n_edits, metric, value, low, high}``) against the number of edits,
    with the 95% interval shaded. ``flagged`` (``{method: [n_edits, ...]}``) marks the edits the
    collapse forecaster flagged, as ticks at the bottom of every panel."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.9 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (method, frame) in enumerate(curves.items()):
            rows = frame[frame["metric"] == metric].sort_values("n_edits")
            rows = rows[rows["value"].notna()]
            if rows.empty:
                continue
            ax.plot(rows["n_edits"], rows["value"], marker="o", ms=3, color=f"C{i}", label=method)
            ax.fill_between(rows["n_edits"], rows["low"], rows["high"], color=f"C{i}", alpha=0.15, lw=0)
            for n in (flagged or {}).get(method, []):
                ax.plot([n], [0], marker="|", ms=8, color=f"C{i}", transform=ax.get_xaxis_transform(), clip_on=False)
        ax.set_title(SEQUENTIAL_LABELS.get(metric, metric), fontsize=8)
        ax.set_xlabel("edits so far")
        if metric != "entropy":
            ax.set_ylim(-3, 103)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"Editing one fact after another ({model_label})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_forecast(forecasts, flag_ratio: float, model_label: str = "ours"):
    """The collapse forecaster on a ROME sequence (``forecasts``: one row per edit with
    ``update_norm``, ``update_norm_unprefixed``, ``denominator_ratio``, ``subject_first``): the size of
    each update with the averaged key k* everywhere against ROME's code's unprefixed key in the
    denominator, and the flag line."""
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    first = forecasts["subject_first"].to_numpy(bool)
    groups = ((~first, "subject later in the prompt", "C0"), (first, "subject opens the prompt", "C3"))
    for mask, label, color in groups:
        a.scatter(forecasts["update_norm"][mask], forecasts["update_norm_unprefixed"][mask], s=10,
                  color=color, label=label)
        b.hist(np.clip(forecasts["denominator_ratio"][mask], -1, 3), bins=40, range=(-1, 3), color=color, alpha=0.6,
               label=label)
    low = min(forecasts["update_norm"].min(), forecasts["update_norm_unprefixed"].min())
    high = max(forecasts["update_norm"].max(), forecasts["update_norm_unprefixed"].max())
    a.plot([low, high], [low, high], color="grey", lw=0.8)
    a.axhline(flag_ratio, color="black", ls=":", lw=1, label=f"flag: ‖ΔW‖/‖W‖ > {flag_ratio:g}")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("‖ΔW‖/‖W‖ with k* (factlens, r-ROME)")
    a.set_ylabel("‖ΔW‖/‖W‖ with k₀ (ROME's code)")
    a.legend(fontsize=7, frameon=False)
    b.axvline(1, color="grey", lw=0.8)
    b.set_xlabel("uᵀk₀ / uᵀk*  (clipped to [-1, 3])")
    b.set_ylabel("edits")
    b.legend(fontsize=7, frameon=False)
    fig.suptitle(f"What predicts a disabling edit ({model_label})", fontsize=10)
    fig.tight_layout()
    return fig


# --- the Claims page ------------------------------------------------------------------------

VERDICT_COLOURS = {"reproduced": "#2e7d32", "partly": "#9ccc65", "inconclusive": "#bdbdbd",
                   "not reproduced": "#c62828"}


def plot_verdicts(frame) -> "plt.Figure":
    """The claims' verdicts per chapter, one panel per model: a bar per chapter, split by
    verdict (``frame``: ``claims.claims_frame`` with a ``model`` column)."""
    import pandas as pd

    models = list(dict.fromkeys(frame["model"])) or ["none"]
    chapters = list(dict.fromkeys(frame["chapter"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 0.45 * max(len(chapters), 2) + 1.4),
                             sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        counts = pd.crosstab(frame.loc[frame["model"] == model, "chapter"],
                             frame.loc[frame["model"] == model, "verdict"])
        counts = counts.reindex(index=chapters, columns=list(VERDICT_COLOURS), fill_value=0)
        left = [0] * len(chapters)
        for verdict, colour in VERDICT_COLOURS.items():
            ax.barh(chapters, counts[verdict], left=left, color=colour, label=verdict)
            left = [a + b for a, b in zip(left, counts[verdict])]
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("claims")
        ax.invert_yaxis()
    axes[0][-1].legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.tight_layout()
    return fig


FOREST_SCALE = ("value claim: (ours − paper) / τ, the paper's band at ±1;\nordering claim: ours / τ on the "
                "paper's side, reproduced beyond +1 (symmetric log scale)")


def _forest_x(row) -> tuple[float, float, float, float | None, float | None, tuple[float, float]]:
    """One claim on the forest plot's common scale: (estimate, low, high, the paper's mark, the
    reference's mark, the band a reproduced interval lies in), each in units of τ."""
    import math

    tau = float(row["tau"])
    paper_value = row["paper"]
    has_paper = paper_value is not None and not (isinstance(paper_value, float) and math.isnan(paper_value))
    if row["kind"] == "value":
        centre = float(paper_value)
        x = [(float(row[k]) - centre) / tau for k in ("ours", "low", "high")]
        reference = row.get("reference")
        ref = None if reference is None or math.isnan(float(reference)) else (float(reference) - centre) / tau
        return x[0], x[1], x[2], 0.0, ref, (-1.0, 1.0)
    sign = math.copysign(1.0, float(paper_value)) if has_paper else 1.0
    x = sorted(sign * float(row[k]) / tau for k in ("low", "high"))
    mark = abs(float(paper_value)) / tau if has_paper else None
    return sign * float(row["ours"]) / tau, x[0], x[1], mark, 0.0, (1.0, math.inf)


def plot_forest(frame, title: str = "") -> "plt.Figure":
    """Every claim of ``frame`` (``claims.forest_frame``: one row per claim and model) as a forest plot:
    one row of panels per chapter, one panel per model, one line per claim.

    The claims' scales differ (percent, probability, layers), so each is drawn in units of its τ
    (:data:`FOREST_SCALE`): a value claim at (ours − paper)/τ, where the paper's band is [−1, 1] and
    the paper's number (a black diamond) at 0; an ordering at ours/τ read on the paper's side, where
    the rule's bar is +1 (τ), no difference 0 and the paper's difference (a diamond, when it gives
    one) at |p|/τ. The grey box behind a line is where a reproduced interval lies; a grey tick marks
    a value claim's reference (chance, baseline, unedited). Our interval and estimate are coloured
    by verdict (:data:`VERDICT_COLOURS`); the x axis is a symmetric log scale, linear within ±2."""
    import math

    from matplotlib.patches import Patch, Rectangle

    chapters = list(dict.fromkeys(frame["chapter"])) or ["none"]
    models = list(dict.fromkeys(frame["model"])) or ["none"]
    per_chapter = {ch: list(dict.fromkeys(frame.loc[frame["chapter"] == ch, "claim"])) for ch in chapters}
    heights = [max(len(per_chapter[ch]), 1) + 1.2 for ch in chapters]
    fig, axes = plt.subplots(len(chapters), len(models), figsize=(3.4 + 3.6 * len(models), 0.26 * sum(heights) + 1.9),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    limit = 2.0
    for (i, chapter), (j, model) in ((c, m) for c in enumerate(chapters) for m in enumerate(models)):
        ax = axes[i][j]
        names = per_chapter[chapter]
        rows = frame[(frame["chapter"] == chapter) & (frame["model"] == model)]
        for _, row in rows.iterrows():
            y = names.index(row["claim"])
            est, low, high, mark, ref, band = _forest_x(row)
            limit = max(limit, *(abs(v) for v in (est, low, high, mark or 0.0, ref or 0.0) if math.isfinite(v)))
            right = band[1] if math.isfinite(band[1]) else 1e6
            ax.add_patch(Rectangle((band[0], y - 0.38), right - band[0], 0.76, color="#e8e8e8", lw=0, zorder=0))
            colour = VERDICT_COLOURS[row["verdict"]]
            ax.plot([low, high], [y, y], color=colour, lw=2.2, solid_capstyle="butt", gid=f"interval:{row['claim']}",
                    zorder=2)
            ax.plot([est], [y], "o", color=colour, ms=4, zorder=3)
            if mark is not None:
                ax.plot([mark], [y], "D", color="k", ms=4, zorder=4, gid=f"paper:{row['claim']}")
            if ref is not None and row["kind"] == "value":
                ax.plot([ref], [y], "|", color="#616161", ms=10, mew=1.5, zorder=1)
        ax.axvline(0, color="#9e9e9e", lw=0.6, zorder=0)
        ax.set_yticks(range(len(names)), names if j == 0 else [""] * len(names), fontsize=7)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xscale("symlog", linthresh=2)
        ax.set_title(f"{chapter}: {model}" if len(models) > 1 else chapter, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for row_axes in axes:
        for ax in row_axes:
            ax.set_xlim(-1.15 * limit, 1.15 * limit)
    height = fig.get_figheight()
    fig.supxlabel("in units of τ. " + FOREST_SCALE, fontsize=7, y=0.45 / height, va="bottom")
    handles = [Patch(color=c, label=v) for v, c in VERDICT_COLOURS.items()]
    handles += [plt.Line2D([], [], marker="D", color="k", ls="", label="the paper"),
                Patch(color="#e8e8e8", label="where a reproduced interval lies")]
    fig.legend(handles=handles, fontsize=7, frameon=False, loc="lower center", ncol=3 if len(models) == 1 else 6,
               bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.85 / height, 1, 1))
    return fig
