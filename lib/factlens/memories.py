"""Feed-forward layers as key-value memories (Geva et al. 2021), measured without annotators.

Geva et al. read a feed-forward layer as a memory (their eq. 2)::

    FF(x) = f(x K^T) V = sum_i m_i v_i,        m_i = f(x . k_i)

Key ``k_i`` detects a pattern in the input prefix, the coefficient ``m_i`` says how strongly,
and the value ``v_i`` (row ``i`` of the MLP output matrix) is added to the output with weight
``m_i``. In a gated MLP (Gemma, Llama) the coefficient is ``m_i = act(x . g_i) * (x . k_i)``:
the key is the pair (gate row, input row); the values are still the rows of the output
matrix. ``factlens.models.View.key_hook`` reads ``m`` for every architecture.

The module follows the paper's sections:

* triggers (section 3): :func:`trigger_search`/:func:`top_triggers` stream a corpus once and keep,
  per key, the ``k`` prefixes with the highest coefficient; :func:`pattern_scores` replaces
  the human annotators by two automatic measures (shallow: shared last token / bigram;
  semantic: similarity of the prefixes in the model's own residual stream, surface-identical
  pairs removed), each against random prefixes; :func:`removal_drops` removes a token;
* values (section 4): :func:`value_logits` projects a value to the vocabulary (the one place
  that decides how), :func:`value_agreement` compares its top token with the next token of
  the key's triggers;
* aggregation (section 5): :func:`read_layers` reads, per layer, the memories and the
  residual's predictions; :func:`composition_counts` and :func:`refinement_counts` turn them
  into the paper's fractions.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from factlens.cache import cached_tensors
from factlens.models import view

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# The paper's numbers (Geva et al. 2021, 16-layer LM on WikiText-103, 4,096 memories per layer)
GEVA2021 = {
    "patterns_per_key": 3.6,  # human-annotated patterns among a key's top-25 triggers
    "value_agreement_upper": 0.035,  # top value token == next token of top trigger, layers 11-16
    "value_agreement_lower": 0.0,  # layers 1-10: almost never
    "max_precision_at_50": 0.92,
    "active_fraction": (0.10, 0.50),  # memories with a positive coefficient, per input
    "composition_min": 0.68,  # layer top prediction differs from every memory's
    "early_final_fraction": 1 / 3,  # final prediction already on top in the first layers
}


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
    def from_texts(cls, model: TransformerBridge, texts: Sequence[str], max_tokens: int = 32, name: str = "corpus") -> Corpus:
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
    """``n`` sentences of a WikiText split (``factlens.data.corpus``), shuffled with ``seed``.

    Geva et al. take prefixes of training-set sentences (WikiText-103 train); headings and
    sentences under ``min_words`` words are dropped.
    """
    from factlens.data import corpus

    sentences = []
    for paragraph in corpus(name, split):  # headings and empty lines are already dropped
        for s in re.split(r"(?<= \.) ", paragraph):
            if len(s.split()) >= min_words:
                sentences.append(s.strip())
    random.Random(seed).shuffle(sentences)
    return sentences[:n]


def sample_keys(model: TransformerBridge, n_keys: int, layers: Iterable[int] | None = None, seed: int = 0) -> dict[int, list[int]]:
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
    the residual stream after ``representation_layer`` at the prefix's last token.
    """

    layer: int
    keys: list[int]
    coefficient: torch.Tensor
    text: torch.Tensor
    position: torch.Tensor
    representation: torch.Tensor


@dataclass
class TriggerSearch:
    """The result of one pass over a corpus: triggers per layer, and random prefixes as a null."""

    triggers: dict[int, Triggers]
    random_prefixes: torch.Tensor  # [n, 2] (text, position)
    random_representation: torch.Tensor  # [n, d_model]
    mean_representation: torch.Tensor  # [d_model], over every prefix of the corpus
    representation_layer: int


class _Stop(Exception):
    pass


def _pad(rows: Sequence[Sequence[int]], pad: int, device) -> torch.Tensor:
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids.to(device)


def _capture(model: TransformerBridge, ids: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Run ``model`` until every hook in ``names`` has fired (never to the unembedding)."""
    wanted, got = set(names), {}

    def grabber(name: str):
        def grab(x, hook):
            got[name] = x.detach()
            if len(got) == len(wanted):
                raise _Stop
        return grab

    try:
        with torch.no_grad(), model.hooks(fwd_hooks=[(n, grabber(n)) for n in wanted]):
            model(ids)
    except _Stop:
        pass
    return got


def trigger_search(
    model: TransformerBridge,
    keys: Mapping[int, Sequence[int]],
    corpus: Corpus,
    k: int = 25,
    *,
    batch_size: int = 32,
    representation_layer: int | None = None,
    n_random: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> TriggerSearch:
    """For each layer's keys, the ``k`` prefixes of ``corpus`` with the highest coefficient m_i.

    Geva et al. section 3.1: the trigger examples of key k_i are the training prefixes x
    with the largest m_i = f(x . k_i). The corpus is streamed in batches; per key only a
    running top-``k`` is kept (with the prefix's representation for :func:`pattern_scores`),
    so memory does not grow with the corpus. Cached by model, keys, corpus and sizes.
    """
    v = view(model)
    for layer, ks in keys.items():
        v.key_hook(layer)  # IndexError for a layer out of range
        if not ks or min(ks) < 0 or max(ks) >= v.d_mlp:
            raise IndexError(f"keys of layer {layer} must be in 0..{v.d_mlp - 1}, got {list(ks)}")
    if k > corpus.n_prefixes:
        raise ValueError(f"k={k} is more than the corpus's {corpus.n_prefixes} prefixes; use a larger corpus")
    rep_layer = v.n_layers // 2 if representation_layer is None else representation_layer
    key = {"model": v.name, "keys": {str(l): list(ks) for l, ks in keys.items()}, "corpus": corpus.digest,
           "k": k, "representation_layer": rep_layer, "n_random": n_random, "seed": seed}

    def build() -> dict[str, torch.Tensor]:
        return _stream_triggers(model, keys, corpus, k, batch_size, rep_layer, n_random, seed, progress)

    t = cached_tensors("memories-triggers", key, build)
    triggers = {
        l: Triggers(l, list(ks), t[f"{l}.coefficient"], t[f"{l}.text"], t[f"{l}.position"], t[f"{l}.representation"])
        for l, ks in keys.items()
    }
    return TriggerSearch(triggers, t["random_prefixes"], t["random_representation"], t["mean_representation"], rep_layer)


def top_triggers(model: TransformerBridge, layer: int, keys: Sequence[int], corpus: Corpus, k: int = 25, **kwargs) -> Triggers:
    """The top-``k`` triggers of ``keys`` in one layer (see :func:`trigger_search`)."""
    return trigger_search(model, {layer: keys}, corpus, k, **kwargs).triggers[layer]


def _stream_triggers(model: TransformerBridge, keys, corpus, k, batch_size, rep_layer, n_random, seed, progress):
    v = view(model)
    device = model.cfg.device
    pad = v.tokenizer.pad_token_id or 0
    rep_hook = v.resid_post_hook(rep_layer)
    names = [v.key_hook(l) for l in keys] + [rep_hook]
    index = {l: torch.tensor(ks, device=device) for l, ks in keys.items()}
    best = {l: torch.full((len(ks), k), -torch.inf, device=device) for l, ks in keys.items()}
    where = {l: torch.full((len(ks), k, 2), -1, dtype=torch.long, device=device) for l, ks in keys.items()}
    reps = {l: torch.zeros(len(ks), k, v.d_model, device=device) for l, ks in keys.items()}
    randoms = corpus.random_prefixes(n_random, seed)
    random_rep = torch.zeros(len(randoms), v.d_model)
    rep_sum, n_seen = torch.zeros(v.d_model, device=device), 0

    for start in tqdm(range(0, len(corpus), batch_size), desc="trigger search", disable=not progress):
        rows = corpus.ids[start : start + batch_size]
        ids = _pad(rows, pad, device)
        b, t = ids.shape
        lengths = torch.tensor([len(r) for r in rows], device=device)
        pos = torch.arange(t, device=device)
        valid = ((pos[None] >= 1) & (pos[None] < lengths[:, None])).reshape(-1)  # [b*t]
        # (text, position) of each flattened prefix
        here = torch.stack([(start + torch.arange(b, device=device))[:, None].expand(b, t), pos[None].expand(b, t)], -1)
        here = here.reshape(-1, 2)
        acts = _capture(model, ids, names)
        rep = acts[rep_hook].reshape(b * t, -1)
        rep_sum += rep[valid].sum(0)
        n_seen += int(valid.sum())
        in_batch = (randoms[:, 0] >= start) & (randoms[:, 0] < start + b)
        rows_here = (randoms[in_batch, 0] - start) * t + randoms[in_batch, 1]
        random_rep[in_batch] = rep[rows_here.to(device)].cpu()
        for l in keys:
            m = acts[v.key_hook(l)][..., index[l]].reshape(b * t, -1).T  # [n_keys, b*t]
            m = m.masked_fill(~valid[None], -torch.inf)
            values = torch.cat([best[l], m], 1)
            top = values.topk(k, dim=1).indices  # [n_keys, k]; < k: a kept trigger, >= k: a new prefix
            kept, new = top < k, (top - k).clamp(min=0)
            old = top.clamp(max=k - 1)
            best[l] = values.gather(1, top)
            where[l] = torch.where(kept[..., None], where[l].gather(1, old[..., None].expand(-1, -1, 2)), here[new])
            reps[l] = torch.where(kept[..., None], reps[l].gather(1, old[..., None].expand(-1, -1, v.d_model)), rep[new])

    out = {"random_prefixes": randoms, "random_representation": random_rep,
           "mean_representation": (rep_sum / max(n_seen, 1)).cpu()}
    for l in keys:
        out[f"{l}.coefficient"] = best[l].cpu()
        out[f"{l}.text"] = where[l][..., 0].cpu()
        out[f"{l}.position"] = where[l][..., 1].cpu()
        out[f"{l}.representation"] = reps[l].cpu()
    return out


def key_coefficients(model: TransformerBridge, layer: int, key: int, ids: Sequence[int]) -> torch.Tensor:
    """The coefficient m_key at every position of one token sequence: [t]."""
    v = view(model)
    x = torch.tensor([list(ids)], device=model.cfg.device)
    return _capture(model, x, [v.key_hook(layer)])[v.key_hook(layer)][0, :, key].cpu()


# --------------------------------------------------------------------------- patterns


def _pair_agreement(labels: Sequence) -> float:
    """P(two distinct members share a label) = sum_c n_c (n_c - 1) / (n (n - 1))."""
    n = len(labels)
    counts = Counter(labels).values()
    return sum(c * (c - 1) for c in counts) / (n * (n - 1)) if n > 1 else float("nan")


def _mean_pair_cosine(reps: torch.Tensor, last: Sequence[int], mean: torch.Tensor) -> float:
    """Mean cosine of the centered representations over pairs whose last tokens differ."""
    x = torch.nn.functional.normalize(reps.float() - mean, dim=-1)
    cos = x @ x.T
    last_t = torch.tensor(list(last))
    differ = last_t[:, None] != last_t[None, :]
    return float(cos[differ].mean()) if differ.any() else float("nan")


def _surface(corpus: Corpus, prefixes: Iterable[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    last, bigram = [], []
    for text, p in prefixes:
        row = corpus.ids[text]
        last.append(row[p])
        bigram.append((row[p - 1], row[p]))
    return last, bigram


def pattern_scores(search: TriggerSearch, corpus: Corpus) -> dict[str, dict[int, float]]:
    """Automatic stand-ins for the paper's annotators (section 3.2), per layer, with a null.

    * shallow: the probability that two of a key's triggers end in the same token
      (``shallow_last``) or the same two tokens (``shallow_bigram``),
      sum_c n_c (n_c - 1) / (k (k - 1));
    * semantic: the mean cosine similarity of two triggers' representations (residual stream
      after ``search.representation_layer`` at the last token, minus its corpus mean),
      over pairs whose last tokens differ, so that surface-identical pairs do not count.

    The ``null_*`` entries apply the same measures to groups of ``k`` random prefixes.
    """
    out: dict[str, dict[int, float]] = {n: {} for n in ("shallow_last", "shallow_bigram", "semantic")}
    mean = search.mean_representation
    for l, tr in search.triggers.items():
        last_s, bigram_s, sem_s = [], [], []
        for i in range(len(tr.keys)):
            last, bigram = _surface(corpus, zip(tr.text[i].tolist(), tr.position[i].tolist()))
            last_s.append(_pair_agreement(last))
            bigram_s.append(_pair_agreement(bigram))
            sem_s.append(_mean_pair_cosine(tr.representation[i], last, mean))
        out["shallow_last"][l] = _nanmean(last_s)
        out["shallow_bigram"][l] = _nanmean(bigram_s)
        out["semantic"][l] = _nanmean(sem_s)
    k = next(iter(search.triggers.values())).coefficient.shape[1]
    last, bigram = _surface(corpus, search.random_prefixes.tolist())
    groups = range(0, len(last) - k + 1, k)
    out["null"] = {
        "shallow_last": _nanmean([_pair_agreement(last[g : g + k]) for g in groups]),
        "shallow_bigram": _nanmean([_pair_agreement(bigram[g : g + k]) for g in groups]),
        "semantic": _nanmean([_mean_pair_cosine(search.random_representation[g : g + k], last[g : g + k], mean)
                              for g in groups]),
    }
    return out


def _nanmean(xs: Sequence[float]) -> float:
    t = torch.tensor(xs, dtype=torch.float64)
    return float(t[~t.isnan()].mean()) if (~t.isnan()).any() else float("nan")


def pattern_table(model: TransformerBridge, search: TriggerSearch, corpus: Corpus, per_layer: int = 1, n_triggers: int = 3) -> list[dict]:
    """Example keys as in the paper's Table 1: key, the automatic pattern, top triggers.

    The pattern is the most common last token (shallow) when it ends at least a third of the
    triggers, otherwise "no shared surface" (a candidate semantic pattern).
    """
    v = view(model)
    rows = []
    for l, tr in search.triggers.items():
        order = sorted(range(len(tr.keys)), key=lambda i: -float(tr.coefficient[i, 0]))[:per_layer]
        for i in order:
            last, _ = _surface(corpus, zip(tr.text[i].tolist(), tr.position[i].tolist()))
            token, count = Counter(last).most_common(1)[0]
            share = count / len(last)
            pattern = (f"ends in {v.tokenizer.decode([token])!r} ({share:.0%})" if share >= 1 / 3
                       else "no shared surface")
            triggers = [prefix_text(model, corpus, int(tr.text[i, j]), int(tr.position[i, j]))
                        for j in range(n_triggers)]
            rows.append({"key": f"k{tr.keys[i]} (layer {l})", "pattern": pattern, "triggers": triggers})
    return rows


def prefix_text(model: TransformerBridge, corpus: Corpus, text: int, position: int) -> str:
    """A prefix as text, cut to its last 60 characters (the trigger is at its end)."""
    words = view(model).tokenizer.decode(corpus.ids[text][1 : position + 1])
    return "…" + words[-60:] if len(words) > 60 else words


# --------------------------------------------------------------------------- token removal


def remove_token(prefix: Sequence[int], which: str, rng: random.Random | None = None) -> list[int]:
    """``prefix`` (BOS first) without its first, last or a random real token (section 3.2).

    A prefix of one real token has nothing left to compare: it is refused.
    """
    if len(prefix) < 3:
        raise ValueError(
            f"token removal needs a prefix of at least two tokens after BOS, got {len(prefix) - 1}; "
            "skip one-token prefixes"
        )
    n = len(prefix) - 1
    drop = {"first": 1, "last": n}.get(which)
    if drop is None:
        if which != "random":
            raise ValueError(f"which must be 'first', 'last' or 'random', got {which!r}")
        drop = (rng or random.Random(0)).randint(1, n)
    return [t for i, t in enumerate(prefix) if i != drop]


def removal_drops(
    model: TransformerBridge, search: TriggerSearch, corpus: Corpus, n_triggers: int = 5, seed: int = 0,
    batch_size: int = 64, progress: bool = True,
) -> dict[str, dict[int, float]]:
    """Mean relative drop (m - m') / m of a key's coefficient when a token is removed from each
    of its top ``n_triggers`` triggers, per layer, for ``first``, ``last`` and ``random``.

    One-token triggers are skipped (see :func:`remove_token`).
    """
    v = view(model)
    rng = random.Random(seed)
    pad = v.tokenizer.pad_token_id or 0
    jobs = []  # (layer, which, key, original coefficient, ids), in layer order
    for l, tr in search.triggers.items():
        for i, key in enumerate(tr.keys):
            for j in range(min(n_triggers, tr.coefficient.shape[1])):
                prefix = corpus.prefix(int(tr.text[i, j]), int(tr.position[i, j]))
                m = float(tr.coefficient[i, j])
                if len(prefix) >= 3 and m > 0:
                    jobs += [(l, which, key, m, remove_token(prefix, which, rng)) for which in ("first", "last", "random")]
    jobs.sort(key=lambda job: job[0])  # a batch then runs only up to its deepest layer
    drops: dict[str, dict[int, list[float]]] = {w: {l: [] for l in search.triggers} for w in ("first", "last", "random")}
    for s in tqdm(range(0, len(jobs), batch_size), desc="token removal", disable=not progress):
        chunk = jobs[s : s + batch_size]
        ids = _pad([job[4] for job in chunk], pad, model.cfg.device)
        acts = _capture(model, ids, sorted({v.key_hook(job[0]) for job in chunk}))
        for row, (l, which, key, m, p) in enumerate(chunk):
            drops[which][l].append((m - float(acts[v.key_hook(l)][row, len(p) - 1, key])) / m)
    return {which: {l: _nanmean(d) for l, d in per_layer.items()} for which, per_layer in drops.items()}


# --------------------------------------------------------------------------- values


def value_logits(model: TransformerBridge, layer: int, keys: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """Each value vector projected to the vocabulary: [n_keys, d_vocab] logits.

    Geva et al. section 4 compute p_i = softmax(v_i E). We apply what the model applies to
    a memory's contribution when it is the only one: the block's post-feedforward norm
    (Gemma; identity for GPT-2 and Llama) to the value alone, then the final norm and the
    unembedding: ``unembed(final_norm(mlp_post_norm(v_i)))``. Both norms rescale the
    vector, so a positive coefficient m_i does not change the ranking of the tokens.
    """
    v = view(model)
    values = v.mlp_out_weight(layer)
    values = values if keys is None else values[torch.as_tensor(keys, device=values.device)]
    with torch.no_grad():
        return v.to_logits(v.mlp_post_norm(layer, values[:, None]))[:, 0]


def value_top_tokens(model: TransformerBridge, layer: int, top: int = 1, chunk: int = 256) -> torch.Tensor:
    """The ``top`` tokens of every value of ``layer`` ([d_mlp, top]), cached per model and layer."""
    v = view(model)

    def build() -> dict[str, torch.Tensor]:
        parts = [value_logits(model, layer, range(s, min(s + chunk, v.d_mlp))).topk(top, -1).indices
                 for s in range(0, v.d_mlp, chunk)]
        return {"top": torch.cat(parts)}

    return cached_tensors("memories-values", {"model": v.name, "layer": layer, "top": top}, build)["top"]


def value_agreement(model: TransformerBridge, search: TriggerSearch, corpus: Corpus) -> dict[str, dict]:
    """Per layer: how often the value's top token is the next token of the key's top trigger
    (``agreement``, the paper's Figure 4), the chance of that for a random next token of the
    corpus (``baseline``), and per key the precision@k: the share of its ``k`` triggers whose
    next token is the value's top token (the paper's Table 2 uses k = 50).
    """
    freq = corpus.next_token_frequency()
    total = sum(freq.values())
    out: dict[str, dict] = {"agreement": {}, "baseline": {}, "precision": {}, "top_token": {}}
    for l, tr in search.triggers.items():
        tops = value_logits(model, l, tr.keys).argmax(-1).tolist()
        agree, base, prec = [], [], []
        for i, top in enumerate(tops):
            nexts = [corpus.next_token(int(t), int(p)) for t, p in zip(tr.text[i], tr.position[i])]
            if nexts[0] is not None:
                agree.append(float(nexts[0] == top))
            base.append(freq[top] / total)
            known = [n for n in nexts if n is not None]
            prec.append(sum(n == top for n in known) / len(known) if known else float("nan"))
        out["agreement"][l] = _nanmean(agree)
        out["baseline"][l] = _nanmean(base)
        out["precision"][l] = prec
        out["top_token"][l] = tops
    return out


# --------------------------------------------------------------------------- aggregation


@dataclass
class LayerReadout:
    """Per example and layer, what section 5 needs (all [n_examples, n_layers] unless noted).

    ``coefficients``: [n, n_layers, d_mlp]; ``ff_top``: top token of the FF output (as added
    to the residual) through the final norm and unembedding; ``before_top``/``before_second``:
    the residual's top two tokens before the FF (after attention); ``after_top``: after it;
    ``final_top``: [n], the model's prediction.
    """

    coefficients: torch.Tensor
    ff_top: torch.Tensor
    before_top: torch.Tensor
    before_second: torch.Tensor
    after_top: torch.Tensor
    final_top: torch.Tensor


def read_layers(model: TransformerBridge, corpus: Corpus, prefixes: torch.Tensor, batch_size: int = 16,
                progress: bool = True) -> LayerReadout:
    """Run each prefix and read, at its last token, every layer's memories and predictions."""
    v = view(model)
    pad = v.tokenizer.pad_token_id or 0
    names = [h for l in range(v.n_layers) for h in (v.key_hook(l), v.mlp_out_hook(l), v.resid_post_hook(l))]
    parts: dict[str, list] = {n: [] for n in ("m", "ff", "b1", "b2", "a1")}
    for s in tqdm(range(0, len(prefixes), batch_size), desc="reading layers", disable=not progress):
        rows = [corpus.prefix(t, p) for t, p in prefixes[s : s + batch_size].tolist()]
        ids = _pad(rows, pad, model.cfg.device)
        at = torch.tensor([len(r) - 1 for r in rows], device=ids.device)
        acts = _capture(model, ids, names)
        pick = lambda name: acts[name][torch.arange(len(rows)), at]  # noqa: E731
        m = torch.stack([pick(v.key_hook(l)) for l in range(v.n_layers)], 1)
        ff = torch.stack([pick(v.mlp_out_hook(l)) for l in range(v.n_layers)], 1)
        after = torch.stack([pick(v.resid_post_hook(l)) for l in range(v.n_layers)], 1)
        with torch.no_grad():
            before2 = v.to_logits(after - ff).topk(2, -1).indices
            parts["b1"].append(before2[..., 0].cpu())
            parts["b2"].append(before2[..., 1].cpu())
            parts["ff"].append(v.to_logits(ff).argmax(-1).cpu())
            parts["a1"].append(v.to_logits(after).argmax(-1).cpu())
        parts["m"].append(m.cpu())
    after_top = torch.cat(parts["a1"])
    return LayerReadout(torch.cat(parts["m"]), torch.cat(parts["ff"]), torch.cat(parts["b1"]),
                        torch.cat(parts["b2"]), after_top, after_top[:, -1])


def composition_counts(coefficients: torch.Tensor, layer_top: torch.Tensor, memory_top: torch.Tensor) -> dict:
    """Section 5.1 for one layer: ``coefficients`` [n, d_mlp], ``layer_top`` [n] (the FF output's
    top token), ``memory_top`` [d_mlp] (each value's top token).

    A memory is active when m_i > 0 (it adds its value). ``composed``: the fraction of
    examples whose layer top token is the top token of no active memory; ``single``: the rest
    (settled by one memory), with ``single_tokens`` counting which tokens those are.
    """
    active = coefficients > 0
    matches = active & (memory_top[None, :] == layer_top[:, None])
    single = matches.any(1)
    return {
        "active_fraction": float(active.float().mean()),
        "composed": float((~single).float().mean()),
        "single": float(single.float().mean()),
        "single_tokens": Counter(layer_top[single].tolist()),
    }


def refinement_counts(before_top: torch.Tensor, before_second: torch.Tensor, after_top: torch.Tensor,
                      ff_top: torch.Tensor, final_top: torch.Tensor) -> dict[str, float]:
    """Section 5.2 for one layer, all tensors [n]:

    ``final``: fraction whose residual top token (after the layer) is already the model's
    final prediction; ``changed``: fraction where the FF changes the residual's top token;
    among those, the new top is the FF's own top (``to_ff_top``), the residual's runner-up
    before the FF (``to_runner_up``; the "veto"), or another token (``to_other``); the three
    sum to 1 (the FF's top wins when it is also the runner-up).
    """
    changed = after_top != before_top
    n_changed = int(changed.sum())
    to_ff = changed & (after_top == ff_top)
    to_second = changed & ~to_ff & (after_top == before_second)
    frac = (lambda mask: float(mask.sum()) / n_changed) if n_changed else (lambda mask: float("nan"))
    return {
        "final": float((after_top == final_top).float().mean()),
        "changed": float(changed.float().mean()),
        "to_ff_top": frac(to_ff),
        "to_runner_up": frac(to_second),
        "to_other": frac(changed & ~to_ff & ~to_second),
    }


def aggregation(model: TransformerBridge, readout: LayerReadout, composition_layers: Iterable[int] | None = None,
                progress: bool = True) -> dict[str, dict]:
    """:func:`refinement_counts` for every layer, :func:`composition_counts` for
    ``composition_layers`` (default: all).

    Composition needs the top token of all the layer's values (:func:`value_top_tokens`,
    cached): a [d_mlp, d_model] x [d_model, d_vocab] product, the costly part on a CPU.
    """
    n_layers = view(model).n_layers
    out: dict[str, dict] = {}
    for l in range(n_layers):
        ref = refinement_counts(readout.before_top[:, l], readout.before_second[:, l], readout.after_top[:, l],
                                readout.ff_top[:, l], readout.final_top)
        for name, value in ref.items():
            out.setdefault(name, {})[l] = value
    layers = range(n_layers) if composition_layers is None else composition_layers
    for l in tqdm(list(layers), desc="value tokens", disable=not progress):
        comp = composition_counts(readout.coefficients[:, l], readout.ff_top[:, l], value_top_tokens(model, l)[:, 0])
        for name, value in comp.items():
            out.setdefault(name, {})[l] = value
    return out


def strongest_memories(model: TransformerBridge, prompt: str, top: int = 3, n_tokens: int = 5) -> list[dict]:
    """Per layer, the ``top`` memories with the highest coefficient at the prompt's last token
    and the tokens their values promote (LM-Debugger's view of one prediction)."""
    v = view(model)
    ids = torch.tensor([v.token_ids(prompt)], device=model.cfg.device)
    acts = _capture(model, ids, [v.key_hook(l) for l in range(v.n_layers)])
    rows = []
    for l in range(v.n_layers):
        m = acts[v.key_hook(l)][0, -1]
        best = m.topk(top)
        tokens = value_logits(model, l, best.indices).topk(n_tokens, -1).indices
        for key, coef, toks in zip(best.indices.tolist(), best.values.tolist(), tokens.tolist()):
            rows.append({"layer": l, "key": key, "coefficient": coef,
                         "promotes": [v.tokenizer.decode([t]) for t in toks]})
    return rows
