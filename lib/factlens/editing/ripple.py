"""The ripple report: after an edit, which of the model's answers changed.

An edit should change its fact, reach the fact's other wordings, and leave every other fact alone
(the neighbourhood of ROME's CounterFact; the "ripple effects" of Cohen et al. 2024, who ask what
else must and must not move). :class:`RippleProbe` asks the model a fixed set of questions before
an edit (any method, one fact or a batch); :meth:`RippleProbe.report` asks them again and lists
every question whose answer changed:

* ``relation``: the facts of the given LAMA relations (T-REx, single-token objects), top-1 answer
  as ``factlens.probing.lama`` ranks LAMA's common vocabulary;
* ``paraphrase``: the same facts asked through ParaRel's paraphrases of their relation;
* ``edited``: each edited fact asked through its relation's LAMA template and ParaRel paraphrases,
  when its relation is given (did the edit reach other wordings?);
* ``reverse``: the reverse questions, prompts that ask for an edited subject from the other side
  ("The most famous tower in Rome is the"): the top next token and ``log P(subject)``. An edit
  written from subject to object is one-directional, so these should not move.

Edited subjects are left out of the relation and paraphrase facts (their answers are meant to change).

:meth:`RippleReport.p_at_1_change` turns the relation questions into one number with its interval:
LAMA P@1 of the untouched facts after the edit minus before, the specificity of ROME's Table 1
(accuracy on other facts, before and after) asked of the edited fact's own relation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from factlens import data
from factlens.core.models import Model, view
from factlens.data import LamaFact
from factlens.editing import evaluation
from factlens.editing.requests import EditRequest
from factlens.evidence import stats
from factlens.probing import cloze, lama
from factlens.probing.analysis import paraphrase_facts

KINDS = ("edited", "relation", "paraphrase", "reverse")


@dataclass
class RippleReport:
    """What changed: ``answers`` (every LAMA question: kind, relation, subject, object, template, the
    top answer before and after, and whether it was the fact's object, ``right_before`` and
    ``right_after``; an edited fact's object is the new one), ``changed`` (the questions whose answer
    changed, and whether to a target: ``to_target``), ``counts`` (per kind: asked, changed,
    to_target, right_before, right_after) and ``reverse`` (every reverse question)."""

    answers: pd.DataFrame
    changed: pd.DataFrame
    counts: pd.DataFrame
    reverse: pd.DataFrame  # every reverse question: prompt, answer, top before/after, log p before/after

    def p_at_1_change(self, kind: str = "relation") -> tuple[float, float, float, int]:
        """P@1 after minus P@1 before over the ``kind``'s questions, in points, with Newcombe's 95% interval
        paired by question (``factlens.evidence.stats.newcombe``): ``(difference, low, high, n)``.

        For ``relation`` this is ROME's specificity (Meng et al. 2022, Table 1: token accuracy on other
        facts, the edited model's minus the unedited model's) on the other facts of the edited relation."""
        asked = self.answers[self.answers["kind"] == kind]
        if asked.empty:
            raise ValueError(f"the report asked no {kind!r} questions; it has: "
                             f"{', '.join(sorted(set(self.answers['kind']))) or 'none'}")
        diff, low, high = stats.newcombe(asked["right_after"].to_numpy(float), asked["right_before"].to_numpy(float),
                                         paired=True)
        return 100 * diff, 100 * low, 100 * high, len(asked)


def neighbourhood_scores(model: Model, facts: Sequence[LamaFact], target: str) -> pd.DataFrame:
    """CounterFact's neighbourhood measures on LAMA facts: per fact whose blank ends its template, ``NS``
    (1 when the fact's true object is more probable after its cloze prefix than the edit's ``target``,
    as ROME compares them: the mean per-token log-probability) and ``NM`` (``P(object) − P(target)``),
    on the model as it is now. Asked before and after an edit, the change is CounterFact's NS and NM of
    the edited model minus the unedited one's (Meng et al. 2022, Table 4), on the edited relation's other
    facts rather than CounterFact's neighbours (other subjects that share the edited fact's object)."""
    asked = [(f, cloze.fact_cloze(f)) for f in facts]
    asked = [(f, c) for f, c in asked if c.final]
    if not asked:
        return pd.DataFrame(columns=["subject", "object", "NS", "NM"])
    prompts = [c.prefix for _, c in asked]
    with torch.no_grad():
        true = evaluation.target_log_probs(model, prompts, [f.object for f, _ in asked])
        new = evaluation.target_log_probs(model, prompts, [target] * len(asked))
    return pd.DataFrame({"subject": [f.subject for f, _ in asked], "object": [f.object for f, _ in asked],
                         "NS": (true > new).double().numpy(), "NM": (true.exp() - new.exp()).double().numpy()})


def _edited_facts(requests: Sequence[EditRequest], relations: Sequence[str | None]) -> list[LamaFact]:
    known = data.lama_relations()
    facts = []
    for i, (r, rel) in enumerate(zip(requests, relations)):
        if rel is None:
            continue
        if rel not in known:
            raise lama.UnknownRelationError(f"unknown LAMA relation {rel!r} for request {i}; LAMA has: "
                                               f"{', '.join(sorted(known))}")
        facts.append(LamaFact(r.subject, rel, r.target.strip(), known[rel].template, f"edit-{i}", "TREx"))
    return facts


def _with_paraphrases(facts: list[LamaFact]) -> list[LamaFact]:
    return facts + paraphrase_facts([f for f in facts if f.relation in data.PARAREL_RELATIONS])


class RippleProbe:
    """The questions of a ripple report, asked once before the edit.

    ``requests`` are the edits about to be made; ``relations`` the LAMA relation ids to re-probe
    (``per_relation`` facts of each with a single-token object, a seeded sample; ``pararel_per_relation``
    of them also through
    ParaRel's patterns, 0 for none); ``request_relations`` each request's own relation id (or None);
    ``reverse`` the reverse questions as ``(prompt, answer)`` pairs.
    """

    def __init__(self, model: Model, requests: Sequence[EditRequest], relations: Sequence[str] = (), *,
                 per_relation: int = 100, pararel_per_relation: int = 10,
                 request_relations: Sequence[str | None] | None = None,
                 reverse: Sequence[tuple[str, str]] = (), seed: int = 0):
        self.model = model
        self.requests = list(requests)
        request_relations = list(request_relations) if request_relations is not None else [None] * len(self.requests)
        if len(request_relations) != len(self.requests):
            raise ValueError(f"got {len(request_relations)} request relations for {len(self.requests)} requests")
        subjects = {r.subject for r in self.requests}
        v = view(model)
        facts = [f for f in lama.lama_facts("TREx", relations) if f.subject not in subjects
                 and len(v.target_ids(f.object)) == 1] if relations else []  # LAMA probes single-token objects
        by_relation: dict[str, list[LamaFact]] = {}
        for f in facts:
            by_relation.setdefault(f.relation, []).append(f)
        rng = random.Random(seed)
        sample = {rel: rng.sample(fs, min(per_relation, len(fs))) for rel, fs in sorted(by_relation.items())}
        relation_facts = [f for fs in sample.values() for f in fs]
        pararel = [f for fs in sample.values() for f in fs[:pararel_per_relation]
                   if f.relation in data.PARAREL_RELATIONS]
        self.questions: dict[str, list[LamaFact]] = {
            "edited": _with_paraphrases(_edited_facts(self.requests, request_relations)),
            "relation": relation_facts,
            "paraphrase": paraphrase_facts(pararel) if pararel else [],
        }
        self.reverse = [(p, a) for p, a in reverse]
        self.before = self._ask()

    def _ask(self) -> dict[str, pd.DataFrame]:
        answers = {}
        for kind, facts in self.questions.items():
            if facts:
                frame = lama.probe(self.model, facts, k=1, progress=False).frame
                answers[kind] = frame.assign(answer=frame["top"].str[0])
        if self.reverse:
            prompts = [p for p, _ in self.reverse]
            targets = [a for _, a in self.reverse]
            with torch.no_grad():
                logp = evaluation.target_log_probs(self.model, prompts, targets)
            top = [t[0] for t in view(self.model).top_tokens(prompts, k=1)]
            answers["reverse"] = pd.DataFrame({"prompt": prompts, "answer": targets, "top": top,
                                               "log_p": logp.numpy()})
        return answers

    def report(self) -> RippleReport:
        """Ask every question again on the model as it is now; list the answers that changed."""
        after = self._ask()
        targets = {r.target.strip() for r in self.requests}
        columns = ["kind", "relation", "subject", "object", "template", "before", "after", "to_target"]
        asked = [self.before[kind].rename(columns={"answer": "before"})
                 .assign(kind=kind, after=after[kind]["answer"].to_numpy(), right_before=self.before[kind]["rank"] == 1,
                         right_after=(after[kind]["rank"] == 1).to_numpy())
                 for kind in ("edited", "relation", "paraphrase") if kind in self.before]
        answers = pd.concat(asked, ignore_index=True) if asked else pd.DataFrame(
            columns=[*columns[:-1], "right_before", "right_after"])
        answers = answers.assign(to_target=answers["after"].isin(targets))
        moved = answers[answers["before"] != answers["after"]]
        rows, counts = [moved[columns]], []
        for kind in ("edited", "relation", "paraphrase"):
            of_kind, moved_of_kind = answers[answers["kind"] == kind], moved[moved["kind"] == kind]
            counts.append({"kind": kind, "asked": len(of_kind), "changed": len(moved_of_kind),
                           "to_target": int(moved_of_kind["to_target"].sum()),
                           "right_before": int(of_kind["right_before"].sum()),
                           "right_after": int(of_kind["right_after"].sum())})
        reverse = pd.DataFrame(columns=["prompt", "answer", "top_before", "top_after", "log_p_before", "log_p_after"])
        if "reverse" in self.before:
            b, a = self.before["reverse"], after["reverse"]
            reverse = pd.DataFrame({"prompt": b["prompt"], "answer": b["answer"], "top_before": b["top"],
                                    "top_after": a["top"], "log_p_before": b["log_p"], "log_p_after": a["log_p"]})
            moved = reverse[reverse["top_before"] != reverse["top_after"]]
            rows.append(pd.DataFrame({"kind": "reverse", "relation": None, "subject": moved["answer"], "object": None,
                                      "template": moved["prompt"], "before": moved["top_before"],
                                      "after": moved["top_after"], "to_target": False}))
            counts.append({"kind": "reverse", "asked": len(b), "changed": len(moved), "to_target": 0,
                           "right_before": 0, "right_after": 0})
        kept = [r for r in rows if len(r)]
        changed = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=columns)
        return RippleReport(answers.reset_index(drop=True), changed, pd.DataFrame(counts).set_index("kind"), reverse)

