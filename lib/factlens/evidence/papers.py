"""The papers' numbers, once: each with its source (paper, table or figure, model) and its tolerance τ.

:data:`PAPER` holds every number of the three papers (and their successors) that the book sets
beside ours. Notebooks read them with :func:`paper` (one number) or :func:`paper_table` (a
table's rows); no notebook types one, nor a tolerance.

τ is the smallest difference from the paper's number that matters: a value claim is reproduced
only when its interval lies within the paper's number ± τ, an ordering only when it clears τ
(``factlens.evidence.claims``). Each τ has its reason, one of: half the gap between two rows
the paper tells apart (an interval inside ± τ is nearer its own row than the other), the
spread of rows the paper reads as the same, or a stated fraction or margin where the paper
gives neither. Settings (a layer, a sample size) have no τ: no claim can rest on them.

A direction-only number (the paper shows that A > B, with no size we can set beside ours) has
no value but its ``direction`` text, "A > B"; a claim on it is an ordering whose ours is A − B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PETRONI = "Petroni et al. 2019"
GEVA = "Geva et al. 2021"
MENG = "Meng et al. 2022"
MEMIT = "Meng et al. 2023"
ALPHAEDIT = "Fang et al. 2025"
HASE = "Hase et al. 2023"
GEVA_2023 = "Geva et al. 2023"
YANG = "Yang et al. 2025"
KRAMAR = "Kramár et al. 2024"
THIS_BOOK = "this book"  # a hypothesis of ours, set beside a paper's premise: no paper reports the number


@dataclass(frozen=True)
class PaperNumber:
    """One number of a paper: its value (None when the paper states a direction only), where it
    stands, the model it is about, and its tolerance ``tau`` with ``tau_reason`` (None and "" for
    a setting, which no claim can use)."""

    value: float | None
    paper: str
    where: str
    model: str
    tau: float | None = None
    tau_reason: str = ""
    note: str = ""
    direction: str = ""

    def __post_init__(self) -> None:
        if (self.value is None) == (not self.direction):
            raise ValueError("a paper number has a value or a direction (\"A > B\"), exactly one; got "
                             f"value {self.value!r}, direction {self.direction!r}")
        if self.tau is not None and not self.tau > 0:
            raise ValueError(f"τ must be positive, got {self.tau} ({self.source})")
        if (self.tau is None) != (not self.tau_reason):
            raise ValueError(f"a τ needs its reason and a reason its τ ({self.source})")

    @property
    def source(self) -> str:
        """"Meng et al. 2022, Table 4, GPT-2 XL" (and the note, when there is one)."""
        text = ", ".join(part for part in (self.paper, self.where, self.model) if part)
        return f"{text} ({self.note})" if self.note else text

    @property
    def ours(self) -> bool:
        """True for a hypothesis of this book's (``paper`` is :data:`THIS_BOOK`), not a paper's result."""
        return self.paper.startswith(THIS_BOOK)

    @property
    def sign(self) -> float:
        """The paper's direction: +1 for a direction-only number (A > B) and a positive value,
        -1 for a negative value, 0 for zero."""
        if self.value is None:
            return 1.0
        return float((self.value > 0) - (self.value < 0))


PAPER: dict[str, PaperNumber] = {}

_Tau = float | Callable[[float], float] | None


def _tenth(value: float) -> float:
    return abs(value) / 10


_TENTH = "a tenth of the paper's value: the paper reports one run with no spread"
_POINTS_5 = ("five points of a percent score, a twentieth of the scale (a stated margin: the paper gives no "
            "spread we hold)")


def _register(prefix: str, paper_name: str, where: str, model: str, values: dict[str, float], *,
              tau: _Tau = None, why: str = "", note: str = "") -> None:
    for key, value in values.items():
        tolerance = tau(value) if callable(tau) else tau
        PAPER[f"{prefix}.{key}"] = PaperNumber(value, paper_name, where, model, tolerance, why, note)


def _direction(number_id: str, paper_name: str, where: str, model: str, direction: str, *, tau: float,
               why: str, note: str = "") -> None:
    PAPER[number_id] = PaperNumber(None, paper_name, where, model, tau, why, note, direction)


# --------------------------------------------------------------------------- LAMA (Petroni et al. 2019)

# Table 2: P@1 in percent. Rows: corpora, relation types, Google-RE's relations.
_LAMA = {"tau": _tenth, "why": _TENTH}
_register("lama.p_at_1.BERT-large", PETRONI, "Table 2", "BERT-large", {
    "T-REx 1-1": 74.5, "T-REx N-1": 34.2, "T-REx N-M": 24.3, "T-REx": 32.3,
    "Google-RE place_of_birth": 16.1, "Google-RE date_of_birth": 1.4, "Google-RE place_of_death": 14.0,
    "Google-RE": 10.5, "ConceptNet": 19.2, "SQuAD": 17.4}, **_LAMA)
_register("lama.p_at_1.BERT-base", PETRONI, "Table 2", "BERT-base", {
    "T-REx 1-1": 68.0, "T-REx N-1": 32.4, "T-REx N-M": 24.7, "T-REx": 31.1, "Google-RE": 9.8,
    "ConceptNet": 15.6, "SQuAD": 14.1}, **_LAMA)
_register("lama.p_at_1.fconv", PETRONI, "Table 2", "fairseq-fconv (left context only)", {"T-REx": 8.9}, **_LAMA)
_register("lama.p_at_1.ELMo", PETRONI, "Table 2", "ELMo", {"T-REx": 4.7}, **_LAMA)
_register("lama.p_at_1.ELMo 5.5B", PETRONI, "Table 2", "ELMo 5.5B", {"T-REx": 7.1}, **_LAMA)
_register("lama.p_at_1.Freq", PETRONI, "Table 2", "Freq baseline", {
    "T-REx 1-1": 1.78, "T-REx N-1": 23.85, "T-REx N-M": 21.95, "T-REx": 22.0,
    "Google-RE place_of_birth": 4.6, "Google-RE date_of_birth": 1.9, "Google-RE place_of_death": 6.8,
    "Google-RE": 4.4}, **_LAMA)
_register("lama.p_at_1.RE_o", PETRONI, "Table 2", "RE_o (oracle relation extraction)",
          {"T-REx": 33.8, "Google-RE": 7.6}, **_LAMA)
_register("lama.p_at_1.DrQA", PETRONI, "Table 2", "DrQA", {"SQuAD": 37.5}, **_LAMA)
# Derived from Table 2: Google-RE without date_of_birth (a year is never one token of our models'
# tokenizers), and the table's orderings as differences.
for _model in ("BERT-large", "Freq"):
    _register(f"lama.p_at_1.{_model}", PETRONI, "Table 2", PAPER[f"lama.p_at_1.{_model}.T-REx"].model, {
        "Google-RE 2 relations": (PAPER[f"lama.p_at_1.{_model}.Google-RE place_of_birth"].value
                                  + PAPER[f"lama.p_at_1.{_model}.Google-RE place_of_death"].value) / 2},
              note="mean of place_of_birth and place_of_death; the table's Google-RE mean also has date_of_birth",
              **_LAMA)
_register("lama.p_at_1.BERT-large", PETRONI, "Table 2", "BERT-large", {
    "T-REx 1-1 minus N-M": (PAPER["lama.p_at_1.BERT-large.T-REx 1-1"].value
                            - PAPER["lama.p_at_1.BERT-large.T-REx N-M"].value),
    "T-REx minus Freq": round(PAPER["lama.p_at_1.BERT-large.T-REx"].value - PAPER["lama.p_at_1.Freq.T-REx"].value, 6)},
          note="differences of the table's rows", tau=_tenth,
          why="a tenth of the paper's difference: the least ordering that matters (one run, no spread)")
# Transformer-XL's column: the like-for-like row for a left-to-right model like ours. Its T-REx 1-1, N-1 and N-M
# rows are not registered (we hold no checked copy of them). τ: half the gap to BERT-large's row, the row the
# paper tells it apart from (an interval within ± τ is nearer Transformer-XL's row than BERT-large's); a tenth
# of a value near 0 (SQuAD's 1.2) would ask for an interval no sample of LAMA can give.
_TXL = {"T-REx": 18.3, "Google-RE place_of_birth": 2.9, "Google-RE date_of_birth": 0.2,
        "Google-RE place_of_death": 1.9, "Google-RE": 1.7, "ConceptNet": 5.7, "SQuAD": 1.2}
_TXL["Google-RE 2 relations"] = (_TXL["Google-RE place_of_birth"] + _TXL["Google-RE place_of_death"]) / 2
for _row, _value in _TXL.items():
    _register("lama.p_at_1.Transformer-XL", PETRONI, "Table 2", "Transformer-XL (left context only)",
              {_row: _value}, tau=round(abs(PAPER[f"lama.p_at_1.BERT-large.{_row}"].value - _value) / 2, 6),
              why="half the gap between Transformer-XL's row and BERT-large's, the rows the paper tells apart: an "
                  "interval within ± τ is nearer the left-to-right model's row than the masked model's",
              note="mean of place_of_birth and place_of_death; the table's Google-RE mean also has date_of_birth"
              if _row == "Google-RE 2 relations" else "")
_register("lama.p_at_1.Transformer-XL", PETRONI, "Table 2", "Transformer-XL (left context only)", {
    "T-REx minus Freq": round(PAPER["lama.p_at_1.Transformer-XL.T-REx"].value
                              - PAPER["lama.p_at_1.Freq.T-REx"].value, 6)},
          note="Transformer-XL's T-REx row minus Freq's: the left-to-right model falls below the baseline",
          tau=_tenth, why="a tenth of the paper's difference: the least ordering that matters (one run, no spread)")
# Section 4's correlation analysis (BERT-large): P@1 rises with the model's confidence in its prediction and
# with how often the object is mentioned in the training data. The figure gives correlations, not P@1 gaps we
# can set beside ours: direction-only numbers (its figure number not checked here).
_POINTS_P1 = "five points of P@1, a twentieth of the scale (a stated margin: the paper gives a correlation only)"
_direction("lama.confidence_high_minus_low", PETRONI, "Section 4, the correlation analysis", "BERT-large",
           "more confident predictions > less confident ones (P@1)", tau=5.0, why=_POINTS_P1,
           note="P@1 correlates with the log-probability of the prediction")
_direction("lama.frequency_high_minus_low", PETRONI, "Section 4, the correlation analysis", "BERT-large",
           "objects mentioned more often > less often (P@1)", tau=5.0, why=_POINTS_P1,
           note="P@1 correlates with how often the object is mentioned in the training data")
# --------------------------------------------------------------------------- Geva et al. 2021

# A 16-layer transformer LM on WikiText-103, 4,096 memories per layer.
_GEVA_LM = "16-layer LM (WikiText-103)"
_STAND_IN = "the least difference we read on our automatic stand-in for the paper's annotators, who give no scale"
_register("memories", GEVA, "Section 3.2", _GEVA_LM, {"patterns_per_key": 3.6},
          note="human-annotated patterns among a key's top-25 triggers", tau=_tenth, why=_TENTH)
_register("memories", GEVA, "Figure 4", _GEVA_LM, {"value_agreement_upper": 0.035, "value_agreement_lower": 0.0},
          note="value's top token = next token of the key's top trigger, per layer: about 0 in layers 1-10, rising "
               "through layers 11-16 to about 3.5% in the top layers; 3.5% is the rate the curve reaches, not a "
               "mean over layers 11-16",
          tau=0.0175, why="half the gap Figure 4 draws between the upper layers' 3.5% and the lower layers' 0%: an "
                          "interval within ± τ is nearer its own row than the other")
_register("memories", GEVA, "Figure 4", _GEVA_LM, {
    "value_agreement_upper_minus_lower": PAPER["memories.value_agreement_upper"].value
    - PAPER["memories.value_agreement_lower"].value},
          note="the rate the top layers reach minus the lower layers' (1-10)",
          tau=0.005, why="half a point of agreement, a seventh of the paper's 3.5-point difference (a stated fraction)")
_register("memories", GEVA, "Table 2", _GEVA_LM, {"max_precision_at_50": 0.92}, tau=_tenth, why=_TENTH)
_register("memories", GEVA, "Section 5.1", _GEVA_LM, {
    "active_fraction_low": 0.10, "active_fraction_high": 0.50},
          note="a typical example activates 10%-50% of a layer's memories (ReLU: m_i > 0)", tau=_tenth, why=_TENTH)
_register("memories", GEVA, "Section 5.1", _GEVA_LM, {"composition_min": 0.68},
          note="in at least 68% of the examples, in every layer, the layer's top prediction differs from every "
               "memory's top prediction: 68% is the smallest share over the layers (a minimum over layers)",
          tau=_tenth, why=_TENTH)
_register("memories", GEVA, "Section 5.2", _GEVA_LM, {"early_final_fraction": 1 / 3},
          note="the final prediction is already the residual's top token in the first layers", tau=_tenth,
          why="a tenth of the paper's value: it says 'about a third', with no spread")
_register("memories", GEVA, "Section 5.1", _GEVA_LM, {"active_layers_in_band": 1.0},
          note="a typical example activates 10%-50% of a layer's memories, in every layer: the share of layers "
               "in the band is 1 for a typical example", tau=0.1,
          why="a tenth of the layers: one layer in ten outside the band (a stated fraction)")
_register("memories", GEVA, "Section 3.2", _GEVA_LM, {"keys_with_pattern": 1.0},
          note="share of sampled keys (10 per layer) whose top-25 triggers share at least one pattern the "
               "annotators named: every key had one", tau=_tenth, why=_TENTH)
_direction("memories.shallow_lower_minus_upper", GEVA, "Section 3.2, Figure 2", _GEVA_LM,
           "lower layers > upper layers (shallow patterns)", tau=0.01,
           why=f"one point of the share of trigger pairs ending in the same token: {_STAND_IN}",
           note="shallow patterns (a shared last word, an n-gram) fill layers 1-9, semantic ones grow in 10-16")
_direction("memories.semantic_upper_minus_lower", GEVA, "Section 3.2, Figure 2", _GEVA_LM,
           "upper layers > lower layers (semantic patterns)", tau=0.01,
           why=f"0.01 of mean cosine similarity: {_STAND_IN}",
           note="semantic patterns grow in the upper layers (10-16), shallow ones fill layers 1-9")
_REMOVAL = "five points of the relative drop of the coefficient (a stated margin: the paper gives no spread)"
_direction("memories.removal_last_minus_first", GEVA, "Section 3.2, Figure 3", _GEVA_LM,
           "removing the last token > removing the first (drop of the key's coefficient)", tau=0.05, why=_REMOVAL,
           note="the relative change of a key's coefficient when a token is removed from its top triggers")
_direction("memories.removal_last_lower_minus_upper", GEVA, "Section 3.2, Figure 3", _GEVA_LM,
           "lower layers > upper layers (drop of the coefficient when the last token is removed)", tau=0.05,
           why=_REMOVAL, note="upper-layer keys depend less on the last token, more on the whole prefix")
_direction("memories.veto", GEVA, "Section 5.2", _GEVA_LM,
           "another token > the FF's own top token (the residual's new top, where the FF changes it)", tau=0.05,
           why="five points of the share of changed predictions (a stated margin: the paper gives no spread)",
           note="the FF rarely imposes its own top prediction: where it changes the residual's top, mostly by "
                "vetoing the leader for another candidate")

# --------------------------------------------------------------------------- causal tracing (Meng et al. 2022)

# GPT-2 XL (48 layers), 1,000 known facts.
_GPT2_XL = "GPT-2 XL (48 layers)"
_HALF_WINDOW = ("half the window the paper restores together (10 of 48 layers): the traces place a site no finer "
                "than that")
_register("tracing", MENG, "Section 2.2", _GPT2_XL, {"ate": 0.186}, tau=0.03,
          why="about a sixth of the paper's 18.6% (a stated fraction: the ATE moves with the noise level ν)")
_register("tracing", MENG, "Figure 2", _GPT2_XL, {"n_layers": 48, "window": 10})
_register("tracing", MENG, "Figure 2", _GPT2_XL, {
    "hidden_last_subject_aie": 0.087, "mlp_last_subject_aie": 0.066, "attn_last_subject_aie": 0.016}, tau=0.025,
          why="half the gap Figure 2 draws between the MLPs' 6.6% and attention's 1.6% at the last subject token "
              "(the paper reads the first as decisive, the second not)")
_register("tracing", MENG, "Figure 2", _GPT2_XL, {
    "mlp_minus_attn_last_subject_aie": round(PAPER["tracing.mlp_last_subject_aie"].value
                                             - PAPER["tracing.attn_last_subject_aie"].value, 6)}, tau=0.025,
          why="half the gap Figure 2 draws between the MLPs' 6.6% and attention's 1.6% at the last subject token "
              "(the paper reads the first as decisive, the second not)",
          note="the MLPs' AIE minus attention's at the last subject token")
_register("tracing", MENG, "Figure 2", _GPT2_XL, {"hidden_last_subject_layer": 15}, tau=5.0, why=_HALF_WINDOW)
_register("tracing", MENG, "Figure 2", _GPT2_XL, {"hidden_last_subject_depth": 15 / 47},
          note="the early site, layer 15 of 48, as the relative depth l / (L - 1)", tau=5 / 47, why=_HALF_WINDOW)
_SMALL_AIE = "half a point of AIE, a third of the smallest AIE Figure 2 reports (attention's 1.6%; a stated fraction)"
_direction("tracing.hidden_lower_minus_upper", MENG, "Figure 2", _GPT2_XL,
           "lower half > upper half (hidden states' AIE at the last subject token)", tau=0.005, why=_SMALL_AIE,
           note="the early site lies at layer 15 of 48; in the upper layers the last subject token's state matters "
                "less, the last token's more")
_direction("tracing.mlp_middle_minus_outer", MENG, "Figure 2", _GPT2_XL,
           "middle third > first and last thirds (MLPs' AIE at the last subject token)", tau=0.005, why=_SMALL_AIE,
           note="the decisive MLPs lie in the middle layers; the paper draws the curve but states no peak layer "
                "(ROME's edit layer, 17 of 48, is a hyperparameter, not a measured peak)")
_direction("tracing.severed_mlp_drop", MENG, "Figure 7", _GPT2_XL,
           "attention severed > MLPs severed (AIE at the last subject token, lower layers)", tau=0.005, why=_SMALL_AIE,
           note="MLPs severed: the middle layers' effect at the last subject token collapses")
_direction("tracing.attn_late_site", MENG, "Figure 2", _GPT2_XL,
           "upper half > lower half (attention's AIE at the last token)", tau=0.005, why=_SMALL_AIE)

# --------------------------------------------------------------------------- ROME (Meng et al. 2022)

# Table 4: CounterFact, GPT-2 XL, percent (GE: entropy × 100). Table 1: zsRE, GPT-2 XL, token accuracy in
# percent (ROME's protocol: edit toward the true answer, answers[0]). Table 4's GE of FT and FT+L and its EM and
# PM of the unedited model are not registered: we hold no checked copy of them.
_GE = {"tau": _tenth, "why": _TENTH}
_ZSRE_SPECIFICITY = ("the spread of rows the paper reads as the same: Table 1's specificity rows (FT 23.2, FT+L 23.4, "
                     "ROME and the unedited model 24.2) lie within a point, and the paper reads all as specificity "
                     "kept")
_COUNTERFACT = {
    "unedited": {"S": 30.5, "ES": 22.2, "PS": 24.7, "NS": 78.1, "NM": 5.0, "GE": 626.6},
    "FT": {"S": 65.1, "ES": 100.0, "PS": 87.9, "NS": 40.4},
    "FT+L": {"S": 66.9, "ES": 99.1, "PS": 48.7, "NS": 70.3},
    "KN": {"S": 35.6, "ES": 28.7, "PS": 28.0, "NS": 72.9, "GE": 570.4},
    "ROME": {"S": 89.2, "ES": 100.0, "PS": 96.4, "NS": 75.4, "EM": 97.9, "PM": 62.7, "NM": 4.2, "GE": 621.9,
             "RS": 41.9},
}
_ZSRE = {
    "unedited": {"efficacy": 22.2, "paraphrase": 21.3, "specificity": 24.2},
    "FT": {"efficacy": 99.6, "paraphrase": 82.1, "specificity": 23.2},
    "FT+L": {"efficacy": 92.3, "paraphrase": 47.2, "specificity": 23.4},
    "ROME": {"efficacy": 99.8, "paraphrase": 88.1, "specificity": 24.2},
}
for _method, _values in _COUNTERFACT.items():
    _register(f"rome.counterfact.{_method}", MENG, "Table 4", "GPT-2 XL",
              {k: v for k, v in _values.items() if k != "GE"}, tau=5.0, why=_POINTS_5)
    _register(f"rome.counterfact.{_method}", MENG, "Table 4", "GPT-2 XL",
              {k: v for k, v in _values.items() if k == "GE"}, **_GE)
for _method, _values in _ZSRE.items():
    _register(f"rome.zsre.{_method}", MENG, "Table 1", "GPT-2 XL",
              {k: v for k, v in _values.items() if k != "specificity"}, tau=5.0, why=_POINTS_5)
    _register(f"rome.zsre.{_method}", MENG, "Table 1", "GPT-2 XL", {"specificity": _values["specificity"]},
              tau=1.0, why=_ZSRE_SPECIFICITY)
# Every difference of two methods' rows (rome.<benchmark>.<A>-<B>.<metric>, points) and GE's relative change
# (rome.counterfact.<A>/<B>.GE, percent): what the chapters' ordering and change claims set beside ours.
for _benchmark, _table, _where in (("counterfact", _COUNTERFACT, "Table 4"), ("zsre", _ZSRE, "Table 1")):
    for _a, _rows_a in _table.items():
        for _b, _rows_b in _table.items():
            if _a == _b:
                continue
            for _metric in sorted(set(_rows_a) & set(_rows_b)):
                _pa, _pb = _rows_a[_metric], _rows_b[_metric]
                if _metric == "GE":
                    _register(f"rome.{_benchmark}.{_a}/{_b}", MENG, _where, "GPT-2 XL",
                              {_metric: round(100 * (_pa / _pb - 1), 6)}, tau=2.0,
                              why="two percent of the entropy, above ROME's 0.75% drop from the unedited model that "
                                  "the paper reads as fluency kept (a stated margin)",
                              note=f"{_metric} of {_a} relative to {_b}, percent")
                    continue
                specificity = _benchmark == "zsre" and _metric == "specificity"
                _register(f"rome.{_benchmark}.{_a}-{_b}", MENG, _where, "GPT-2 XL", {_metric: round(_pa - _pb, 6)},
                          tau=1.0 if specificity else 5.0, why=_ZSRE_SPECIFICITY if specificity else _POINTS_5,
                          note=f"{_metric} of {_a} minus {_b}")
_register("rome", MENG, "Section 3.1 and hparams/ROME/gpt2-xl.json", "GPT-2 XL", {
    "layer": 17, "n_layers": 48, "mom2_samples": 100_000})
_PS_10 = "ten points of PS, a tenth of the scale (a stated margin: the figure gives no spread)"
_direction("rome.ps_middle_minus_edges", MENG, "Figure 5", _GPT2_XL,
           "middle layers > first and last layers (paraphrase score PS of edits at the last subject token)",
           tau=10.0, why=_PS_10, note="edits generalize best in the middle layers, where causal tracing peaks")
_direction("rome.ps_at_causal_peak", MENG, "Figure 5", _GPT2_XL,
           "the layer where the MLPs' causal effect peaks > any other layer (PS of edits at the last subject token)",
           tau=10.0, why=_PS_10, note="editing works best where causal tracing peaks")
_direction("rome.nm_C_minus_identity", THIS_BOOK, f"our hypothesis from {MENG}, Section 3.1, eq. 2", "",
           "C estimated > C = I (neighbours' margin NM)", tau=5.0,
           why="five points of NM, as for Table 4's scores (a stated margin)",
           note="ours, not the paper's result: C spreads the update away from the keys text uses, so other "
                "subjects' facts should move less than with C = I; the paper reports no C = I ablation")

# --------------------------------------------------------------------------- many edits

# MEMIT (Meng et al. 2023), Table 2: 10,000 CounterFact edits written into GPT-J in one batch.
_register("many_edits.memit.GPT-J", MEMIT, "Table 2", "GPT-J (10,000 edits in one batch)", {"ES": 98.9},
          tau=5.0, why=_POINTS_5)
# AlphaEdit (Fang et al. 2025), Table 1: 2,000 CounterFact edits applied sequentially in batches of 100
# (ROME one at a time, with its code's update), Eff./Gen./Spe. in percent, Flu. the generation entropy x100.
for _model, _rows in {
    "GPT2-XL": {"Pre-edited": (22.23, 24.34, 78.53, 626.64), "ROME": (54.60, 51.18, 52.68, 366.13),
                "MEMIT": (94.70, 85.82, 60.50, 477.26), "AlphaEdit": (99.50, 93.95, 66.39, 597.88)},
    "GPT-J": {"Pre-edited": (16.22, 18.56, 83.11, 621.81), "ROME": (57.50, 54.20, 52.05, 589.42),
              "MEMIT": (98.55, 95.50, 63.64, 546.28), "AlphaEdit": (99.75, 96.38, 75.48, 618.50)},
}.items():
    _setting = f"{_model} (2,000 sequential edits, batches of 100)"
    for _method, _values in _rows.items():
        _prefix = f"many_edits.sequential.{_model}.{_method}"
        _register(_prefix, ALPHAEDIT, "Table 1", _setting, dict(zip(("Eff", "Gen", "Spe"), _values)),
                  tau=5.0, why=_POINTS_5)
        _register(_prefix, ALPHAEDIT, "Table 1", _setting, {"Flu": _values[3]}, **_GE)
    for _method in ("MEMIT", "AlphaEdit"):
        _register(f"many_edits.sequential.{_model}.{_method}-ROME", ALPHAEDIT, "Table 1", _setting,
                  {"Eff": round(_rows[_method][0] - _rows["ROME"][0], 2)}, tau=5.0, why=_POINTS_5,
                  note=f"{_method}'s efficacy minus ROME's")

# --------------------------------------------------------------------------- What came after

# Hase et al. 2023 (NeurIPS), "Does Localization Inform Editing?": GPT-J (28 layers), 652 CounterFact facts GPT-J
# completes correctly, ROME at layers {1, 5, 9, 13, 17, 21, 25, 28} and 6 (ROME's); MLP traces with a window of 5,
# the tracing effect the largest over the prompt's tokens, as a fraction of the total effect (§4.1-4.2).
_HASE_MODEL = "GPT-J (28 layers), 652 CounterFact facts it completes, ROME (Error Injection)"
_register("after.localization", HASE, "§4.1-4.2", "GPT-J (28 layers)", {"window": 5, "n_layers": 28, "rome_layer": 6})
_R2_SMALL = ("the most that adding the tracing effect raises R² in any of the paper's editing problems and methods "
             "(Figure 6: at most 0.03), which the paper reads as a very small effect")
_register("after.localization", HASE, "Table 1", _HASE_MODEL,
          {"r2_layer": 0.947, "r2_tracing": 0.016, "r2_both": 0.948}, tau=0.03, why=_R2_SMALL,
          note="linear regressions of the rewrite score on the edit layer (categorical), on the tracing effect, and on "
               "both interacted")
_register("after.localization", HASE, "Table 1 and §4.3", _HASE_MODEL, {"r2_added": 0.001}, tau=0.03, why=_R2_SMALL,
          note="R² of layer and tracing effect together minus R² of the layer alone: 'the tracing effect is able to "
               "explain only 0.1% of the variance in edit success when accounting for the choice of edit layer'")
_register("after.localization", HASE, "Table 1", _HASE_MODEL, {"r2_layer_minus_tracing": round(0.947 - 0.016, 6)},
          tau=0.03, why=_R2_SMALL, note="R² of the layer alone minus R² of the tracing effect alone")
_register("after.localization", HASE, "Figure 4 and §4.3", _HASE_MODEL, {"correlation_rome_layer": -0.13}, tau=0.13,
          why="the distance from the paper's -0.13 to 0, the value it contrasts it with ('not a positive "
              "relationship'): an interval within ± τ is neither positive nor twice as negative",
          note="Pearson correlation over facts of the rewrite score and the tracing effect at ROME's layer (GPT-J's "
               "6); 'in most layers we simply see a near-zero rather than negative correlation'")
_direction("after.localization.fixed_minus_traced", HASE, "§1 and Figure 1", _HASE_MODEL,
           "ROME's fixed layer > each fact's most traced layer (rewrite score)", tau=0.05,
           why="five points of rewrite score, a twentieth of its scale (a stated margin: the paper gives no spread)",
           note="'it is still better to ignore the tracing results and always choose an early-to-mid-layer MLP weight "
                "for editing'; many facts are traced outside the layers ROME and MEMIT edit successfully")

# Yang et al. 2025 (ACL), "The Mirage of Model Editing", Table 3: single edits of CounterFact's test set (10,000
# records), EasyEdit's synthetic evaluation (teacher forcing, output cut at the target's length, token match ratio)
# against WILD (context-guided input, greedy decoding to a stop token, an LLM judge); reliability is the edited prompt,
# generalization its paraphrases. FT-M is fine-tuning with the loss on the target's tokens alone. Rows per method:
# (Llama-2-7b-chat, Mistral-7b, Llama-3-8b) x (reliability synthetic, WILD, generalization synthetic, WILD).
_MIRAGE_COUNTERFACT = {
    "ROME": ((0.996, 0.836, 0.452, 0.420), (0.965, 0.866, 0.466, 0.488), (0.999, 0.877, 0.422, 0.491)),
    "MEMIT": ((0.997, 0.797, 0.513, 0.460), (0.962, 0.887, 0.539, 0.583), (0.998, 0.882, 0.516, 0.557)),
    "FT-M": ((1.000, 0.867, 0.503, 0.426), (1.000, 0.733, 0.330, 0.220), (1.000, 0.916, 0.588, 0.613)),
}
_MIRAGE_SETTING = "Llama-2-7b-chat, Mistral-7b, Llama-3-8b (mean), single edits of CounterFact"
_MIRAGE_SPREAD = ("half the range of the three LLMs' values, which the paper reads as one finding (a stated spread: "
                  "one run per model)")
for _method, _rows in _MIRAGE_COUNTERFACT.items():
    for _name, _values in {
        "reliability_gap": [100 * (r[0] - r[1]) for r in _rows],
        "reliability_wild": [100 * r[1] for r in _rows],
        "generalization_gap": [100 * (r[2] - r[3]) for r in _rows],
    }.items():
        _register(f"after.wild.{_method}", YANG, "Table 3", _MIRAGE_SETTING,
                  {_name: round(sum(_values) / 3, 6)}, tau=round((max(_values) - min(_values)) / 2, 6),
                  why=_MIRAGE_SPREAD,
                  note={"reliability_gap": "percent: synthetic (teacher-forced) reliability minus WILD reliability",
                        "reliability_wild": "percent of edits the edited model answers under WILD",
                        "generalization_gap": "percent: synthetic minus WILD on the paraphrases"}[_name])

# Kramár et al. 2024, "AtP*" (arXiv:2403.00745): attribution patching (AtP) is a first-order estimate of activation
# patching; where a patch moves an attention softmax out of saturation (or effects cancel), AtP underestimates it:
# false negatives, the failure modes AtP* corrects. A direction only: the paper measures it on Pythia models, with
# other patching metrics.
_direction("after.attribution.shortfall_at_peak", KRAMAR, "its failure modes of AtP", "Pythia models",
           "the real effect > the first-order estimate (at the trace's strongest site)", tau=0.005,
           why="half a point of AIE, a third of the smallest AIE Figure 2 of Meng et al. 2022 reports (a stated "
               "fraction)",
           note="AtP's false negatives from attention saturation: the estimate is too small where the true effect is "
                "large")
_direction("after.attribution.rank_agreement", THIS_BOOK, "our reading of attribution patching as a fast trace", "",
           "Spearman's ρ of the estimated and real trace > 0.5", tau=0.1,
           why="a tenth of the correlation's scale (a stated margin)",
           note="ours, not a paper's number: a mean rank correlation above 0.5 means the estimate orders the sites "
                "mostly as the trace does, so it can show where to look before the trace is done")

# Geva et al. 2023 (EMNLP), "Dissecting Recall of Factual Associations": GPT-2 XL and GPT-J, known facts they predict.
# Attention knockout (its Figure 2, window 9 of GPT-2 XL's 48 layers): the information from the relation (non-subject)
# positions reaches the last position first, then the subject's, in the upper layers; the attribute is extracted
# at the last position mostly by attention (MHSA) sublayers, not MLP ones. Numbers not registered (not checked here):
# directions only, as the abstract and §4-6 state them.
_GEVA_2023_MODEL = "GPT-2 XL and GPT-J, known facts"
_KNOCKOUT = "five points of the relative change of the answer's probability (a stated margin: no spread we hold)"
_direction("after.knockout.subject_upper_minus_lower", GEVA_2023, "Figure 2 and §4", _GEVA_2023_MODEL,
           "upper half > lower half (drop of the answer when the last position cannot attend to the subject)",
           tau=0.05, why=_KNOCKOUT,
           note="the subject's information reaches the last position at the second critical point, in the upper layers")
_direction("after.knockout.subject_after_relation", GEVA_2023, "Abstract and §4", _GEVA_2023_MODEL,
           "subject positions > non-subject positions (relative depth of the layers whose knockout drops the answer)",
           tau=0.05, why="a twentieth of the model's depth (a stated margin)",
           note="'two critical points where information propagates to the prediction: one from the relation positions "
                "followed by another from the subject positions'")
_direction("after.extraction.attn_minus_mlp", GEVA_2023, "Abstract and §6", _GEVA_2023_MODEL,
           "attention sublayers > MLP sublayers (facts with an extraction event at the last position)", tau=0.05,
           why="five points of a share of facts (a stated margin: no spread we hold)",
           note="'this extraction is typically done via attention heads'")


def paper(number_id: str) -> PaperNumber:
    """The paper's number with this id (``"rome.counterfact.ROME.S"``), or a KeyError naming near ids."""
    try:
        return PAPER[number_id]
    except KeyError:
        stem = number_id.rsplit(".", 1)[0]
        near = [k for k in PAPER if k.startswith(stem)] or sorted({k.split(".")[0] for k in PAPER})
        raise KeyError(f"no paper number {number_id!r}; near: {', '.join(near[:12])}") from None


def paper_table(prefix: str) -> dict[str, float]:
    """``{row: value}`` of every number with a value whose id is ``prefix.<row>`` (``"lama.p_at_1.BERT-large"``);
    direction-only numbers have no value and are left out."""
    rows = {k[len(prefix) + 1:]: n.value for k, n in PAPER.items()
            if k.startswith(prefix + ".") and n.value is not None}
    if not rows:
        raise KeyError(f"no paper numbers under {prefix!r}")
    return rows
