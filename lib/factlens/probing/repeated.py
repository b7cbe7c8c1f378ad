"""LAMA P@1 of a fixed sample of facts, measured again and again on a model that changes.

The many-edits chapter measures LAMA P@1 on the same facts after every few edits
(``factlens.editing.sequences.Yardstick``). :class:`RepeatedProbe` says of each fact whether its object
ranks first exactly as :func:`factlens.probing.lama.probe` ranks it (``k=1``, LAMA's common vocabulary,
the same ``rescore`` and ``suffix_tokens``; the same facts skipped), with less work:

* what does not change is prepared once: the cloze prefixes' tokens, the candidates, an inner
  ``[Y]``'s tails;
* prefixes of (nearly) the same length share a batch, so batches carry little padding; each is read
  at its last position only;
* only the candidates' rows of the unembedding are used: every candidate of a fact shares the
  log-normalizer, so their logits rank them as their log-probabilities do;
* an inner ``[Y]`` (:mod:`factlens.probing.ranking`): a fact whose object is not in the shortlist
  (the ``rescore`` best first tokens) does not rank first, whatever the re-scoring; otherwise the
  object's full score is computed and, of the other shortlisted candidates, only those whose bound
  (the first token's score, never below the full score) reaches it;
* a batch's forward pass is recorded (``View.record``): the residual stream entering the lowest block
  whose parameters changed since is the recording's, so only the blocks from there up are run again
  (``View.run_from``); an edit of layer 6 re-runs 12 of Gemma 3 270M's 18 blocks.

The ranking compares logits instead of log-probabilities and the batches differ from the probe's,
so the scores agree to float precision, not bit for bit: a fact whose object ties with another
candidate to the last bit may come out otherwise (the tests compare with the probe).
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from factlens.core.forward import Recording
from factlens.core.models import Model, view
from factlens.core.view import View
from factlens.data import LamaFact
from factlens.probing.cloze import fact_cloze, tail
from factlens.probing.lama import checked_facts
from factlens.probing.ranking import Candidates, continuation_logprobs, vocabulary_tokens


def parameter_blocks(v: View) -> dict[str, int]:
    """Each parameter's block, by name (as ``named_parameters`` names it); -1 outside the blocks
    (embeddings, final norm, unembedding)."""
    owner = {id(p): layer for layer in range(v.n_layers) for p in v.model.blocks[layer].parameters()}
    return {name: owner.get(id(p), -1) for name, p in v.model.named_parameters()}


def lowest_changed_layer(blocks: dict[str, int], before: dict[str, str], now: dict[str, str], n_layers: int) -> int:
    """The lowest block with a parameter whose digest differs between ``before`` and ``now``
    (``View.parameter_digests``): the residual stream entering it is unchanged. ``n_layers`` when no
    parameter changed, 0 when one outside the blocks did (``blocks``: :func:`parameter_blocks`)."""
    changed = [blocks.get(name, -1) for name in before.keys() | now.keys() if before.get(name) != now.get(name)]
    if not changed:
        return n_layers
    return max(min(changed), 0)


def length_batches(lengths: Sequence[int], batch_size: int, slack: int) -> list[list[int]]:
    """Indices grouped by length: sorted, a batch holds at most ``batch_size`` and is at most ``slack``
    tokens longer than its shortest, so that it carries little padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and lengths[i] <= lengths[batches[-1][0]] + slack:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass
class _Recorded:
    """One recorded forward pass of rows, with the parameter digests it was recorded under."""

    recording: Recording
    digests: dict[str, str]


class RecordedRows:
    """Token rows run again and again on a model that changes (a yardstick's prompts, after every few
    edits): the final-normed stream of each row, its forward pass recorded the first time it is asked
    for (rows of nearly the same length share a batch: :func:`length_batches`) and later re-run from the
    lowest block whose parameters changed since (``View.run_from``; all of it when a parameter outside
    the blocks changed, which records the batch again). For one model: another raises ``ValueError``.

    A recording keeps the residual stream entering every block ((layers + 1) × d_model numbers per
    token; not the attention's keys and values, which a re-run of whole rows does not read), on the
    model's device: rows beyond ``max_floats`` numbers in all are run in full each time, not recorded."""

    def __init__(self, batch_size: int = 64, slack: int = 1, max_floats: int = 2**28):
        self.batch_size, self.slack, self.max_floats = batch_size, slack, max_floats
        self.floats = 0
        self.batches: list[_Recorded] = []
        self.where: dict[tuple[int, ...], tuple[int, int]] = {}  # row -> (batch, row in it)
        self.view: weakref.ref | None = None
        self.blocks: dict[str, int] = {}

    def final_hidden(self, v: View, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Each row's final-normed stream [len(row), d_model] on the model as it is now."""
        if self.view is None:
            self.view, self.blocks = weakref.ref(v), parameter_blocks(v)
        elif self.view() is not v:
            raise ValueError("these rows were recorded on another model; use one RecordedRows per model")
        now = v.parameter_digests()
        wanted = list(dict.fromkeys(tuple(r) for r in rows))
        got: dict[tuple[int, ...], torch.Tensor] = {}
        new = [r for r in wanted if r not in self.where]
        for members in length_batches([len(r) for r in new], self.batch_size, self.slack):
            chunk = [new[k] for k in members]
            ids = v.batch(chunk).ids
            size = ids.numel() * (v.n_layers + 1) * v.d_model
            if self.floats + size > self.max_floats:  # over the budget: a full forward pass, not kept
                normed = v.final_hidden(ids)
                got.update((r, normed[k, : len(r)]) for k, r in enumerate(chunk))
                continue
            recording = v.record(ids)
            recording.keys.clear()  # a re-run of whole rows (from position 0) reads neither
            recording.values.clear()
            self.floats += size
            self.batches.append(_Recorded(recording, now))
            normed = v.run_from(recording, v.n_layers)  # the recording is this model's: its final norm
            for k, r in enumerate(chunk):
                self.where[r] = (len(self.batches) - 1, k)
                got[r] = normed[k, : len(r)]
        again: dict[int, list[tuple[int, ...]]] = defaultdict(list)
        for r in wanted:
            if r not in got:
                again[self.where[r][0]].append(r)
        for b, members in again.items():
            kept = self.batches[b]
            layer = lowest_changed_layer(self.blocks, kept.digests, now, v.n_layers)
            if layer == 0:
                kept.recording, kept.digests = v.record(kept.recording.ids), now
                kept.recording.keys.clear()
                kept.recording.values.clear()
                layer = v.n_layers
            index = [self.where[r][1] for r in members]
            whole = index == list(range(kept.recording.n_rows))
            normed = v.run_from(kept.recording, layer, rows=None if whole else index)
            for k, r in enumerate(members):
                got[r] = normed[k, : len(r)]
        return [got[tuple(r)] for r in rows]


class RepeatedProbe:
    """P@1 of ``facts`` (LAMA's common vocabulary), prepared once for ``model`` and measured with
    :meth:`answered_first` as often as the model changes. ``facts`` are the probed facts, in order;
    ``skipped`` the others, with the reason (as :func:`factlens.probing.lama.probe` skips them)."""

    def __init__(self, model: Model, facts: Sequence[LamaFact], *, rescore: int = 10, suffix_tokens: int | None = 8,
                 batch_size: int = 64, slack: int = 1):
        v = view(model)
        self.view = weakref.ref(v)
        self.rescore, self.suffix_tokens, self.batch_size = rescore, suffix_tokens, batch_size
        facts = checked_facts(facts, 1, rescore)
        self.candidates = {space: Candidates.of_tokens(vocabulary_tokens(model, space=space))
                           for space in {fact_cloze(f).space for f in facts}}
        self.facts: list[LamaFact] = []
        self.skipped: list[tuple[LamaFact, str]] = []
        for f in facts:
            space = fact_cloze(f).space
            ids = v.tokenizer((" " if space else "") + f.object, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                self.skipped.append((f, f"object split into {len(ids)} tokens"))
            elif f.object not in self.candidates[space].index:
                self.skipped.append((f, "object not in the common vocabulary as a token"))
            else:
                self.facts.append(f)
        self.clozes = [fact_cloze(f) for f in self.facts]
        self.prefixes = [v.token_ids(c.prefix) for c in self.clozes]
        self.gold = [self.candidates[c.space].index[f.object] for f, c in zip(self.facts, self.clozes)]
        self.rows = RecordedRows(batch_size, slack)
        self._tails: dict[tuple[int, int], list[int]] = {}

    def _continuation(self, v: View, i: int, j: int) -> tuple[list[int], list[int]]:
        """Fact ``i``'s candidate ``j`` as ranking scores it: (prefix and the candidate's first token,
        the rest of the candidate and the tail up to ``suffix_tokens``)."""
        cands = self.candidates[self.clozes[i].space]
        if (i, j) not in self._tails:
            text = tail(self.clozes[i], cands.words[j], False)
            ids = v.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            self._tails[i, j] = cands.ids[j][1:] + ids[: self.suffix_tokens]
        return self.prefixes[i] + cands.ids[j][:1], self._tails[i, j]

    def _scores(self, v: View, pairs: list[tuple[int, int]]) -> list[float]:
        """log P(what follows the first token | ...) of each (fact, candidate), batched by length."""
        rows = [self._continuation(v, i, j) for i, j in pairs]
        out = [0.0] * len(rows)
        for members in length_batches([len(p) + len(c) for p, c in rows], self.batch_size, 2):
            lps = continuation_logprobs(v, [rows[k][0] for k in members], [rows[k][1] for k in members])
            for k, lp in zip(members, lps.tolist()):
                out[k] = lp
        return out

    def _hidden(self, v: View) -> torch.Tensor:
        """The final-normed stream at each fact's prefix's last position: [n, d_model]."""
        return torch.stack([h[-1] for h in self.rows.final_hidden(v, self.prefixes)])

    def _inner_first(self, v: View, inner: list[int], bounds: list[torch.Tensor],
                     shortlists: dict[int, list[int]]) -> list[bool]:
        """Whether each inner-[Y] fact's object, in its shortlist, comes first once the shortlist is
        re-ordered by the full score (as ``ranking._Shortlist.ranked`` orders it). Scored first: the object
        and the candidate with the best bound besides it, which decides most facts; then, where the object
        is still ahead, every other candidate whose bound reaches the object's full score (a candidate
        whose bound is below it is behind it: a full score is never above its bound)."""
        full: dict[int, dict[int, float]] = {i: {} for i in inner}

        def score(pairs: list[tuple[int, int]]) -> None:
            for (i, j), lp in zip(pairs, self._scores(v, pairs) if pairs else []):
                full[i][j] = float(bounds[i][j]) + lp

        def ahead(i: int) -> bool:  # the object first among the candidates scored so far
            return sorted(shortlists[i], key=lambda j: -full[i].get(j, -np.inf))[0] == self.gold[i]

        score([(i, j) for i in inner
               for j in [self.gold[i], *[j for j in shortlists[i] if j != self.gold[i]][:1]]])
        score([(i, j) for i in inner if ahead(i) for j in shortlists[i]
               if j not in full[i] and float(bounds[i][j]) >= full[i][self.gold[i]]])
        return [ahead(i) for i in inner]

    @torch.no_grad()
    def answered_first(self, model: Model) -> np.ndarray:
        """Whether each of :attr:`facts` ranks its object first on ``model`` as it is now: [n] bool."""
        v = view(model)
        if self.view() is not v:
            raise ValueError("this RepeatedProbe was prepared for another model; prepare one per model")
        hidden = self._hidden(v)
        weight, bias = v.model.unembed.W_U.T, v.model.unembed.b_U
        bounds: list[torch.Tensor] = [torch.empty(0)] * len(self.facts)
        for space, cands in self.candidates.items():
            rows = [i for i, c in enumerate(self.clozes) if c.space == space]
            if rows:
                ids = cands.first.to(v.device)
                logits = torch.addmm(bias[ids], hidden[torch.tensor(rows, device=v.device)], weight[ids].T)
                for i, row in zip(rows, logits.float().cpu()):
                    bounds[i] = row
        first = np.zeros(len(self.facts), bool)
        shortlists, inner = {}, []
        for i, (c, bound, gold) in enumerate(zip(self.clozes, bounds, self.gold)):
            shortlist = bound.topk(min(self.rescore, len(bound))).indices.tolist()
            if c.final:  # every candidate is one token: its score is its bound
                first[i] = sorted(shortlist, key=lambda j: -float(bound[j]))[0] == gold
            elif gold in shortlist:  # otherwise the object is not first, whatever the re-scoring
                shortlists[i] = shortlist
                inner.append(i)
        if inner:
            first.put(inner, self._inner_first(v, inner, bounds, shortlists))
        return first
