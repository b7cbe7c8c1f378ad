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

zsRE (Table 3): efficacy, paraphrase and specificity are token accuracies, the fraction of
the target's tokens that are the model's argmax prediction given the prompt and the target's
previous tokens (teacher forced); the specificity target is the model-independent answer of
an unrelated question, so it measures what the edit broke.

:func:`evaluate_counterfact` and :func:`evaluate_zsre` run an editing method (any callable
``method(model, request) -> Edit``, e.g. ``factlens.rome.apply``, ``factlens.baselines.ft``,
or ``None`` for the unedited model) over cases, undoing each edit before the next, and return
one row per case; :func:`summarize` turns the rows into means with bootstrap 95% intervals,
in percent as the paper reports them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from factlens import rome
from factlens.claims import paper_table
from factlens.models import Model, view

Method = Callable[[Model, rome.EditRequest], rome.Edit]

COUNTERFACT_METRICS = ("S", "ES", "PS", "NS", "EM", "PM", "NM", "GE")
ZSRE_METRICS = ("efficacy", "paraphrase", "specificity")

# The paper's numbers on GPT-2 XL (factlens.claims), in percent (GE: entropy × 100), per method:
# CounterFact, Table 4 (RS, the consistency score, needs data we do not have); zsRE, Table 3.
PAPER_COUNTERFACT: dict[str, dict[str, float]] = {
    m: paper_table(f"rome.counterfact.{m}") for m in ("unedited", "FT", "FT+L", "KN", "ROME")}
PAPER_ZSRE: dict[str, dict[str, float]] = {m: paper_table(f"rome.zsre.{m}") for m in ("unedited", "FT", "FT+L", "ROME")}


# --------------------------------------------------------------------------- teacher forcing


@torch.no_grad()
def _teacher_forced(model: Model, prompts: Sequence[str], targets: Sequence[str],
                    batch_size: int = 16) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per (prompt, target): the log-probability of each target token and whether it is the
    argmax, given the prompt and the target's previous tokens. Batched, right-padded; only the
    target's positions are projected to the vocabulary."""
    if len(prompts) != len(targets):
        raise ValueError(f"got {len(prompts)} prompts but {len(targets)} targets; give one target per prompt")
    v = view(model)
    logps: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(zip(prompts[start:start + batch_size], targets[start:start + batch_size]))
        heads = [v.token_ids(p) for p, _ in chunk]
        tails = [v.target_ids(t) for _, t in chunk]
        ids = v.batch([h + t for h, t in zip(heads, tails)]).ids
        hidden = v.final_hidden(ids)
        rows = torch.tensor([i for i, t in enumerate(tails) for _ in t])
        cols = torch.tensor([len(h) - 1 + j for h, t in zip(heads, tails) for j in range(len(t))])
        tokens = torch.tensor([tok for t in tails for tok in t], device=hidden.device)
        logits = v.unembed(hidden[rows, cols][:, None])[:, 0].float()
        logp = logits.log_softmax(-1)[torch.arange(len(tokens)), tokens].cpu()
        hit = (logits.argmax(-1) == tokens).float().cpu()
        sizes = [len(t) for t in tails]
        logps += list(logp.split(sizes))
        hits += list(hit.split(sizes))
    return logps, hits


def target_log_probs(model: Model, prompts: Sequence[str], targets: Sequence[str],
                     batch_size: int = 16) -> torch.Tensor:
    """``(1/T) Σ_t log P(o_t | prompt, o_<t)`` for each (prompt, target): [n].

    The mean log-probability per target token (ROME compares these); ``exp`` of it is the
    probability ROME reports for a multi-token target."""
    logps, _ = _teacher_forced(model, prompts, targets, batch_size)
    return torch.stack([lp.mean() for lp in logps])


def target_token_accuracy(model: Model, prompts: Sequence[str], targets: Sequence[str],
                          batch_size: int = 16) -> torch.Tensor:
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


def counterfact_scores(model: Model, case: Any, *, generate_tokens: int = 0, seed: int = 0) -> dict[str, float]:
    """The CounterFact metrics of one case on ``model`` as it is now (edited or not).

    Returns ``ES, EM, PS, PM, NS, NM`` (fractions and probability differences, averaged over
    the case's prompts of each kind) and ``GE`` (NaN when ``generate_tokens`` is 0): the mean
    n-gram entropy of texts continued by ``generate_tokens`` tokens sampled from the top 5
    (ROME: 100 tokens), from the case's ``generation_prompts``, or, when it has none (the
    reduced CounterFact files), from the edited prompt and its paraphrases.
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
        texts = rome.generate(model, starts, generate_tokens, top_k=5, seed=seed)
        scores["GE"] = float(np.mean([ngram_entropy(p + t) for p, t in zip(starts, texts)]))
    return scores


@dataclass(frozen=True)
class ZsreEdit:
    """A zsRE record as ROME evaluates it: the edit, the rephrased question, and an unrelated
    question with its answer."""

    case_id: int
    request: rome.EditRequest
    paraphrase: str
    neighborhood_prompt: str
    neighborhood_answer: str


def zsre_edit(record: Any, case_id: int = -1) -> ZsreEdit:
    """The :class:`ZsreEdit` of a zsRE record: a ``factlens.data.ZsreCase`` or a dict in ROME's
    format (``subject, src, rephrase, alt, loc, loc_ans``). As in ROME, the edit's prompt is
    the question with the subject replaced by ``{}``, and the neighbourhood prompt ``loc + "?"``."""
    if isinstance(record, dict):
        get = record.__getitem__
        target, cid = record["alt"], record.get("case_id", case_id)
    else:
        get = lambda key: getattr(record, key)  # noqa: E731
        target, cid = record.target_new, record.case_id
    subject, question = get("subject"), get("src")
    if subject not in question:
        raise ValueError(f"zsRE record {cid}: subject {subject!r} is not in the question {question!r}; "
                         f"ROME's prompt template needs it (zsre_usable() keeps the records that have it)")
    request = rome.EditRequest(question.replace(subject, "{}", 1), subject, target)
    return ZsreEdit(cid, request, get("rephrase"), get("loc") + "?", get("loc_ans"))


def zsre_scores(model: Model, case: ZsreEdit) -> dict[str, float]:
    """zsRE token accuracies of one case on ``model`` as it is now: ``efficacy`` (the new
    answer after the question), ``paraphrase`` (after the rephrased question) and
    ``specificity`` (the unrelated question's answer)."""
    prompts = [case.request.text, case.paraphrase, case.neighborhood_prompt]
    targets = [case.request.target, case.request.target, case.neighborhood_answer]
    acc = target_token_accuracy(model, prompts, targets)
    return dict(zip(ZSRE_METRICS, acc.tolist()))


# --------------------------------------------------------------------------- over cases


def _run(model: Model, items: Iterable[tuple[int, rome.EditRequest, Callable[[], dict[str, float]]]],
         method: Method | None, total: int, desc: str, progress: bool) -> pd.DataFrame:
    rows = []
    for case_id, request, score in tqdm(items, total=total, desc=desc, disable=not progress):
        edit = method(model, request) if method is not None else None
        try:
            row = {"case_id": case_id, **score()}
        finally:
            if edit is not None:
                edit.undo()
        row["edit_seconds"] = edit.info.get("seconds", math.nan) if edit is not None else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def method_name(method: Method | None) -> str:
    """A readable name for a method: ``unedited`` for None."""
    if method is None:
        return "unedited"
    inner = getattr(method, "func", method)  # functools.partial
    return getattr(inner, "__name__", type(inner).__name__)


def evaluate_counterfact(model: Model, cases: Sequence[Any], method: Method | None = None, *,
                         generate_tokens: int = 0, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Apply ``method`` to each CounterFact case's requested rewrite, score it
    (:func:`counterfact_scores`), undo it; one row per case (``case_id``, the metrics,
    ``edit_seconds``). ``method=None`` scores the unedited model."""
    items = ((c.case_id, rome.EditRequest.from_counterfact(c),
              lambda c=c: counterfact_scores(model, c, generate_tokens=generate_tokens, seed=seed))
             for c in cases)
    return _run(model, items, method, len(cases), f"CounterFact, {method_name(method)}", progress)


def evaluate_zsre(model: Model, records: Sequence[Any], method: Method | None = None, *,
                  progress: bool = True) -> pd.DataFrame:
    """Apply ``method`` to each zsRE record's edit, score it (:func:`zsre_scores`), undo it;
    one row per record. ``method=None`` scores the unedited model."""
    cases = [zsre_edit(r, i) for i, r in enumerate(records)]
    items = ((c.case_id, c.request, lambda c=c: zsre_scores(model, c)) for c in cases)
    return _run(model, items, method, len(cases), f"zsRE, {method_name(method)}", progress)


def zsre_usable(records: Iterable[Any]) -> list[Any]:
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


def _means(frame: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    out = {}
    for m in metrics:
        if m == "S":
            out[m] = harmonic_mean(*(frame[k].mean() for k in ("ES", "PS", "NS")))
        else:
            out[m] = frame[m].mean()
    return out


def summarize(frame: pd.DataFrame, metrics: Sequence[str] | None = None, *, n_boot: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each metric's mean over cases with a bootstrap confidence interval, in percent.

    ``{metric: {"mean", "low", "high"}}``; the interval is the percentile interval of the
    metric over ``n_boot`` resamples of the cases (seeded), so S, a harmonic mean of means, gets
    one too. Metrics default to CounterFact's or zsRE's, whichever columns the frame has;
    a metric that is NaN for every case (GE without generation) is left out.
    """
    if metrics is None:
        metrics = COUNTERFACT_METRICS if "ES" in frame else ZSRE_METRICS
    metrics = [m for m in metrics if m == "S" or frame[m].notna().any()]
    if frame.empty:
        raise ValueError("no cases to summarize: evaluate at least one case")
    rng = np.random.default_rng(seed)
    point = _means(frame, metrics)
    boots = [_means(frame.iloc[rng.integers(0, len(frame), len(frame))], metrics) for _ in range(n_boot)]
    alpha = (1 - confidence) / 2
    out = {}
    for m in metrics:
        samples = np.array([b[m] for b in boots])
        low, high = np.nanquantile(samples, [alpha, 1 - alpha])
        out[m] = {"mean": 100 * point[m], "low": 100 * low, "high": 100 * high}
    return out


def comparison_table(ours: dict[str, dict[str, dict[str, float]]], paper: dict[str, dict[str, float]],
                     metrics: Sequence[str]) -> pd.DataFrame:
    """Ours (mean [low, high]) beside the paper's number, one row per method, two columns per metric."""
    table = {}
    for method, summary in ours.items():
        row = {}
        for m in metrics:
            s = summary.get(m)
            row[(m, "ours")] = f"{s['mean']:.1f} [{s['low']:.1f}, {s['high']:.1f}]" if s else "–"
            p = paper.get(method, {}).get(m)
            row[(m, "paper")] = f"{p:.1f}" if p is not None else "–"
        table[method] = row
    frame = pd.DataFrame(table).T
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame
