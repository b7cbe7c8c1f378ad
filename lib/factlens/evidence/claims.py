"""Our claims about the papers' numbers: a value with its interval and n, and a verdict by one rule.

:class:`Claim` is one headline claim of a chapter: a one-sentence statement, the paper's number
(``factlens.evidence.papers``, with its tolerance τ), ours with ``n`` (the units that replicate)
and a 95% interval (``factlens.evidence.stats``), and a verdict by :data:`VERDICT_RULE`, which
:func:`assess` implements. Chapters make claims with ``factlens.evidence.results.Run.claim``; the
Claims page collects them (:func:`claims_frame`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from factlens.evidence.papers import PaperNumber, paper

Verdict = Literal["reproduced", "partly", "not reproduced", "inconclusive"]
VERDICTS: tuple[str, ...] = ("reproduced", "partly", "not reproduced", "inconclusive")
Statistic = Literal["mean", "max", "argmax"]

MIN_N = 20  # fewer units than this: inconclusive (VERDICT_RULE)

VERDICT_RULE = """\
A claim compares our number, with its 95% interval [lo, hi] over n units that replicate (edits,
CounterFact cases, facts, keys; never rows under one edit), with the paper's number p, whose
tolerance τ (the smallest difference that matters) stands beside it in the papers' registry
with its reason (factlens.evidence.papers).

Inconclusive whatever the interval:
  n below 20 (MIN_N): an interval over so few units undercovers;
  a maximum or an argmax (over layers) with a percentile bootstrap interval: biased, no verdict.

A value claim (ours should equal the paper's; an equivalence test against the band p ± τ):
  reproduced      the interval lies within p ± τ;
  partly          the interval lies wholly outside p ± τ, and wholly on the paper's side of the
                  claim's reference (chance, the baseline, the unedited model): the effect is
                  there, its size is not (smaller or larger, said beside the verdict);
  not reproduced  the interval lies wholly outside p ± τ and not wholly on the paper's side of the
                  reference (or the claim has none);
  inconclusive    otherwise: the interval reaches over an edge of the band.
An ordering claim (ours is a difference A - B; the paper found A > B, or a difference p with its
sign; "above" means on the paper's side):
  reproduced      the interval lies above τ: the ordering holds by more than the smallest
                  difference that matters; its size beside the paper's p: smaller, similar (the
                  interval meets p ± τ) or larger (none when the paper gives a direction only);
  partly          the interval lies above 0 and reaches past τ, but does not lie above τ;
  not reproduced  the interval lies below 0 (reversed), or within ±τ of 0 (no difference that
                  matters, where the paper found one);
  inconclusive    otherwise: the interval holds 0 and reaches past ±τ.

The rule is monotone in the evidence: narrowing an interval around the same estimate never
makes a verdict inconclusive, and widening it never makes one reproduced. An inconclusive claim
states the n that would settle it: its interval, shrunk around the same estimate as 1/√n, lies
within the band or wholly outside it (a value), or above 0, below 0 or within ±τ of 0 (an
ordering), at that n (and n is at least 20).
"""


@dataclass(frozen=True)
class Assessment:
    """What :data:`VERDICT_RULE` says of one interval: the verdict; ``size`` (a value wholly outside
    p ± τ: "smaller" or "larger"; an ordering that holds, against the paper's p: "smaller", "similar"
    or "larger"; "" otherwise); ``n_to_settle`` (inconclusive: the n that would settle it, None when
    no n does); ``why`` (inconclusive: the reason in words)."""

    verdict: Verdict
    size: str = ""
    n_to_settle: int | None = None
    why: str = ""


def _n_at(n: int, half: float, margin: float) -> int | None:
    """The n at which a half-width ``half`` over ``n`` units, shrunk as 1/√n, falls below ``margin``."""
    if margin <= 0:
        return None
    return max(MIN_N, math.floor(n * (half / margin) ** 2) + 1)


def assess(kind: str, paper_value: float | None, low: float, high: float, *, tau: float, n: int,
           reference: float | None = None, statistic: Statistic = "mean") -> Assessment:
    """The verdict of :data:`VERDICT_RULE` for an interval ``[low, high]`` over ``n`` units against the
    paper's value (``None``: the paper gives a direction only, A > B, and ours is A - B) with tolerance
    ``tau``; ``reference`` is a value claim's no-effect value, ``statistic`` what ours is."""
    if not low <= high:
        raise ValueError(f"an interval needs low <= high, got [{low}, {high}]")
    if not tau > 0:
        raise ValueError(f"τ must be positive, got {tau}")
    if kind not in ("value", "ordering"):
        raise ValueError(f"kind must be 'value' or 'ordering', got {kind!r}")
    if statistic not in ("mean", "max", "argmax"):
        raise ValueError(f"statistic must be 'mean', 'max' or 'argmax', got {statistic!r}")
    if kind == "value" and paper_value is None:
        raise ValueError("a value claim needs the paper's value; a direction-only number backs an ordering")
    if kind == "ordering" and paper_value == 0:
        raise ValueError("an ordering claim needs the paper's difference to have a sign")
    if statistic != "mean":
        return Assessment("inconclusive", why=f"a percentile bootstrap of the {statistic} over layers is biased: "
                                              "no verdict at any n (the claim needs another statistic)")
    centre, half = (low + high) / 2, (high - low) / 2
    settled: Verdict | None = None  # None: inconclusive by the interval
    if kind == "value":
        band_low, band_high = paper_value - tau, paper_value + tau
        outside = high < band_low or low > band_high
        size = ("smaller" if high < band_low else "larger") if outside else ""
        if band_low <= low and high <= band_high:
            settled = "reproduced"
        elif outside:
            same_side = reference is not None and paper_value != reference and (
                low > reference if paper_value > reference else high < reference)
            settled = "partly" if same_side else "not reproduced"
        margin, why = abs(tau - abs(centre - paper_value)), "the interval reaches over an edge of the paper's ± τ"
    else:
        sign = 1.0 if paper_value is None else math.copysign(1.0, paper_value)
        a, b = sorted((sign * low, sign * high))  # the interval read on the paper's side
        size = ""
        if a > 0 and b > tau and paper_value is not None:  # reproduced or partly: the ordering holds
            p = abs(paper_value)
            size = "smaller" if b < p - tau else "larger" if a > p + tau else "similar"
        if a > tau:
            settled = "reproduced"
        elif b < 0 or (-tau <= a and b <= tau):
            settled = "not reproduced"
        elif a > 0:
            settled = "partly"
        margin, why = max(abs(centre), tau - abs(centre)), "the interval holds 0 and reaches past ± τ"
    if n < MIN_N:
        return Assessment("inconclusive", "", _n_at(n, half, margin) if settled is None else MIN_N,
                          f"n = {n} is below {MIN_N}" + ("" if settled is not None else f"; {why}"))
    if settled is None:
        return Assessment("inconclusive", "", _n_at(n, half, margin), why)
    return Assessment(settled, size)


def _fmt(x: float) -> str:
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
    return f"{x:.2e}"


CLAIMS_PAGE = "claims.ipynb"  # the Claims page, beside the chapters' folders under chapters/


def anchor(full_id: str) -> str:
    """The id of a claim's row on the Claims page: ``"claim-"`` and the claim's full id
    (``<chapter>.<id>``) in lower case, every run of other characters than letters and digits a
    hyphen: ``"rome.counterfact.ES.ROME"`` -> ``"claim-rome-counterfact-es-rome"``.

    Prose names a claim with a markdown link to that row, the book's one link form::

        [claim rome.counterfact.ES.ROME](../claims.ipynb#claim-rome-counterfact-es-rome)

    (the path relative to the page that links; ``tests/test_prose.py`` checks every such link, and
    ``factlens.book.anchors`` makes Sphinx resolve the anchor)."""
    return "claim-" + re.sub(r"[^a-z0-9]+", "-", full_id.lower()).strip("-")


def claim_link(full_id: str, page: str = f"../{CLAIMS_PAGE}") -> str:
    """The markdown link that names a claim in prose (see :func:`anchor`)."""
    return f"[claim {full_id}]({page}#{anchor(full_id)})"


@dataclass
class Claim:
    """One headline claim of a chapter, with our number, its interval, and a verdict by :data:`VERDICT_RULE`.

    ``paper`` is a :class:`~factlens.evidence.papers.PaperNumber` (or its id), which brings the
    tolerance τ; ``ours`` our value (for an ordering claim the difference A − B, and the paper's
    value its difference, whose sign matters, or a direction "A > B"); ``ci`` its 95% interval;
    ``n`` the units that replicate (edits, cases, facts, keys); ``reference`` the no-effect value for
    a value claim's ``partly``; ``statistic`` what ours is ("mean": a mean, a proportion or a smooth
    function of means; "max", "argmax": over layers, which the rule refuses); ``protocol`` how our
    computation differs from the paper's (empty when like for like). The rule sets ``verdict``,
    ``size``, ``n_to_settle`` and ``why`` (:class:`Assessment`).
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
    reference: float | None = None
    protocol: str = ""
    statistic: Statistic = "mean"
    verdict: Verdict = field(init=False)
    size: str = field(init=False)
    n_to_settle: int | None = field(init=False)
    why: str = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.paper, str):
            self.paper = paper(self.paper)
        if self.paper.tau is None:
            raise ValueError(f"claim {self.id!r}: the paper's number ({self.paper.source}) is a setting with no τ; "
                             "a claim needs a result with its tolerance (factlens.evidence.papers)")
        if self.n < 1:
            raise ValueError(f"claim {self.id!r}: n must be at least 1, got {self.n}")
        low, high = map(float, self.ci)
        self.ci = (low, high)
        try:
            found = assess(self.kind, self.paper.value, low, high, tau=self.paper.tau, n=self.n,
                           reference=self.reference, statistic=self.statistic)
        except ValueError as error:
            raise ValueError(f"claim {self.id!r}: {error}") from None
        self.verdict, self.size, self.n_to_settle, self.why = found.verdict, found.size, found.n_to_settle, found.why

    @property
    def full_id(self) -> str:
        """``<chapter>.<id>``: the name prose uses for the claim (``"lama.trex_left_context"``)."""
        return f"{self.chapter}.{self.id}"

    @property
    def anchor(self) -> str:
        """The id of the claim's row on the Claims page (:func:`anchor`)."""
        return anchor(self.full_id)

    @property
    def paper_shown(self) -> str:
        """The paper's number as the tables show it: its value, or its direction "A > B"; a
        hypothesis of this book's, not a paper's result, says so."""
        shown = self.paper.direction or _fmt(self.paper.value)
        return f"{shown} (our hypothesis)" if self.paper.ours else shown

    def sentence(self) -> str:
        """The claim in one sentence, with both numbers and the verdict (the prose uses this)."""
        low, high = self.ci
        differs = f"; {self.protocol}" if self.protocol else ""
        size = f" ({self.size})" if self.size else ""
        settle = f"; n = {self.n_to_settle} would settle it" if self.n_to_settle is not None else ""
        return (f"{self.statement}: ours {_fmt(self.ours)} [{_fmt(low)}, {_fmt(high)}] (n = {self.n}), "
                f"the paper {self.paper_shown}, τ = {_fmt(self.paper.tau)} ({self.paper.source}){differs}: "
                f"**{self.verdict}**{size}{settle}.")

    def to_record(self) -> dict[str, Any]:
        """The record of ``claims.json``: ``{chapter, id, statement, model, paper: {value, source,
        direction}, ours: {value, n, ci}, verdict, size, n_to_settle, kind, tau, tau_reason, reference,
        statistic, protocol}`` (a direction-only number's value is null)."""
        return {"chapter": self.chapter, "id": self.id, "statement": self.statement, "model": self.model,
                "paper": {"value": self.paper.value, "source": self.paper.source, "direction": self.paper.direction},
                "ours": {"value": self.ours, "n": self.n, "ci": list(self.ci)},
                "verdict": self.verdict, "size": self.size, "n_to_settle": self.n_to_settle, "kind": self.kind,
                "tau": self.paper.tau, "tau_reason": self.paper.tau_reason, "reference": self.reference,
                "statistic": self.statistic, "protocol": self.protocol}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Claim:
        """A claim read back from a results file (the verdict is recomputed, and must agree)."""
        if "tau" not in record:
            raise ValueError(f"claim {record.get('id')!r}: the record has no τ: an older factlens wrote it; "
                             "run its chapter again")
        source = record["paper"]
        number = PaperNumber(source["value"], source["source"], "", "", record["tau"], record["tau_reason"],
                             direction=source.get("direction", ""))
        claim = cls(record["chapter"], record["id"], record["statement"], record["model"], number,
                    record["ours"]["value"], tuple(record["ours"]["ci"]), record["ours"]["n"],
                    record.get("kind", "value"), record.get("reference"), record.get("protocol", ""),
                    record.get("statistic", "mean"))
        if claim.verdict != record["verdict"]:
            raise ValueError(f"claim {record['id']!r}: stored verdict {record['verdict']!r} is not what the "
                             f"rule gives ({claim.verdict!r}); the results file is stale or edited")
        return claim


FRAME_COLUMNS = ("chapter", "claim", "statement", "paper", "τ", "τ's reason", "source", "ours [95% interval]", "n",
                 "verdict", "size", "n to settle", "why", "how it differs")


FOREST_COLUMNS = ("chapter", "claim", "model", "kind", "ours", "low", "high", "paper", "tau", "reference", "verdict")


def forest_frame(claims: Sequence[Claim]):
    """The numbers a forest plot draws (``factlens.show.plots.plot_forest``), one row per claim and
    model, with the columns of :data:`FOREST_COLUMNS`: ``claim`` the full id, ``paper`` the paper's
    value (NaN for a direction), ``tau`` its τ, ``reference`` a value claim's no-effect value (NaN if none)."""
    import pandas as pd

    rows = [(c.chapter, c.full_id, c.model, c.kind, c.ours, c.ci[0], c.ci[1],
             math.nan if c.paper.value is None else c.paper.value, c.paper.tau,
             math.nan if c.reference is None else c.reference, c.verdict) for c in claims]
    return pd.DataFrame(rows, columns=list(FOREST_COLUMNS))


def claims_frame(claims: Sequence[Claim]):
    """A table of claims (pandas), one row each, with the columns of :data:`FRAME_COLUMNS` (also when
    there is no claim): the paper's number shows its value or its direction, "n to settle" and "why"
    are filled for inconclusive claims."""
    import pandas as pd

    rows = [(c.chapter, c.id, c.statement, c.paper_shown, _fmt(c.paper.tau), c.paper.tau_reason, c.paper.source,
             f"{_fmt(c.ours)} [{_fmt(c.ci[0])}, {_fmt(c.ci[1])}]", c.n, c.verdict, c.size,
             "" if c.n_to_settle is None else str(c.n_to_settle), c.why, c.protocol) for c in claims]
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
