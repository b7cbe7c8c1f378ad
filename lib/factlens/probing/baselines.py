"""The baselines of LAMA's table (Petroni et al. 2019, section 4), beside which a probe is read.

* Freq (:func:`freq_baseline`): a relation's objects ranked by how often they are its object,
  the same answer for every subject: what a probe scores by knowing the relation's answer
  distribution alone;
* RE_o, the oracle relation extractor, reads the sentences that express the fact; its stand-in
  here (:func:`evidence_facts`) re-poses each fact as its own evidence sentence, for the model
  to read (probed with :func:`factlens.probing.lama.probe`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace

from factlens.data import LamaFact
from factlens.probing.lama import ProbeResult, checked_facts, ranked_frame, relation_objects
from factlens.probing.ranking import Ranked


def freq_baseline(facts: Sequence[LamaFact], reference: Sequence[LamaFact] | None = None) -> ProbeResult:
    """Freq (Petroni et al. 2019, section 4): rank a relation's objects by how often they are its
    object in the test data (``reference``, default ``facts``), the same answer for every subject.
    The log-probabilities are the objects' relative frequencies."""
    facts = checked_facts(facts)
    reference = facts if reference is None else list(reference)
    counts: dict[str, Counter] = defaultdict(Counter)
    for f in reference:
        counts[f.relation][f.object] += 1
    ranking = relation_objects(reference)
    ranked = []
    for f in facts:
        order, c = ranking.get(f.relation, []), counts[f.relation]
        total = max(sum(c.values()), 1)
        rank = order.index(f.object) + 1 if f.object in order else len(order) + 1
        gold_lp = math.log(c[f.object] / total) if c[f.object] else -math.inf
        ranked.append((f, Ranked(rank, gold_lp, order[:10], [math.log(c[o] / total) for o in order[:10]], True, rank)))
    return ProbeResult(ranked_frame(ranked, lambda f: True), method="Freq")


def evidence_facts(facts: Iterable[LamaFact]) -> list[LamaFact]:
    """The facts re-posed as their first evidence sentence that names the subject, object masked.

    A stand-in for the paper's oracle relation extractor (RE_o), which reads the sentences
    that express the fact: here the model reads such a sentence (``[X]`` where the subject is
    written, ``[Y]`` where the object was) and fills in the object. Unlike RE_o it never sees
    the object; it measures how much the fact's real context helps. Facts without such a
    sentence are left out.
    """
    out = []
    for f in facts:
        for sentence in f.evidences:
            if "[MASK]" in sentence and f.subject and f.subject in sentence:
                template = sentence.replace(f.subject, "[X]", 1).replace("[MASK]", "[Y]")
                out.append(replace(f, template=template, evidences=()))
                break
    return out
