"""Evaluating an edit the way the ROME paper does (Meng et al. 2022, section 4, appendix).

CounterFact (paper section 4.2, Table 4). For a case asking to rewrite (s, r, o) into
(s, r, o*), with ``P[o]`` the probability of a target after a prompt,
``P[o] = exp((1/T) Σ_t log P(o_t | prompt, o_<t))`` (teacher forced over the target's T
tokens: ROME's code compares mean negative log-likelihoods per token):

* efficacy: ES = mean [P(o*) > P(o)] on the edited prompt, EM = mean P(o*) − P(o);
* paraphrase: PS, PM, the same on paraphrases of the prompt;
* neighbourhood (specificity): NS = mean [P(o_n) > P(o*)] on prompts about other subjects
  whose true object is o_n, NM = mean P(o_n) − P(o*);
* score S = harmonic mean of ES, PS and NS;
* fluency: GE, the weighted 2- and 3-gram entropy of text generated about the subject
  (ROME's ``compute_n_gram_entropy``): repetitive text has low entropy;
* consistency RS (tf-idf similarity to reference texts about o*) needs ROME's
  ``attribute_snippets.json`` and ``idf.npy``; :func:`rs_available` says whether we have them.

zsRE (Table 1), as ROME's code builds it (``MENDQADataset``): the edit writes the question's
true answer ``answers[0]``; efficacy, paraphrase and specificity are token accuracies, the
fraction of the target's tokens that are the model's argmax prediction given the prompt and
the target's previous tokens (teacher forced); the specificity target is the model-independent
answer of an unrelated question, so it measures what the edit broke.

:func:`evaluate_counterfact` and :func:`evaluate_zsre` run an editor (``factlens.editing.requests.Editor``:
``factlens.editing.rome.ROME``, ``fine_tuning.FineTuner``, ``knowledge_neurons.KnowledgeNeurons``, ...,
or ``None`` for the unedited model) over cases, one request per edit, undoing each edit before the next,
and return one row per case. :func:`summarize` turns the rows into means with 95% intervals over
cases (Wilson's for 0/1 outcomes, otherwise the bootstrap), in percent as the paper reports them;
:func:`paired_difference` compares two methods on the same cases (Newcombe's paired interval for
success rates, otherwise the cases resampled together), and :func:`claim_difference` /
:func:`claim_value` give a claim's evidence beside
the paper's number (``factlens.evidence.results.Run.claim``).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from factlens.core.models import Model, view
from factlens.data import CounterFactCase, ZsreCase
from factlens.editing.generation import generate
from factlens.editing.requests import Editor, EditRequest
from factlens.evidence.papers import PaperNumber, paper, paper_table
from factlens.evidence.stats import bootstrap, newcombe, wilson
from factlens.probing.repeated import RecordedRows

COUNTERFACT_METRICS = ("S", "ES", "PS", "NS", "EM", "PM", "NM", "GE")
_Z = {0.95: 1.96, 0.9: 1.645, 0.99: 2.576}  # two-sided normal quantiles (as stats.wilson)
ZSRE_METRICS = ("efficacy", "paraphrase", "specificity")
SUCCESS_RATES = ("ES", "PS", "NS", *ZSRE_METRICS)  # per case a share in [0, 1] of prompts or tokens that succeed

# The paper's numbers on GPT-2 XL (factlens.evidence.papers), in percent (GE: entropy × 100), per method:
# CounterFact, Table 4 (RS, the consistency score, needs data we do not have); zsRE, Table 1.
PAPER_COUNTERFACT: dict[str, dict[str, float]] = {
    m: paper_table(f"rome.counterfact.{m}") for m in ("unedited", "FT", "FT+L", "KN", "ROME")}
PAPER_ZSRE: dict[str, dict[str, float]] = {m: paper_table(f"rome.zsre.{m}") for m in ("unedited", "FT", "FT+L", "ROME")}


# --------------------------------------------------------------------------- teacher forcing


def _rows(heads: Sequence[list[int]], tails: Sequence[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The fewest token rows that teacher-force every (head, tail): row ``head + tail[:-1]``, and
    a row that is the start of another is read from the longer one (a causal model's logits at a
    position do not depend on what follows). Returns the rows and, per pair, its row's index."""
    wanted = [tuple(h + t[:-1]) for h, t in zip(heads, tails)]
    rows: list[tuple[int, ...]] = []
    for w in sorted(set(wanted), key=len, reverse=True):
        if not any(r[: len(w)] == w for r in rows):
            rows.append(w)
    index = [next(i for i, r in enumerate(rows) if r[: len(w)] == w) for w in wanted]
    return [list(r) for r in rows], index


@torch.no_grad()
def _teacher_forced(model: Model, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 64,
                    recorded: RecordedRows | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per (prompt, target): the log-probability of each target token and whether it is the
    argmax, given the prompt and the target's previous tokens. The pairs share the fewest rows
    (:func:`_rows`: one-token targets after the same prompt share one), right-padded, up to
    ``batch_size`` rows per forward pass; only the read positions are projected to the vocabulary,
    each once (two targets after the same prompt read the same logits). A product's row does not
    depend on the other rows, except that a single row takes another path (its last bits differ):
    positions read more than once are projected as two rows at least, so that every number is
    the one a projection of every read gives. ``recorded``: the rows' forward passes come from it
    (:class:`factlens.probing.repeated.RecordedRows`: run again from the lowest changed block), the
    same numbers to float precision."""
    if len(prompts) != len(targets):
        raise ValueError(f"got {len(prompts)} prompts but {len(targets)} targets; give one target per prompt")
    v = view(model)
    heads = [v.token_ids(p) for p in prompts]
    tails = [v.target_ids(t) for t in targets]
    rows, row_of = _rows(heads, tails)
    if recorded is not None:
        hidden_rows = recorded.final_hidden(v, rows)
    else:
        hidden_rows = []
        for start in range(0, len(rows), batch_size):
            hidden_rows += list(v.final_hidden(v.batch(rows[start:start + batch_size]).ids))
    reads = [(row_of[i], len(h) - 1 + j) for i, (h, t) in enumerate(zip(heads, tails)) for j in range(len(t))]
    distinct = {read: k for k, read in enumerate(dict.fromkeys(reads))}
    picked = torch.stack([hidden_rows[i][j] for i, j in distinct])
    if len(distinct) == 1 < len(reads):
        picked = picked.repeat(2, 1)
    index = torch.tensor([distinct[read] for read in reads], device=picked.device)
    tokens = torch.tensor([tok for t in tails for tok in t], device=picked.device)
    logits = v.unembed(picked[:, None])[:, 0].float()
    logp = logits.log_softmax(-1)[index, tokens].cpu()
    hit = (logits.argmax(-1)[index] == tokens).float().cpu()
    sizes = [len(t) for t in tails]
    return list(logp.split(sizes)), list(hit.split(sizes))


def target_log_probs(model: Model, prompts: Sequence[str], targets: Sequence[str],
                     batch_size: int = 64, *, recorded: RecordedRows | None = None) -> torch.Tensor:
    """``(1/T) Σ_t log P(o_t | prompt, o_<t)`` for each (prompt, target): [n].

    The mean log-probability per target token (ROME compares these); ``exp`` of it is the
    probability ROME reports for a multi-token target. ``recorded``: prompts scored again and again on
    a changing model keep their forward passes there (:func:`_teacher_forced`)."""
    logps, _ = _teacher_forced(model, prompts, targets, batch_size, recorded)
    return torch.stack([lp.mean() for lp in logps])


def target_token_accuracy(model: Model, prompts: Sequence[str], targets: Sequence[str],
                          batch_size: int = 64) -> torch.Tensor:
    """``(1/T) Σ_t [argmax P(· | prompt, o_<t) = o_t]`` for each (prompt, target): [n]
    (ROME's zsRE token accuracy, teacher forced)."""
    _, hits = _teacher_forced(model, prompts, targets, batch_size)
    return torch.stack([h.mean() for h in hits])


# --------------------------------------------------------------------------- fluency


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """``(1/|ns|) Σ_n w_n H_n`` with ``H_n = −Σ_g f(g) log₂ f(g)`` over the n-grams ``g`` of the
    text's words (ROME's ``compute_n_gram_entropy``: 2- and 3-grams weighted 2/3 and 4/3).

    Words are runs of letters/digits and single punctuation marks (ROME uses NLTK's
    ``word_tokenize``, which splits the same way on ordinary text)."""
    words = _WORD.findall(text)
    total = 0.0
    for n, w in zip(ns, weights):
        grams = Counter(zip(*(words[i:] for i in range(n))))
        if grams:
            f = np.array(list(grams.values()), dtype=float)
            f /= f.sum()
            total += w * float(-(f * np.log2(f)).sum())
    return total / len(ns)


def rs_available() -> bool:
    """Whether ROME's reference texts and tf-idf statistics (``attribute_snippets.json``,
    ``idf.npy``, ``tfidf_vocab.json``) are in the data folder; without them RS is not computed."""
    from factlens.data import data_root

    root = data_root()
    return root is not None and any(root.rglob("attribute_snippets.json")) and any(root.rglob("idf.npy"))


# --------------------------------------------------------------------------- one case


def counterfact_scores(model: Model, case: CounterFactCase, *, generate_tokens: int = 0,
                       seed: int = 0) -> dict[str, float]:
    """The CounterFact metrics of one case on ``model`` as it is now (edited or not).

    Returns ``ES, EM, PS, PM, NS, NM`` (fractions and probability differences, averaged over
    the case's prompts of each kind; every prompt and target of the case in one forward pass)
    and ``GE`` (NaN when ``generate_tokens`` is 0): the mean n-gram entropy of each prompt
    followed by ``generate_tokens`` new tokens sampled from the top 5, seeded
    (``generation.generate``), from the case's ``generation_prompts``, or, when it has none (the
    reduced CounterFact files), from the edited prompt and its paraphrases. ROME generates up
    to 100 tokens in all, prompt included (``generate_fast(max_out_len=100)``).
    """
    text = case.prompt.replace("{}", case.subject)
    rewrites = [text, *case.paraphrase_prompts]
    neighbours = list(case.neighborhood_prompts)
    prompts = [p for p in rewrites for _ in (0, 1)] + [p for p, _ in neighbours for _ in (0, 1)]
    targets = [t for _ in rewrites for t in (case.target_new, case.target_true)]
    targets += [t for _, true in neighbours for t in (case.target_new, true)]
    lp = target_log_probs(model, prompts, targets).view(-1, 2)  # columns: o*, o (or o_n)
    new, true = lp[:, 0], lp[:, 1]
    p_new, p_true = new.exp(), true.exp()
    n = len(rewrites)
    scores = {
        "ES": float(new[0] > true[0]), "EM": float(p_new[0] - p_true[0]),
        "PS": float((new[1:n] > true[1:n]).float().mean()), "PM": float((p_new[1:n] - p_true[1:n]).mean()),
        "NS": float((true[n:] > new[n:]).float().mean()), "NM": float((p_true[n:] - p_new[n:]).mean()),
        "GE": math.nan,
    }
    if generate_tokens > 0:
        starts = list(getattr(case, "generation_prompts", ()) or rewrites)
        texts = generate(model, starts, generate_tokens, top_k=5, seed=seed)
        scores["GE"] = float(np.mean([ngram_entropy(p + t) for p, t in zip(starts, texts)]))
    return scores


@dataclass(frozen=True)
class ZsreEdit:
    """A zsRE record as ROME evaluates it: the edit, the rephrased question, and an unrelated
    question with its answer."""

    case_id: int
    request: EditRequest
    paraphrase: str
    neighborhood_prompt: str
    neighborhood_answer: str


def zsre_edit(record: ZsreCase | Mapping[str, Any], case_id: int = -1) -> ZsreEdit:
    """The :class:`ZsreEdit` of a zsRE record (a ``factlens.data.ZsreCase``, or a dict in ROME's
    format: ``subject, src, rephrase, answers, loc, loc_ans``), as ROME's ``MENDQADataset``
    builds it: the edit writes the true answer ``answers[0]`` into the question with the subject
    replaced by ``{}``, and the neighbourhood prompt is ``loc + "?"``. (MEND's protocol edits
    toward the file's ``alt`` instead; the ROME paper's Table 1 does not.)"""
    if isinstance(record, Mapping):
        get = record.__getitem__
        answers, cid = record["answers"], record.get("case_id", case_id)
        answer = answers if isinstance(answers, str) else answers[0]
    else:
        get = functools.partial(getattr, record)
        answer, cid = record.answer, record.case_id
    subject, question = get("subject"), get("src")
    if subject not in question:
        raise ValueError(f"zsRE record {cid}: subject {subject!r} is not in the question {question!r}; "
                         f"ROME's prompt template needs it (zsre_usable() keeps the records that have it)")
    if not answer:
        raise ValueError(f"zsRE record {cid} has no answer to edit toward (answers is empty)")
    request = EditRequest(question.replace(subject, "{}", 1), subject, answer)
    return ZsreEdit(cid, request, get("rephrase"), get("loc") + "?", get("loc_ans"))


def zsre_scores(model: Model, case: ZsreEdit) -> dict[str, float]:
    """zsRE token accuracies of one case on ``model`` as it is now, in one forward pass:
    ``efficacy`` (the edited answer after the question), ``paraphrase`` (after the rephrased
    question) and ``specificity`` (the unrelated question's answer)."""
    prompts = [case.request.text, case.paraphrase, case.neighborhood_prompt]
    targets = [case.request.target, case.request.target, case.neighborhood_answer]
    acc = target_token_accuracy(model, prompts, targets)
    return dict(zip(ZSRE_METRICS, acc.tolist()))


# --------------------------------------------------------------------------- over cases


def score_edits(model: Model, items: Iterable[tuple[int, EditRequest, Callable[[], dict[str, float]]]],
                editor: Editor | None, total: int, desc: str, progress: bool) -> pd.DataFrame:
    """For each ``(case_id, request, score)``: write the request with ``editor`` (``None``: the unedited
    model), call ``score()``, undo the edit (also when scoring raises); one row per case (``case_id``, the
    scores, ``edit_seconds``)."""
    rows = []
    for case_id, request, score in tqdm(items, total=total, desc=desc, disable=not progress):
        edit = editor(model, [request]) if editor is not None else None
        try:
            row = {"case_id": case_id, **score()}
        finally:
            if edit is not None:
                edit.undo()
        row["edit_seconds"] = edit.info.get("seconds", math.nan) if edit is not None else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate_counterfact(model: Model, cases: Sequence[CounterFactCase], editor: Editor | None = None, *,
                         generate_tokens: int = 0, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Write each CounterFact case's requested rewrite with ``editor``, score it
    (:func:`counterfact_scores`), undo it; one row per case (``case_id``, the metrics,
    ``edit_seconds``). ``editor=None`` scores the unedited model."""
    items = ((c.case_id, EditRequest.from_counterfact(c),
              lambda c=c: counterfact_scores(model, c, generate_tokens=generate_tokens, seed=seed))
             for c in cases)
    name = editor.name if editor is not None else "unedited"
    return score_edits(model, items, editor, len(cases), f"CounterFact, {name}", progress)


def evaluate_zsre(model: Model, records: Sequence[ZsreCase | Mapping[str, Any]], editor: Editor | None = None, *,
                  progress: bool = True) -> pd.DataFrame:
    """Write each zsRE record's edit with ``editor``, score it (:func:`zsre_scores`), undo it;
    one row per record. ``editor=None`` scores the unedited model."""
    cases = [zsre_edit(r, i) for i, r in enumerate(records)]
    items = ((c.case_id, c.request, lambda c=c: zsre_scores(model, c)) for c in cases)
    name = editor.name if editor is not None else "unedited"
    return score_edits(model, items, editor, len(cases), f"zsRE, {name}", progress)


def zsre_usable(records: Iterable[ZsreCase | Mapping[str, Any]]) -> list[ZsreCase | Mapping[str, Any]]:
    """The zsRE records whose question contains the subject (ROME's template needs it)."""
    usable = []
    for i, r in enumerate(records):
        try:
            zsre_edit(r, i)
        except ValueError:
            continue
        usable.append(r)
    return usable


# --------------------------------------------------------------------------- summaries


def harmonic_mean(*values: float) -> float:
    """``n / Σ 1/x``: the score S of ES, PS and NS (0 if any is 0)."""
    if any(x <= 0 for x in values):
        return 0.0
    return len(values) / sum(1 / x for x in values)


def _columns(metric: str) -> tuple[str, ...]:
    """The per-case columns a metric is computed from: S from ES, PS and NS, any other from itself."""
    return ("ES", "PS", "NS") if metric == "S" else (metric,)


def _statistic(metric: str):
    """``f(x)`` of a metric over the rows (cases) of ``x``, whose columns are :func:`_columns`:
    the mean (NaN-skipping), or for S the harmonic mean of the three means."""
    if metric == "S":
        return lambda x: harmonic_mean(*np.nanmean(x, axis=0))
    return lambda x: float(np.nanmean(x[:, 0]))


def _binary(x: np.ndarray) -> bool:
    """Whether every value is 0 or 1: a proportion (ES, PS, NS with one prompt per case)."""
    return x.size > 0 and bool(np.isin(x, (0.0, 1.0)).all())


def summarize(frame: pd.DataFrame, metrics: Sequence[str] | None = None, *, n_boot: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each metric's mean over cases with a 95% interval, in percent: ``{metric: {"mean", "low", "high"}}``.

    A proportion (a metric that is 0 or 1 for every case) gets Wilson's interval
    (``factlens.evidence.stats.wilson``); any other metric, S (a harmonic mean of means) included, the
    percentile interval over ``n_boot`` resamples of the cases (``factlens.evidence.stats.bootstrap``,
    seeded: every metric sees the same resamples). Metrics default to CounterFact's or zsRE's,
    whichever columns the frame has; a metric that is NaN for every case (GE without
    generation) is left out.
    """
    if frame.empty:
        raise ValueError("no cases to summarize: evaluate at least one case")
    if metrics is None:
        metrics = COUNTERFACT_METRICS if "ES" in frame else ZSRE_METRICS
    z = _Z[confidence] if confidence in _Z else None
    out = {}
    for m in metrics:
        x = frame[list(_columns(m))].to_numpy(dtype=float)
        if np.isnan(x).all():
            continue
        stat = _statistic(m)
        if m != "S" and _binary(x) and z is not None:
            low, high = wilson(float(x.sum()), len(x), z)
        else:
            low, high = bootstrap(x, stat, n_boot=n_boot, confidence=confidence, seed=seed)
        out[m] = {"mean": 100 * stat(x), "low": 100 * low, "high": 100 * high}
    return out


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, metric: str, *, relative: bool = False,
                      n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``metric(a) − metric(b)`` in percentage points (``relative``: ``100·(metric(a)/metric(b) − 1)``,
    percent) and its 95% interval over the cases, paired: ``(difference, low, high)``.

    ``a`` and ``b`` are two methods' frames on the same cases (matched on ``case_id``; an error
    if their cases differ). A difference of two success rates (:data:`SUCCESS_RATES`: 0/1 per case,
    or a share of a case's prompts or target tokens) gets Newcombe's paired interval
    (``factlens.evidence.stats.newcombe``, shares as the closest pairing of 0/1 outcomes), which does
    not collapse to a point when the cases agree; a magnitude, S or a relative difference the
    bootstrap with the cases resampled together.
    """
    if sorted(a["case_id"]) != sorted(b["case_id"]):
        raise ValueError("paired_difference needs both frames scored on the same cases (case_id); "
                         "evaluate both methods on one list of cases")
    cols = list(_columns(metric))
    merged = a[["case_id", *cols]].merge(b[["case_id", *cols]], on="case_id", suffixes=("_a", "_b"))
    x = merged[[f"{c}_a" for c in cols] + [f"{c}_b" for c in cols]].to_numpy(dtype=float)
    stat, k = _statistic(metric), len(cols)

    def difference(rows: np.ndarray) -> float:
        first, second = stat(rows[:, :k]), stat(rows[:, k:])
        return 100 * (first / second - 1) if relative else 100 * (first - second)

    if metric in SUCCESS_RATES and not relative and confidence in _Z and not np.isnan(x).any():
        _, low, high = newcombe(x[:, 0], x[:, 1], paired=True, z=_Z[confidence])
        return difference(x), 100 * low, 100 * high
    low, high = bootstrap(x, difference, n_boot=n_boot, confidence=confidence, seed=seed)
    return difference(x), low, high


def paper_difference(benchmark: str, a: str, b: str, metric: str, *, relative: bool = False) -> PaperNumber:
    """The paper's ``a − b`` for ``metric`` (``relative``: ``100·(a/b − 1)``, percent), as the registry
    holds it (``factlens.evidence.papers``: ``rome.<benchmark>.<a>-<b>.<metric>``, relative
    ``rome.<benchmark>.<a>/<b>.<metric>``) with its source and τ; what an ordering or difference claim
    sets beside :func:`paired_difference`."""
    return paper(f"rome.{benchmark}.{a}{'/' if relative else '-'}{b}.{metric}")


def claim_difference(frames: Mapping[str, pd.DataFrame], a: str, b: str, metric: str, *,
                     benchmark: str = "counterfact", paper_rows: Mapping[str, str] | None = None,
                     relative: bool = False, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The evidence of a claim about ``metric(a) − metric(b)``: the keyword arguments ``paper``,
    ``ours``, ``ci`` and ``n`` of ``factlens.evidence.results.Run.claim``.

    Ours is :func:`paired_difference` of the two methods' frames (the same cases); the paper's
    is :func:`paper_difference` of the rows our methods stand for (``paper_rows`` maps our row
    names to the paper's, e.g. ``{"FT+L (layer 0: W)": "FT+L"}``)."""
    rows = paper_rows or {}
    diff, low, high = paired_difference(frames[a], frames[b], metric, relative=relative, n_boot=n_boot, seed=seed)
    number = paper_difference(benchmark, rows.get(a, a), rows.get(b, b), metric, relative=relative)
    return {"paper": number, "ours": diff, "ci": (low, high), "n": len(frames[a])}


def claim_value(frames: Mapping[str, pd.DataFrame], method: str, metric: str, *, benchmark: str = "counterfact",
                paper_rows: Mapping[str, str] | None = None, reference: str | None = "unedited",
                n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The evidence of a claim that ``method``'s ``metric`` equals the paper's: the keyword
    arguments ``paper``, ``ours``, ``ci``, ``n`` and ``reference`` (the ``reference`` method's
    value on the same cases, e.g. the unedited model's) of ``factlens.evidence.results.Run.claim``."""
    rows = paper_rows or {}
    ours = summarize(frames[method], [metric], n_boot=n_boot, seed=seed)[metric]
    out = {"paper": paper(f"rome.{benchmark}.{rows.get(method, method)}.{metric}"), "ours": ours["mean"],
           "ci": (ours["low"], ours["high"]), "n": len(frames[method])}
    if reference is not None:
        out["reference"] = summarize(frames[reference], [metric], n_boot=1, seed=seed)[metric]["mean"]
    return out


def comparison_table(ours: Mapping[str, Mapping[str, Mapping[str, float]]],
                     paper_rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str],
                     row_of: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Ours (mean [low, high]) beside the paper's number, one row per method, two columns per metric.

    ``paper_rows`` is ``{paper's method: {metric: value}}`` (:data:`PAPER_COUNTERFACT`,
    :data:`PAPER_ZSRE`); ``row_of`` maps our row names to the paper's rows where they differ
    (``{"FT+L (layer 0, W and b)": "FT+L"}``); a row with no counterpart shows "–"."""
    row_of = row_of or {}
    table = {}
    for method, summary in ours.items():
        row = {}
        reference = paper_rows.get(row_of.get(method, method), {})
        for m in metrics:
            s = summary.get(m)
            row[(m, "ours")] = f"{s['mean']:.1f} [{s['low']:.1f}, {s['high']:.1f}]" if s else "–"
            p = reference.get(m)
            row[(m, "paper")] = f"{p:.1f}" if p is not None else "–"
        table[method] = row
    frame = pd.DataFrame(table).T
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame
