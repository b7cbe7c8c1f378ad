"""Feed-forward layers as key-value memories (Geva et al. 2021), measured without annotators.

Geva et al. read a feed-forward layer as a memory (their eq. 2)::

    FF(x) = f(x K^T) V = sum_i m_i v_i,        m_i = f(x . k_i)

Key ``k_i`` detects a pattern in the input prefix, the coefficient ``m_i`` says how strongly,
and the value ``v_i`` (row ``i`` of the MLP output matrix) is added to the output with weight
``m_i``. In a gated MLP (Gemma, Llama) the coefficient is ``m_i = act(x . g_i) * (x . k_i)``:
the key is the pair (gate row, input row); the values are still the rows of the output
matrix. ``factlens.core.view.View.key_hook`` reads ``m`` for every architecture.

The module follows the paper's sections:

* triggers (section 3.1): :func:`trigger_search`/:func:`top_triggers` stream a corpus once and
  keep, per key, the ``k`` prefixes with the highest coefficient (what the triggers share, and
  which token makes a key fire, section 3.2, is in :mod:`factlens.memories.patterns`);
* values (section 4): :func:`value_logits` projects a value to the vocabulary (the one place
  that decides how: Geva's ``v_i E``, or the labelled variant through the model's norms),
  :func:`value_tokens` gives the token every value of a layer promotes with either sign of its
  coefficient (cached), :func:`value_agreement` compares a value's top token with the next
  token of its key's top trigger;
* one prediction: :func:`strongest_memories`, the memories that add the most at a prompt's
  last token, and what they promote.

Section 5 (aggregating memories: composition within a layer, refinement across layers) is in
:mod:`factlens.memories.aggregation`.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from factlens.core.cache import cached_tensors
from factlens.core.models import Model, view
from factlens.core.view import Batch, View

# --------------------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    """Tokenized texts (BOS first). A prefix is ``(text, position)``: the tokens ``1..position``.

    Position 0 is the BOS token and is never a prefix on its own.
    """

    texts: list[str]
    ids: list[list[int]]
    name: str = "corpus"

    @classmethod
    def from_texts(cls, model: Model, texts: Sequence[str], max_tokens: int = 32, name: str = "corpus") -> Corpus:
        v = view(model)
        texts = [t for t in texts if t.strip()]
        ids = [v.token_ids(t)[:max_tokens] for t in texts]
        keep = [i for i, r in enumerate(ids) if len(r) >= 2]
        if not keep:
            raise ValueError("the corpus holds no text of at least one token; give non-empty texts")
        return cls([texts[i] for i in keep], [ids[i] for i in keep], name)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_prefixes(self) -> int:
        return sum(len(r) - 1 for r in self.ids)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for r in self.ids:
            h.update(str(r).encode())
        return h.hexdigest()[:16]

    def prefix(self, text: int, position: int) -> list[int]:
        return self.ids[text][: position + 1]

    def next_token(self, text: int, position: int) -> int | None:
        row = self.ids[text]
        return row[position + 1] if position + 1 < len(row) else None

    def random_prefixes(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` prefixes drawn uniformly from all prefixes, as a [n, 2] tensor of (text, position)."""
        rng = random.Random(seed)
        all_prefixes = [(t, p) for t, r in enumerate(self.ids) for p in range(1, len(r))]
        return torch.tensor(rng.sample(all_prefixes, min(n, len(all_prefixes))), dtype=torch.long)

    def next_token_frequency(self) -> Counter:
        """How often each token is the next token of a prefix (the chance baseline of section 4)."""
        return Counter(t for r in self.ids for t in r[2:])


def wikitext_sentences(n: int, name: str = "wikitext", split: str = "valid", min_words: int = 5,
                       seed: int = 0) -> list[str]:
    """``n`` sentences of a WikiText split (``factlens.data.corpus``: detokenized, headings and
    sentences with ``<unk>`` left out), shuffled with ``seed``; sentences under ``min_words``
    words are dropped. Geva et al. take prefixes of training-set sentences (WikiText-103 train).
    """
    from factlens.data import corpus

    sentences = [s.strip() for s in corpus(name, split) if len(s.split()) >= min_words]
    random.Random(seed).shuffle(sentences)
    return sentences[:n]


def sample_keys(model: Model, n_keys: int, layers: Iterable[int] | None = None, seed: int = 0) -> dict[int, list[int]]:
    """``n_keys`` random key indices per layer (the paper samples 10 per layer), seeded."""
    v = view(model)
    rng = random.Random(seed)
    layers = range(v.n_layers) if layers is None else layers
    return {l: sorted(rng.sample(range(v.d_mlp), n_keys)) for l in layers}


# --------------------------------------------------------------------------- triggers


@dataclass
class Triggers:
    """The top-``k`` trigger prefixes of some keys of one layer, best first.

    ``coefficient``, ``text``, ``position``: [n_keys, k]; ``representation``: [n_keys, k, d_model],
    the residual stream after ``representation_layer`` at the prefix's last token ([n_keys, k, 0]
    for ``TriggerSearch.every_key``, which keeps none).
    """

    layer: int
    keys: list[int]
    coefficient: torch.Tensor
    text: torch.Tensor
    position: torch.Tensor
    representation: torch.Tensor


@dataclass
class TriggerSearch:
    """The result of one pass over a corpus: triggers per layer, and random prefixes as a null.

    ``every_key``: when asked for (``every_key_top``), the top triggers of every key of the
    searched layers (no representations), from the same pass.
    """

    triggers: dict[int, Triggers]
    random_prefixes: torch.Tensor  # [n, 2] (text, position)
    random_representation: torch.Tensor  # [n, d_model]
    mean_representation: torch.Tensor  # [d_model], over every prefix of the corpus
    representation_layer: int
    every_key: dict[int, Triggers] = field(default_factory=dict)


def trigger_search(
    model: Model,
    keys: Mapping[int, Sequence[int]],
    corpus: Corpus,
    k: int = 25,
    *,
    batch_size: int = 32,
    representation_layer: int | None = None,
    n_random: int = 500,
    every_key_top: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> TriggerSearch:
    """For each layer's keys, the ``k`` prefixes of ``corpus`` with the highest coefficient m_i.

    Geva et al. section 3.1: the trigger examples of key k_i are the training prefixes x
    with the largest m_i = f(x . k_i). The corpus is streamed in batches; per key only a
    running top-``k`` is kept, with the prefix's representation (the residual stream after
    ``representation_layer``) for :func:`factlens.memories.patterns.pattern_scores`, so memory
    does not grow with the corpus. ``every_key_top``: also keep the top triggers of every key of
    the searched layers (``search.every_key``; what section 4 reads for every value), from the
    same pass. Cached by model, keys, corpus and sizes.
    """
    v = view(model)
    for layer, ks in keys.items():
        v.check_layer(layer)
        if not ks or min(ks) < 0 or max(ks) >= v.d_mlp:
            raise IndexError(f"keys of layer {layer} must be in 0..{v.d_mlp - 1}, got {list(ks)}")
    if k > corpus.n_prefixes:
        raise ValueError(f"k={k} is more than the corpus's {corpus.n_prefixes} prefixes; use a larger corpus")
    rep_layer = v.n_layers // 2 if representation_layer is None else v.check_layer(representation_layer)
    key = {"model": v.name, "keys": {str(l): list(ks) for l, ks in keys.items()}, "corpus": corpus.digest,
           "k": k, "representation_layer": rep_layer, "n_random": n_random, "seed": seed}
    if every_key_top:
        key["every_key_top"] = every_key_top

    def build() -> dict[str, torch.Tensor]:
        return _stream_triggers(v, keys, corpus, k=k, batch_size=batch_size, rep_layer=rep_layer,
                                randoms=corpus.random_prefixes(n_random, seed), every_key_top=every_key_top,
                                progress=progress)

    t = cached_tensors("memories-triggers", key, build)
    triggers = {
        l: Triggers(l, list(ks), t[f"{l}.coefficient"], t[f"{l}.text"], t[f"{l}.position"], t[f"{l}.representation"])
        for l, ks in keys.items()
    }
    every_key = {
        l: Triggers(l, list(range(v.d_mlp)), t[f"{l}.every.coefficient"], t[f"{l}.every.text"],
                    t[f"{l}.every.position"], t[f"{l}.every.representation"])
        for l in keys if every_key_top
    }
    return TriggerSearch(triggers, t["random_prefixes"], t["random_representation"], t["mean_representation"],
                         rep_layer, every_key)


def top_triggers(model: Model, layer: int, keys: Sequence[int], corpus: Corpus, k: int = 25, **kwargs) -> Triggers:
    """The top-``k`` triggers of ``keys`` in one layer (see :func:`trigger_search`)."""
    return trigger_search(model, {layer: keys}, corpus, k, **kwargs).triggers[layer]


@dataclass
class _BatchPrefixes:
    """The prefixes of one batch of corpus texts, flattened to rows ``i * t + position``.

    ``valid`` [b*t]: the row is a prefix (a real token after BOS); ``where`` [b*t, 2]: its
    (text, position) in the corpus.
    """

    valid: torch.Tensor
    where: torch.Tensor

    @classmethod
    def of(cls, batch: Batch, first_text: int) -> _BatchPrefixes:
        b, t = batch.ids.shape
        device = batch.ids.device
        pos = torch.arange(t, device=device)
        lengths = batch.lengths.to(device)
        valid = (pos[None] >= 1) & (pos[None] < lengths[:, None])
        texts = (first_text + torch.arange(b, device=device))[:, None].expand(b, t)
        return cls(valid.reshape(-1), torch.stack([texts, pos[None].expand(b, t)], -1).reshape(-1, 2))

    def rows_of(self, prefixes: torch.Tensor, first_text: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Which of ``prefixes`` ([n, 2] (text, position)) fall in this batch, and their flattened rows."""
        n_texts = len(self.valid) // width
        inside = (prefixes[:, 0] >= first_text) & (prefixes[:, 0] < first_text + n_texts)
        return inside, (prefixes[inside, 0] - first_text) * width + prefixes[inside, 1]


@dataclass
class _RunningTop:
    """The ``k`` best prefixes seen so far for each key of one layer, best first.

    ``coefficient`` [n_keys, k]; ``where`` [n_keys, k, 2] (text, position); ``representation``
    [n_keys, k, d_model].
    """

    coefficient: torch.Tensor
    where: torch.Tensor
    representation: torch.Tensor

    @classmethod
    def empty(cls, n_keys: int, k: int, d_model: int, device: torch.device) -> _RunningTop:
        return cls(torch.full((n_keys, k), -torch.inf, device=device),
                   torch.full((n_keys, k, 2), -1, dtype=torch.long, device=device),
                   torch.zeros(n_keys, k, d_model, device=device))

    def update(self, m: torch.Tensor, where: torch.Tensor, representation: torch.Tensor) -> None:
        """Merge a batch: ``m`` [n_keys, n] the coefficients of its ``n`` prefixes (-inf where no
        prefix), ``where`` [n, 2] and ``representation`` [n, d_model] of those prefixes."""
        k = self.coefficient.shape[1]
        values = torch.cat([self.coefficient, m], 1)
        top = values.topk(k, dim=1).indices  # < k: a prefix kept from before; >= k: prefix top - k of the batch
        self.coefficient = values.gather(1, top)
        self.where = _kept_or_new(self.where, where, top)
        self.representation = _kept_or_new(self.representation, representation, top)


def _kept_or_new(kept: torch.Tensor, new: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Row ``top[i, j]`` of the concatenation [kept[i], new] for every key i and rank j, without
    building the concatenation (``new`` is shared by every key): kept [n_keys, k, ...], new [n, ...]."""
    k = kept.shape[1]
    is_kept = (top < k).reshape(*top.shape, *([1] * (kept.dim() - 2)))
    old = top.clamp(max=k - 1).reshape(*top.shape, *([1] * (kept.dim() - 2))).expand(-1, -1, *kept.shape[2:])
    return torch.where(is_kept, kept.gather(1, old), new[(top - k).clamp(min=0)])


@torch.no_grad()
def _stream_triggers(v: View, keys: Mapping[int, Sequence[int]], corpus: Corpus, *, k: int, batch_size: int,
                     rep_layer: int, randoms: torch.Tensor, every_key_top: int,
                     progress: bool) -> dict[str, torch.Tensor]:
    """One pass over ``corpus``: each key's running top-``k`` with the triggers' representations
    (:class:`_RunningTop`), every key's top-``every_key_top`` without them (when asked), the
    representation of the ``randoms`` prefixes, and the mean representation of all prefixes."""
    rep_hook = v.resid_post_hook(rep_layer)
    hooks = {l: v.key_hook(l) for l in keys}
    index = {l: torch.tensor(ks, device=v.device) for l, ks in keys.items()}
    tops = {l: _RunningTop.empty(len(ks), k, v.d_model, v.device) for l, ks in keys.items()}
    every = {l: _RunningTop.empty(v.d_mlp, every_key_top, 0, v.device) for l in keys if every_key_top}
    random_rep = torch.zeros(len(randoms), v.d_model)
    rep_sum, n_seen = torch.zeros(v.d_model, device=v.device), 0

    for start in tqdm(range(0, len(corpus), batch_size), desc="trigger search", disable=not progress):
        batch = v.batch(corpus.ids[start : start + batch_size])
        prefixes = _BatchPrefixes.of(batch, start)
        acts = v.capture(batch.ids, [*hooks.values(), rep_hook])
        rep = acts[rep_hook].reshape(prefixes.valid.shape[0], -1)
        rep_sum += rep[prefixes.valid].sum(0)
        n_seen += int(prefixes.valid.sum())
        inside, rows = prefixes.rows_of(randoms, start, batch.ids.shape[1])
        random_rep[inside] = rep[rows.to(v.device)].cpu()
        for l, hook in hooks.items():
            m = acts[hook].reshape(len(prefixes.valid), -1).T.masked_fill(~prefixes.valid[None], -torch.inf)
            tops[l].update(m[index[l]], prefixes.where, rep)  # m: [d_mlp, b*t]
            if l in every:
                every[l].update(m, prefixes.where, rep[:, :0])

    out = {"random_prefixes": randoms, "random_representation": random_rep,
           "mean_representation": (rep_sum / max(n_seen, 1)).cpu()}
    named = [*((f"{l}", top) for l, top in tops.items()), *((f"{l}.every", top) for l, top in every.items())]
    for name, found in named:
        out[f"{name}.coefficient"] = found.coefficient.cpu()
        out[f"{name}.text"] = found.where[..., 0].cpu()
        out[f"{name}.position"] = found.where[..., 1].cpu()
        out[f"{name}.representation"] = found.representation.cpu()
    return out


@torch.no_grad()
def key_coefficients(model: Model, layer: int, key: int, ids: Sequence[int]) -> torch.Tensor:
    """The coefficient m_key at every position of one token sequence: [t]."""
    v = view(model)
    hook = v.key_hook(layer)
    return v.capture(v.batch([ids]).ids, [hook])[hook][0, :, key].cpu()


# --------------------------------------------------------------------------- layers


def nanmean(xs: Sequence[float]) -> float:
    """The mean of ``xs`` with NaN left out (NaN when nothing is left)."""
    return float(torch.tensor(list(xs), dtype=torch.float64).nanmean())


def layer_mean(series: Mapping[int, float]) -> float:
    """The mean of a ``{layer: value}`` series over its layers, NaN layers left out (NaN if all are)."""
    return nanmean(list(series.values()))


def paper_layer_split(n_layers: int, paper_first_upper: int, paper_layers: int = 16) -> int:
    """The first upper layer (0-based) of an ``n_layers`` model for a split that Geva et al. make at
    layer ``paper_first_upper`` (1-based) of their 16: the same relative depth,
    ``round((paper_first_upper - 1) / paper_layers * n_layers)``. Their value agreement counts
    layers 11-16 as upper (``paper_first_upper=11``: layer 11 of 18, 0-based); their patterns
    are shallow in layers 1-9 and semantic in 10-16 (``paper_first_upper=10``)."""
    if not 1 <= paper_first_upper <= paper_layers:
        raise ValueError(f"paper_first_upper must be in 1..{paper_layers}, got {paper_first_upper}")
    return round((paper_first_upper - 1) / paper_layers * n_layers)


def lower_upper(series: Mapping[int, float], n_layers: int, first_upper: int | None = None) -> tuple[float, float]:
    """The mean of a ``{layer: value}`` series over the lower layers and over the upper ones
    (``first_upper`` and above; default: the upper half, ``n_layers // 2``), NaN left out."""
    split = n_layers // 2 if first_upper is None else first_upper
    return (layer_mean({l: x for l, x in series.items() if l < split}),
            layer_mean({l: x for l, x in series.items() if l >= split}))


def prefix_text(model: Model, corpus: Corpus, text: int, position: int) -> str:
    """A prefix as text, cut to its last 60 characters (the trigger is at its end)."""
    words = view(model).tokenizer.decode(corpus.ids[text][1 : position + 1])
    return "…" + words[-60:] if len(words) > 60 else words
