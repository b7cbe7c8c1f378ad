"""The papers' numbers, once, and our claims about them: a value with its interval, n and a verdict.

Two halves:

* :data:`PAPER` holds every number of the three papers (and their successors) that the book
  sets beside ours, each with its source (paper, table or figure, model). Notebooks read them
  with :func:`paper` (one number) or :func:`paper_table` (a table's rows); no notebook types one.
* :class:`Claim` is one headline claim of a chapter: a one-sentence statement, the paper's
  number, ours with ``n`` and a 95% interval, and a verdict by :data:`VERDICT_RULE`.
  Chapters make them with ``factlens.evidence.results.Run.claim``; the Claims page collects them.

The intervals: :func:`wilson` for a proportion, :func:`bootstrap` for a mean (or any
statistic) over facts or cases, :func:`bootstrap_difference` for the difference of two
(paired when both are measured on the same cases).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# --------------------------------------------------------------------------- the papers' numbers

PETRONI = "Petroni et al. 2019"
GEVA = "Geva et al. 2021"
MENG = "Meng et al. 2022"
MEMIT = "Meng et al. 2023"
ALPHAEDIT = "Fang et al. 2025"


@dataclass(frozen=True)
class PaperNumber:
    """One number of a paper: its value, where it stands, and the model it is about."""

    value: float
    paper: str
    where: str
    model: str
    note: str = ""

    @property
    def source(self) -> str:
        """"Meng et al. 2022, Table 4, GPT-2 XL" (and the note, when there is one)."""
        text = ", ".join(part for part in (self.paper, self.where, self.model) if part)
        return f"{text} ({self.note})" if self.note else text


PAPER: dict[str, PaperNumber] = {}


def _register(prefix: str, paper_name: str, where: str, model: str, values: dict[str, float],
              note: str = "") -> None:
    for key, value in values.items():
        PAPER[f"{prefix}.{key}"] = PaperNumber(value, paper_name, where, model, note)


# LAMA, Table 2: P@1 in percent. Rows: corpora, relation types, Google-RE's relations.
_register("lama.p_at_1.BERT-large", PETRONI, "Table 2", "BERT-large", {
    "T-REx 1-1": 74.5, "T-REx N-1": 34.2, "T-REx N-M": 24.3, "T-REx": 32.3,
    "Google-RE place_of_birth": 16.1, "Google-RE date_of_birth": 1.4, "Google-RE place_of_death": 14.0,
    "Google-RE": 10.5, "ConceptNet": 19.2, "SQuAD": 17.4})
_register("lama.p_at_1.BERT-base", PETRONI, "Table 2", "BERT-base", {
    "T-REx 1-1": 68.0, "T-REx N-1": 32.4, "T-REx N-M": 24.7, "T-REx": 31.1, "Google-RE": 9.8,
    "ConceptNet": 15.6, "SQuAD": 14.1})
_register("lama.p_at_1.Transformer-XL", PETRONI, "Table 2", "Transformer-XL (left context only)", {"T-REx": 18.3})
_register("lama.p_at_1.fconv", PETRONI, "Table 2", "fairseq-fconv (left context only)", {"T-REx": 8.9})
_register("lama.p_at_1.ELMo", PETRONI, "Table 2", "ELMo", {"T-REx": 4.7})
_register("lama.p_at_1.ELMo 5.5B", PETRONI, "Table 2", "ELMo 5.5B", {"T-REx": 7.1})
_register("lama.p_at_1.Freq", PETRONI, "Table 2", "Freq baseline", {
    "T-REx 1-1": 1.78, "T-REx N-1": 23.85, "T-REx N-M": 21.95, "T-REx": 22.0,
    "Google-RE place_of_birth": 4.6, "Google-RE date_of_birth": 1.9, "Google-RE place_of_death": 6.8,
    "Google-RE": 4.4})
_register("lama.p_at_1.RE_o", PETRONI, "Table 2", "RE_o (oracle relation extraction)",
          {"T-REx": 33.8, "Google-RE": 7.6})
_register("lama.p_at_1.DrQA", PETRONI, "Table 2", "DrQA", {"SQuAD": 37.5})
# Derived from Table 2: Google-RE without date_of_birth (a year is never one token of our models'
# tokenizers), and the table's orderings as differences.
for _model in ("BERT-large", "Freq"):
    _register(f"lama.p_at_1.{_model}", PETRONI, "Table 2", PAPER[f"lama.p_at_1.{_model}.T-REx"].model, {
        "Google-RE 2 relations": (PAPER[f"lama.p_at_1.{_model}.Google-RE place_of_birth"].value
                                  + PAPER[f"lama.p_at_1.{_model}.Google-RE place_of_death"].value) / 2},
              note="mean of place_of_birth and place_of_death; the table's Google-RE mean also has date_of_birth")
_register("lama.p_at_1.BERT-large", PETRONI, "Table 2", "BERT-large", {
    "T-REx 1-1 minus N-M": (PAPER["lama.p_at_1.BERT-large.T-REx 1-1"].value
                            - PAPER["lama.p_at_1.BERT-large.T-REx N-M"].value),
    "T-REx minus Freq": PAPER["lama.p_at_1.BERT-large.T-REx"].value - PAPER["lama.p_at_1.Freq.T-REx"].value},
          note="differences of the table's rows")

# Geva et al. 2021: a 16-layer transformer LM on WikiText-103, 4,096 memories per layer.
_register("memories", GEVA, "Section 3.2", "16-layer LM (WikiText-103)", {"patterns_per_key": 3.6},
          note="human-annotated patterns among a key's top-25 triggers")
_register("memories", GEVA, "Figure 4", "16-layer LM (WikiText-103)", {
    "value_agreement_upper": 0.035, "value_agreement_lower": 0.0},
          note="value's top token = next token of the key's top trigger; upper layers 11-16, lower 1-10")
_register("memories", GEVA, "Table 2", "16-layer LM (WikiText-103)", {"max_precision_at_50": 0.92})
_register("memories", GEVA, "Section 5.1", "16-layer LM (WikiText-103)", {
    "active_fraction_low": 0.10, "active_fraction_high": 0.50, "composition_min": 0.68},
          note="memories active per input; layer predictions that no single memory makes")
_register("memories", GEVA, "Section 5.2", "16-layer LM (WikiText-103)", {"early_final_fraction": 1 / 3},
          note="the final prediction is already the residual's top token in the first layers")
_register("memories", GEVA, "Section 5.1", "16-layer LM (WikiText-103)", {"active_layers_in_band": 1.0},
          note="a typical example activates 10%-50% of a layer's memories, in every layer")
_register("memories", GEVA, "Section 3.2", "16-layer LM (WikiText-103)", {"keys_with_pattern": 1.0},
          note="share of sampled keys whose top-25 triggers share at least one pattern the annotators named")
_register("memories", GEVA, "Section 3.2, Figure 2", "16-layer LM (WikiText-103)", {"semantic_upper_minus_lower": 1.0},
          note="direction only: semantic patterns grow in the upper layers (10-16), shallow ones fill layers 1-9")
_register("memories", GEVA, "Section 3.2, Figure 3", "16-layer LM (WikiText-103)", {"removal_last_minus_first": 1.0},
          note="direction only: removing a trigger's last token lowers the coefficient more than its first")
_register("memories", GEVA, "Figure 4", "16-layer LM (WikiText-103)", {
    "value_agreement_upper_minus_lower": PAPER["memories.value_agreement_upper"].value
    - PAPER["memories.value_agreement_lower"].value}, note="upper layers 11-16 minus lower layers 1-10")

# Meng et al. 2022, causal tracing: GPT-2 XL (48 layers), 1,000 known facts.
_register("tracing", MENG, "Section 2.2", "GPT-2 XL (48 layers)", {"ate": 0.186})
_register("tracing", MENG, "Figure 2", "GPT-2 XL (48 layers)", {
    "hidden_last_subject_aie": 0.087, "hidden_last_subject_layer": 15, "mlp_last_subject_aie": 0.066,
    "attn_last_subject_aie": 0.016, "n_layers": 48, "window": 10})
_register("tracing", MENG, "Figure 7", "GPT-2 XL (48 layers)", {"severed_mlp_drop": 1.0},
          note="MLPs severed: the middle layers' effect at the last subject token collapses")
_register("tracing", MENG, "Figure 2", "GPT-2 XL (48 layers)", {"hidden_last_subject_depth": 15 / 47},
          note="the early site, layer 15 of 48, as the relative depth l / (L - 1)")
_register("tracing", MENG, "Section 3.1 and hparams/ROME/gpt2-xl.json", "GPT-2 XL (48 layers)",
          {"mlp_last_subject_depth": 17 / 47},
          note="the MLP layer ROME edits, 17 of 48, where the traces place the decisive MLPs; as l / (L - 1)")
_register("tracing", MENG, "Figure 2", "GPT-2 XL (48 layers)", {"attn_late_site": 1.0},
          note="attention's AIE at the last token lies in the upper layers: the sign of upper half - lower half")

# Meng et al. 2022, Table 4: CounterFact, GPT-2 XL, percent (GE: entropy × 100).
_register("rome.counterfact.unedited", MENG, "Table 4", "GPT-2 XL", {
    "S": 30.5, "ES": 22.2, "PS": 24.7, "NS": 78.1, "GE": 626.6})
_register("rome.counterfact.FT", MENG, "Table 4", "GPT-2 XL", {"S": 65.1, "ES": 100.0, "PS": 87.9, "NS": 40.4})
_register("rome.counterfact.FT+L", MENG, "Table 4", "GPT-2 XL", {"S": 66.9, "ES": 99.1, "PS": 48.7, "NS": 70.3})
_register("rome.counterfact.KN", MENG, "Table 4", "GPT-2 XL", {"S": 35.6, "ES": 28.7, "PS": 28.0, "NS": 72.9})
_register("rome.counterfact.ROME", MENG, "Table 4", "GPT-2 XL", {
    "S": 89.2, "ES": 100.0, "PS": 96.4, "NS": 75.4, "EM": 97.9, "PM": 62.7, "NM": 4.2, "GE": 621.9, "RS": 41.9})
# Meng et al. 2022, Table 3: zsRE, GPT-2 XL, token accuracy in percent (ROME's protocol: edit toward the
# true answer, answers[0]).
_register("rome.zsre.unedited", MENG, "Table 3", "GPT-2 XL",
          {"efficacy": 22.2, "paraphrase": 21.3, "specificity": 24.2})
_register("rome.zsre.FT", MENG, "Table 3", "GPT-2 XL", {"efficacy": 99.6, "paraphrase": 82.1, "specificity": 23.2})
_register("rome.zsre.FT+L", MENG, "Table 3", "GPT-2 XL", {"efficacy": 92.3, "paraphrase": 47.2, "specificity": 23.4})
_register("rome.zsre.ROME", MENG, "Table 3", "GPT-2 XL", {"efficacy": 99.8, "paraphrase": 88.1, "specificity": 24.2})
_register("rome.zsre", MENG, "Table 3", "GPT-2 XL", {
    "specificity_change": PAPER["rome.zsre.ROME.specificity"].value - PAPER["rome.zsre.unedited.specificity"].value},
          note="ROME's specificity minus the unedited model's: accuracy on other facts does not move")
_register("rome", MENG, "Section 3.1 and hparams/ROME/gpt2-xl.json", "GPT-2 XL", {
    "layer": 17, "n_layers": 48, "mom2_samples": 100_000})
_register("rome", MENG, "Figure 5", "GPT-2 XL (48 layers)", {"ps_middle_minus_edges": 1.0},
          note="direction only: edits at the last subject token generalize (paraphrases) best in the middle "
               "layers, where causal tracing peaks, and worse at the first and last layers")
_register("rome", MENG, "Section 3.1, eq. 2", "GPT-2 XL", {"nm_C_minus_identity": 1.0},
          note="direction only: C spreads the update away from the keys text uses, so other subjects' facts "
               "move less than with C = I; the paper reports no C = I ablation")

# Many edits. MEMIT (Meng et al. 2023), Table 2: 10,000 CounterFact edits written into GPT-J in one batch.
_register("many_edits.memit.GPT-J", MEMIT, "Table 2", "GPT-J (10,000 edits in one batch)", {"ES": 98.9})
# AlphaEdit (Fang et al. 2025), Table 1: 2,000 CounterFact edits applied sequentially in batches of 100
# (ROME one at a time, with its code's update), Eff./Gen./Spe. in percent, Flu. the generation entropy x100.
for _model, _rows in {
    "GPT2-XL": {"Pre-edited": (22.23, 24.34, 78.53, 626.64), "ROME": (54.60, 51.18, 52.68, 366.13),
                "MEMIT": (94.70, 85.82, 60.50, 477.26), "AlphaEdit": (99.50, 93.95, 66.39, 597.88)},
    "GPT-J": {"Pre-edited": (16.22, 18.56, 83.11, 621.81), "ROME": (57.50, 54.20, 52.05, 589.42),
              "MEMIT": (98.55, 95.50, 63.64, 546.28), "AlphaEdit": (99.75, 96.38, 75.48, 618.50)},
}.items():
    for _method, _values in _rows.items():
        _register(f"many_edits.sequential.{_model}.{_method}", ALPHAEDIT, "Table 1",
                  f"{_model} (2,000 sequential edits, batches of 100)",
                  dict(zip(("Eff", "Gen", "Spe", "Flu"), _values)))
    for _method in ("MEMIT", "AlphaEdit"):
        _register(f"many_edits.sequential.{_model}.{_method}-ROME", ALPHAEDIT, "Table 1",
                  f"{_model} (2,000 sequential edits, batches of 100)",
                  {"Eff": round(_rows[_method][0] - _rows["ROME"][0], 2)},
                  note=f"{_method}'s efficacy minus ROME's")


def paper(number_id: str) -> PaperNumber:
    """The paper's number with this id (``"rome.counterfact.ROME.S"``), or a KeyError naming near ids."""
    try:
        return PAPER[number_id]
    except KeyError:
        stem = number_id.rsplit(".", 1)[0]
        near = [k for k in PAPER if k.startswith(stem)] or sorted({k.split(".")[0] for k in PAPER})
        raise KeyError(f"no paper number {number_id!r}; near: {', '.join(near[:12])}") from None


def paper_table(prefix: str) -> dict[str, float]:
    """``{row: value}`` of every number whose id is ``prefix.<row>`` (``"lama.p_at_1.BERT-large"``)."""
    rows = {k[len(prefix) + 1:]: n.value for k, n in PAPER.items() if k.startswith(prefix + ".")}
    if not rows:
        raise KeyError(f"no paper numbers under {prefix!r}")
    return rows


# --------------------------------------------------------------------------- intervals


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``successes / n`` (95% with z = 1.96), as fractions."""
    if n <= 0:
        raise ValueError(f"a proportion needs n > 0, got {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at p = 0 or 1 one bound is exactly 0 or 1 (centre ∓ half, which rounding can leave at 0.99999999999999)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, *,
              n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` over the rows of ``values`` (facts or cases), seeded."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("bootstrap needs at least one value")
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_difference(a: Sequence[float], b: Sequence[float], *, paired: bool, n_boot: int = 1000,
                         confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) − mean(b)`` and its percentile bootstrap interval: ``(difference, low, high)``.

    ``paired``: a and b are measured on the same cases in the same order, and the cases are
    resampled together (the interval of an ordering on shared cases); otherwise each is resampled
    on its own."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired and len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        j = i if paired else rng.integers(0, len(b), len(b))
        diffs.append(a[i].mean() - b[j].mean())
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(a.mean() - b.mean()), float(low), float(high)


# --------------------------------------------------------------------------- claims and verdicts

Verdict = Literal["reproduced", "partly", "not reproduced", "inconclusive"]
VERDICTS: tuple[str, ...] = ("reproduced", "partly", "not reproduced", "inconclusive")

VERDICT_RULE = """\
A claim compares our number, with its 95% interval [lo, hi] over n facts or cases, with the paper's.
Any claim on fewer than 5 facts or cases (MIN_N) is inconclusive, whatever its interval: a
bootstrap over so few undercovers (over one case it is a point).

A value claim (ours should equal the paper's), with tolerance τ (the smallest difference that matters):
  inconclusive    the interval is wider than 4τ: too wide to tell;
  reproduced      the interval holds the paper's value;
  partly          the interval misses the paper's value but lies wholly on the paper's side of the
                  claim's reference (chance, zero, the unedited model): the effect is there, its size is not;
  not reproduced  otherwise.
An ordering claim (ours is a difference A − B; the paper found A − B with its sign):
  reproduced      the interval excludes 0 on the paper's side (the ordering holds, the intervals apart);
  not reproduced  the interval excludes 0 on the other side (reversed), or lies within ±τ of 0
                  (no difference, where the paper found one);
  inconclusive    otherwise.
"""


MIN_N = 5  # fewer facts or cases than this: inconclusive (VERDICT_RULE)


def verdict(kind: str, paper_value: float, low: float, high: float, *, tolerance: float,
            reference: float | None = None, n: int = MIN_N) -> Verdict:
    """The verdict of :data:`VERDICT_RULE` for an interval ``[low, high]`` over ``n`` facts or
    cases against the paper's value."""
    if not low <= high:
        raise ValueError(f"an interval needs low <= high, got [{low}, {high}]")
    if tolerance <= 0:
        raise ValueError(f"the tolerance must be positive, got {tolerance}")
    if kind not in ("value", "ordering"):
        raise ValueError(f"kind must be 'value' or 'ordering', got {kind!r}")
    if n < MIN_N:
        return "inconclusive"
    if kind == "value":
        if high - low > 4 * tolerance:
            return "inconclusive"
        if low <= paper_value <= high:
            return "reproduced"
        if reference is not None and paper_value != reference:
            same_side = low > reference if paper_value > reference else high < reference
            if same_side:
                return "partly"
        return "not reproduced"
    else:  # ordering
        if paper_value == 0:
            raise ValueError("an ordering claim needs the paper's difference to have a sign")
        if (low > 0 and paper_value > 0) or (high < 0 and paper_value < 0):
            return "reproduced"
        if (low > 0 and paper_value < 0) or (high < 0 and paper_value > 0):
            return "not reproduced"
        if -tolerance < low and high < tolerance:
            return "not reproduced"
        return "inconclusive"


def _fmt(x: float) -> str:
    if x == 0 or 0.01 <= abs(x) < 1e4:
        return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
    return f"{x:.2e}"


@dataclass
class Claim:
    """One headline claim of a chapter, with our number, its interval, and a verdict by :data:`VERDICT_RULE`.

    ``paper`` is a :class:`PaperNumber` (or an id of :data:`PAPER`); ``ours`` our value (for an
    ordering claim the difference A − B, and the paper's value its difference, whose sign
    matters); ``ci`` its 95% interval; ``n`` the facts, cases or keys it rests on; ``tolerance``
    the smallest difference that matters (τ); ``reference`` the no-effect value for the
    ``partly`` verdict; ``protocol`` how our computation differs from the paper's (empty when
    like for like).
    """

    chapter: str
    id: str
    statement: str
    model: str
    paper: PaperNumber
    ours: float
    ci: tuple[float, float]
    n: int
    kind: Literal["value", "ordering"] = "value"
    tolerance: float | None = None
    reference: float | None = None
    protocol: str = ""
    verdict: Verdict = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.paper, str):
            self.paper = paper(self.paper)
        if self.n < 1:
            raise ValueError(f"claim {self.id!r}: n must be at least 1, got {self.n}")
        low, high = map(float, self.ci)
        self.ci = (low, high)
        if self.tolerance is None:
            self.tolerance = max(abs(self.paper.value) * 0.1, 1e-6)
        self.verdict = verdict(self.kind, self.paper.value, low, high, tolerance=self.tolerance,
                               reference=self.reference, n=self.n)

    def sentence(self) -> str:
        """The claim in one sentence, with both numbers and the verdict (the prose uses this)."""
        low, high = self.ci
        differs = f"; {self.protocol}" if self.protocol else ""
        return (f"{self.statement}: ours {_fmt(self.ours)} [{_fmt(low)}, {_fmt(high)}] (n = {self.n}), "
                f"the paper {_fmt(self.paper.value)} ({self.paper.source}){differs}: **{self.verdict}**.")

    def to_record(self) -> dict[str, Any]:
        """The record of ``claims.json``: ``{chapter, id, statement, model, paper: {value, source},
        ours: {value, n, ci}, verdict, kind, tolerance, reference, protocol}``."""
        return {"chapter": self.chapter, "id": self.id, "statement": self.statement, "model": self.model,
                "paper": {"value": self.paper.value, "source": self.paper.source},
                "ours": {"value": self.ours, "n": self.n, "ci": list(self.ci)},
                "verdict": self.verdict, "kind": self.kind, "tolerance": self.tolerance,
                "reference": self.reference, "protocol": self.protocol}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Claim:
        """A claim read back from a results file (the verdict is recomputed, and must agree)."""
        source = record["paper"]
        number = PaperNumber(source["value"], source["source"], "", "")
        claim = cls(record["chapter"], record["id"], record["statement"], record["model"], number,
                    record["ours"]["value"], tuple(record["ours"]["ci"]), record["ours"]["n"],
                    record.get("kind", "value"), record.get("tolerance"), record.get("reference"),
                    record.get("protocol", ""))
        if claim.verdict != record["verdict"]:
            raise ValueError(f"claim {record['id']!r}: stored verdict {record['verdict']!r} is not what the "
                             f"rule gives ({claim.verdict!r}); the results file is stale or edited")
        return claim


def claims_frame(claims: Sequence[Claim]):
    """A table of claims (pandas), one row each: chapter, id, statement, paper, ours [interval], n, verdict."""
    import pandas as pd

    rows = [{"chapter": c.chapter, "claim": c.id, "statement": c.statement,
             "paper": f"{_fmt(c.paper.value)}", "source": c.paper.source,
             "ours [95% interval]": f"{_fmt(c.ours)} [{_fmt(c.ci[0])}, {_fmt(c.ci[1])}]", "n": c.n,
             "verdict": c.verdict, "how it differs": c.protocol} for c in claims]
    return pd.DataFrame(rows)


__all__ = ["MIN_N", "PAPER", "VERDICTS", "VERDICT_RULE", "Claim", "PaperNumber", "bootstrap",
           "bootstrap_difference", "claims_frame", "paper", "paper_table", "verdict", "wilson"]
