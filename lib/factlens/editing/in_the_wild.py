"""Edits judged outside teacher forcing (Yang et al. 2025, "The Mirage of Model Editing: Revisiting Evaluation
in the Wild", ACL).

The editing papers score an edit by *teacher forcing*: the target's tokens are fed to the model and each is
checked against the model's prediction at its position (EasyEdit's reliability, a token match ratio; ROME's
zsRE token accuracy, ``evaluation.target_token_accuracy``), or two teacher-forced probabilities are compared
(CounterFact's ES, ``evaluation.counterfact_scores``). Yang et al. (§4, Table 2) let the edited model answer
instead: it decodes on its own, without the target in its input or its length as a limit, and the answer is
judged against the target (their WILD: a context-guided prompt, greedy decoding to a stop token, an LLM judge
or exact match). The model's own errors then propagate, and the teacher-forced numbers overstate the edits
(their Table 3: on CounterFact, ROME's reliability falls from 96-100% to 84-88%).

Here the edited model continues the CounterFact prompt (and its paraphrase) greedily, with no instruction
before it, and an edit succeeds in generation by one stated rule (:func:`answer_matches`): the continuation,
its leading white space stripped, starts with the new object, case and runs of white space aside, and the
object ends there at a word boundary (" Rome, the capital" succeeds for "Rome"; " Romeo" and " the city of
Rome" do not). :func:`wild_scores` puts it beside the teacher-forced token accuracy (the synthetic number of
Yang et al.) and ES on the same prompts; :func:`evaluate_in_the_wild` runs an editor over cases, one request
per edit, undone before the next.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
import pandas as pd

from factlens.core.models import Model, view
from factlens.data import CounterFactCase
from factlens.editing.evaluation import score_edits, target_log_probs, target_token_accuracy
from factlens.editing.generation import generate
from factlens.editing.requests import Editor, EditRequest
from factlens.evidence import papers, stats

#: The prompt kinds scored: the edited prompt (reliability) and its paraphrases (generalization).
KINDS: tuple[str, ...] = ("rewrite", "paraphrase")
#: Per kind: teacher-forced token accuracy (Yang et al.'s synthetic number), ES / PS (the book's), success in
#: generation (:func:`answer_matches`).
MEASURES: tuple[str, ...] = ("teacher_forced", "probability", "generated")
_SPACE = re.compile(r"\s+")


def _normal(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def answer_matches(continuation: str, target: str) -> bool:
    """Whether a generated ``continuation`` answers with ``target``: both NFKC-normalized, case-folded, runs of
    white space made one space and the leading one stripped, the continuation starts with the target and the
    target ends at a word boundary there (the end of the text, or a character that is not a letter or digit)."""
    text, wanted = _normal(continuation), _normal(target)
    if not wanted:
        raise ValueError("the target is empty: there is no answer to look for")
    return text.startswith(wanted) and (len(text) == len(wanted) or not text[len(wanted)].isalnum())


@dataclass(frozen=True)
class WildSettings:
    """How an edited model's own answers are read (Yang et al. 2025), declared as a value.

    Attributes:
        extra_tokens: greedy tokens generated beyond the target's own length, so that a word boundary
            after it (or a longer word) is seen; the paper decodes to a stop token instead.
        paraphrases: the paraphrase prompts read per case (the first ones; the reduced CounterFact has one).
    """

    _: KW_ONLY
    extra_tokens: int = 3
    paraphrases: int = 1

    def __post_init__(self) -> None:
        if self.extra_tokens < 1:
            raise ValueError(f"extra_tokens must be at least 1 (to see the word end), got {self.extra_tokens}")
        if self.paraphrases < 0:
            raise ValueError(f"paraphrases must be 0 or more, got {self.paraphrases}")


def wild_scores(model: Model, case: CounterFactCase, settings: WildSettings = WildSettings()) -> dict[str, Any]:
    """One case on ``model`` as it is now (edited or not), per kind of :data:`KINDS` (the paraphrases averaged):
    ``teacher_forced_<kind>`` (the fraction of the new object's tokens that are the model's top prediction given
    the prompt and the object's previous tokens), ``probability_<kind>`` (1 when the new object is more probable
    than the true one: ES, PS), ``generated_<kind>`` (1 when the greedy continuation answers with the new object,
    :func:`answer_matches`) and ``text_<kind>`` (the first prompt's continuation)."""
    prompts = {"rewrite": [case.filled_prompt], "paraphrase": list(case.paraphrase_prompts[:settings.paraphrases])}
    n_new = len(view(model).target_ids(case.target_new))
    out: dict[str, Any] = {}
    for kind, texts in prompts.items():
        if not texts:
            out.update({f"{m}_{kind}": math.nan for m in MEASURES} | {f"text_{kind}": ""})
            continue
        accuracy = target_token_accuracy(model, texts, [case.target_new] * len(texts))
        logp = target_log_probs(model, [p for p in texts for _ in (0, 1)],
                                [case.target_new, case.target_true] * len(texts)).view(-1, 2)
        continuations = generate(model, texts, n_new + settings.extra_tokens)
        out[f"teacher_forced_{kind}"] = float(accuracy.mean())
        out[f"probability_{kind}"] = float((logp[:, 0] > logp[:, 1]).float().mean())
        out[f"generated_{kind}"] = float(np.mean([answer_matches(c, case.target_new) for c in continuations]))
        out[f"text_{kind}"] = continuations[0]
    return out


def evaluate_in_the_wild(model: Model, cases: Sequence[CounterFactCase], editor: Editor | None = None,
                         settings: WildSettings = WildSettings(), *, progress: bool = True) -> pd.DataFrame:
    """Write each case's requested rewrite with ``editor`` (``None``: the unedited model), score it
    (:func:`wild_scores`), undo it: one row per case (``case_id``, the scores, ``edit_seconds``)."""
    items = ((case.case_id, EditRequest.from_counterfact(case), lambda case=case: wild_scores(model, case, settings))
             for case in cases)
    name = editor.name if editor is not None else "unedited"
    return score_edits(model, items, editor, len(cases), f"in the wild, {name}", progress)


# --------------------------------------------------------------------------- summaries and claims


def summarize_wild(frame: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each measure's mean over cases in percent with its 95% interval, ``{"<measure>_<kind>": {"mean", "low",
    "high"}}``: Wilson's for a 0/1 measure (one prompt per case), the bootstrap over cases otherwise."""
    if frame.empty:
        raise ValueError("no cases to summarize")
    out = {}
    for column in (f"{m}_{k}" for k in KINDS for m in MEASURES):
        x = frame[column].dropna().to_numpy(dtype=float) if column in frame else np.array([])
        if not len(x):
            continue
        if np.isin(x, (0.0, 1.0)).all():
            low, high = stats.wilson(float(x.sum()), len(x))
        else:
            low, high = stats.bootstrap(x, n_boot=n_boot, seed=seed)
        out[column] = {"mean": 100 * float(x.mean()), "low": 100 * low, "high": 100 * high}
    return out


def gap(frame: pd.DataFrame, kind: str = "rewrite") -> tuple[float, float, float]:
    """Teacher-forced token accuracy minus success in generation on ``kind``'s prompts, in points, and its 95%
    interval over cases, paired: ``(difference, low, high)``.

    Newcombe's paired interval (``factlens.evidence.stats.newcombe``; a target's token accuracy, a share when it
    has several tokens, enters as the closest pairing with the 0/1 success, which keeps the interval
    conservative). Not a bootstrap:
    when the two columns agree on every case a paired bootstrap is the point [0, 0], and when two cases of a
    hundred disagree its lower bound is 0, both narrower than the cases warrant."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rows = frame[[f"teacher_forced_{kind}", f"generated_{kind}"]].dropna().to_numpy(dtype=float)
    diff, low, high = stats.newcombe(rows[:, 0], rows[:, 1], paired=True)
    return 100 * diff, 100 * low, 100 * high


#: Our methods' rows of the paper's Table 3 (FT, its loss on the target's tokens, stands beside FT-M).
PAPER_ROWS: dict[str, str] = {"ROME": "ROME", "MEMIT": "MEMIT", "FT": "FT-M"}


def claim_gap(frames: Mapping[str, pd.DataFrame], method: str, kind: str = "rewrite", *,
              paper_row: str | None = None) -> dict[str, Any]:
    """The evidence of a claim about ``method``'s teacher-forced minus generated success on ``kind``'s prompts: the
    keyword arguments ``paper``, ``ours``, ``ci`` and ``n`` of ``factlens.evidence.results.Run.claim``, beside
    the paper's mean over its three LLMs (``after.wild.<row>.reliability_gap`` / ``generalization_gap``)."""
    row = paper_row or PAPER_ROWS.get(method, method)
    measure = "reliability_gap" if kind == "rewrite" else "generalization_gap"
    diff, low, high = gap(frames[method], kind)
    return {"paper": papers.paper(f"after.wild.{row}.{measure}"), "ours": diff, "ci": (low, high),
            "n": int(frames[method][[f"teacher_forced_{kind}", f"generated_{kind}"]].dropna().shape[0])}


def gap_table(frames: Mapping[str, pd.DataFrame], *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per method and kind: teacher-forced accuracy, ES/PS and generation success (mean [95% interval], percent),
    the gap, and the paper's synthetic and WILD numbers on CounterFact (mean of its three LLMs) where it has the
    method."""
    rows = []
    for method, frame in frames.items():
        summary = summarize_wild(frame, n_boot=n_boot, seed=seed)
        for kind in KINDS:
            if f"generated_{kind}" not in summary:
                continue
            row = {"method": method, "prompts": kind}
            for measure, label in zip(MEASURES, ("teacher forced", "ES / PS", "generated")):
                s = summary[f"{measure}_{kind}"]
                row[label] = f"{s['mean']:.0f} [{s['low']:.0f}, {s['high']:.0f}]"
            d, low, high = gap(frame, kind)
            row["gap (points)"] = f"{d:+.0f} [{low:+.0f}, {high:+.0f}]"
            name = PAPER_ROWS.get(method)
            measure = "reliability_gap" if kind == "rewrite" else "generalization_gap"
            row["paper's gap"] = f"{papers.paper(f'after.wild.{name}.{measure}').value:+.1f}" if name else "–"
            rows.append(row)
    return pd.DataFrame(rows)

