"""Figures of the chapter "What came after" (matplotlib, one function per figure; ``factlens.show.plots`` holds
the other chapters'). Each takes results, not a model, and returns the ``Figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

# --- does localization inform editing? (Hase et al. 2023) ----------------------------------------


def plot_localization(frame: pd.DataFrame, effect: str = "mlp_effect", model_label: str = "ours",
                      rome_layer: int | None = None) -> plt.Figure:
    """Left: every (case, layer) of ``factlens.editing.localization.localize_and_edit``, its rewrite score against
    its tracing effect, one colour per edited layer (the paper's Figure 4 over all layers). Right: the means over
    cases per layer of the tracing effect and of the rewrite score (ROME's layer marked)."""
    fig, (scatter, curves) = plt.subplots(1, 2, figsize=(10, 3.8))
    layers = sorted(frame["layer"].unique())
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.95, len(layers)))
    for layer, colour in zip(layers, colours):
        rows = frame[frame["layer"] == layer]
        scatter.scatter(rows[effect], rows["rewrite_score"], s=14, color=colour, label=f"layer {layer}", alpha=0.8)
    scatter.plot([0, 1], [0, 1], ls="--", c="#b00020", lw=1, label="a perfect relation")
    scatter.set_xlabel("tracing effect (fraction of the total effect)")
    scatter.set_ylabel("rewrite score")
    scatter.set_title(f"{model_label}: edit success against tracing effect", fontsize=9)
    scatter.legend(fontsize=7, frameon=False, ncol=2)
    means = frame.groupby("layer")[[effect, "rewrite_score"]].mean()
    curves.plot(means.index, means[effect], marker="o", label="tracing effect (MLP)")
    curves.plot(means.index, means["rewrite_score"], marker="s", label="rewrite score (ROME at that layer)")
    if rome_layer is not None:
        curves.axvline(rome_layer, ls=":", c="grey", lw=1, label=f"ROME's layer {rome_layer}")
    curves.set_xlabel("layer")
    curves.set_ylim(min(0.0, float(np.nanmin(means.to_numpy())) - 0.05), 1.05)
    curves.set_title("means over cases", fontsize=9)
    curves.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def plot_localization_case(frame: pd.DataFrame, case_id: int, title: str = "") -> plt.Figure:
    """One case's tracing effects (MLP, the largest over tokens and at the last subject token; hidden states at the
    last subject token) and ROME's rewrite score at each layer (the localization browser's figure)."""
    rows = frame[frame["case_id"] == case_id].sort_values("layer")
    if rows.empty:
        raise ValueError(f"case {case_id} is not in the frame")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for column, label, style in (("mlp_effect", "MLP tracing effect (max over tokens)", "-o"),
                                 ("mlp_effect_last_subject", "MLP, last subject token", ":o"),
                                 ("hidden_effect_last_subject", "hidden state, last subject token", ":^"),
                                 ("rewrite_score", "rewrite score of ROME", "-s")):
        if column in rows and rows[column].notna().any():
            ax.plot(rows["layer"], rows[column], style, label=label, ms=4)
    ax.set_xlabel("layer")
    ax.set_title(title or f"case {case_id}", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


# --- edits outside teacher forcing (Yang et al. 2025) ---------------------------------------------

_WILD_BARS = (("teacher_forced", "teacher forced (token accuracy)"), ("probability", "ES / PS (P[o*] > P[o])"),
              ("generated", "generated (the answer)"))


def plot_wild(summaries: Mapping[str, Mapping[str, Mapping[str, float]]],
              paper: Mapping[str, tuple[float, float]] | None = None, kind: str = "rewrite",
              model_label: str = "ours") -> plt.Figure:
    """Per method (``factlens.editing.in_the_wild.summarize_wild`` of each), bars of its teacher-forced accuracy, ES
    and success in generation on ``kind``'s prompts with their 95% intervals; ``paper``: ``{method: (synthetic,
    WILD)}`` in percent, drawn as markers beside the teacher-forced and generated bars."""
    methods = list(summaries)
    x = np.arange(len(methods))
    width = 0.8 / len(_WILD_BARS)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(methods), 3.6))
    for i, (measure, label) in enumerate(_WILD_BARS):
        cells = [summaries[m].get(f"{measure}_{kind}") for m in methods]
        means = [c["mean"] if c else np.nan for c in cells]
        errors = [[c["mean"] - c["low"] if c else 0 for c in cells], [c["high"] - c["mean"] if c else 0 for c in cells]]
        ax.bar(x + (i - 1) * width, means, width, yerr=errors, capsize=2, label=label, color=f"C{i}")
    marked = [j for j, method in enumerate(methods) if paper and method in paper]
    for k, j in enumerate(marked):
        synthetic, wild = paper[methods[j]]
        ax.scatter([x[j] - width, x[j] + width], [synthetic, wild], marker="D", color="k", zorder=3, s=18,
                   label="the paper (synthetic, WILD)" if k == 0 else None)
    ax.set_xticks(x, methods)
    ax.set_ylabel("percent of cases")
    ax.set_ylim(0, 105)
    ax.set_title(f"{model_label}, {kind} prompts: the same edits scored three ways", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


# --- attribution patching as a fast trace ---------------------------------------------------------


def plot_trace_pair(real, estimate, title: str = "") -> plt.Figure:
    """A causal trace (``factlens.locating.tracing.trace``) beside its first-order estimate
    (``factlens.locating.attribution.attribution_trace``) of the same prompt and noise; ``real`` may be None (the
    estimate alone, while the trace runs)."""
    from factlens.show.plots import plot_trace

    shown = [t for t in (real, estimate) if t is not None]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.8 * len(shown), 0.3 * len(estimate.tokens) + 1.6),
                             squeeze=False)
    for ax, t in zip(axes[0], shown):
        plot_trace(t, ax=ax)
        ax.set_title("estimate (attribution patching): approximate" if t is estimate else "causal trace", fontsize=9)
    fig.suptitle(title or f"{estimate.prompt!r} → {estimate.answer.strip()!r}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_attribution(comparisons: Sequence) -> plt.Figure:
    """Left: every site of every prompt (``factlens.locating.attribution.compare``), the estimated indirect effect
    against the traced one (the diagonal: a perfect estimate). Right: per prompt, Spearman's ρ of the two maps and
    how many times faster the estimate was."""
    fig, (sites, per_prompt) = plt.subplots(1, 2, figsize=(10, 3.8))
    top = 0.0
    for i, c in enumerate(comparisons):
        traced, estimated = c.trace.indirect_effect.flatten(), c.estimate.indirect_effect.flatten()
        keep = ~(traced.isnan() | estimated.isnan())
        sites.scatter(traced[keep], estimated[keep], s=6, alpha=0.5, color=f"C{i % 10}")
        top = max(top, float(traced[keep].abs().max()), float(estimated[keep].abs().max()))
    sites.plot([-top, top], [-top, top], ls="--", c="grey", lw=1)
    sites.set_xlabel("indirect effect, causal trace")
    sites.set_ylabel("indirect effect, first-order estimate")
    sites.set_title("every (token, layer) of every prompt; one colour per prompt", fontsize=9)
    rho = [c.agreement.spearman for c in comparisons]
    speed = [c.speedup for c in comparisons]
    x = np.arange(len(comparisons))
    per_prompt.bar(x, rho, color="C0", label="Spearman's ρ")
    per_prompt.set_ylim(-1, 1)
    per_prompt.set_xlabel("prompt")
    per_prompt.set_ylabel("Spearman's ρ")
    twin = per_prompt.twinx()
    twin.plot(x, speed, "ko", ms=4, label="times faster")
    twin.set_ylabel("times faster than the trace")
    per_prompt.set_title("agreement and speed per prompt", fontsize=9)
    fig.tight_layout()
    return fig


# --- how the attribute reaches the last token (Geva et al. 2023) -----------------------------------


def plot_knockout(changes: Mapping[str, object], rates: Mapping[str, object], window: int,
                  model_label: str = "ours") -> plt.Figure:
    """Left: the relative change of the answer's probability (percent) per layer when the last position cannot
    attend to each source set in a window of ``window`` layers around it (``knockout.mean_relative_change``; the
    paper's Figure 2). Right: the extraction rate per layer of the attention and MLP sublayers
    (``Extraction.rate``)."""
    fig, (knocked, extracted) = plt.subplots(1, 2, figsize=(10, 3.6))
    for source, change in changes.items():
        values = 100 * np.asarray(change, dtype=float)
        knocked.plot(np.arange(len(values)), values, marker="o", ms=3, label=source)
    knocked.axhline(0, c="grey", lw=0.8)
    knocked.set_xlabel("layer (window centre)")
    knocked.set_ylabel("change of p(answer), %")
    knocked.set_title(f"{model_label}: attention knockout, {window} layers at a time", fontsize=9)
    knocked.legend(fontsize=7, frameon=False)
    for sublayer, rate in rates.items():
        values = 100 * np.asarray(rate, dtype=float)
        extracted.plot(np.arange(len(values)), values, marker="s", ms=3, label={"attn": "attention", "mlp": "MLP"}.get(
            sublayer, sublayer))
    extracted.set_xlabel("layer")
    extracted.set_ylabel("facts with the answer on top, %")
    extracted.set_title("attribute extraction at the last position", fontsize=9)
    extracted.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
