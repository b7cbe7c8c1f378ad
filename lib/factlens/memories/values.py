"""Values of the feed-forward memories (Geva et al. 2021, section 4): each value vector projected to
the vocabulary, what it promotes, and whether it agrees with its key's triggers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from factlens.core.cache import cached_tensors
from factlens.core.models import Model, view
from factlens.memories.keys import Corpus, Triggers, nanmean


def value_logits(model: Model, layer: int, keys: Sequence[int] | torch.Tensor | None = None, *,
                 normed: bool = False) -> torch.Tensor:
    """Each value vector projected to the vocabulary: [n_keys, d_vocab] logits.

    Geva et al. section 4: ``p_i = softmax(v_i E)``, the value times the output embedding
    and nothing else: that is the default, and the projection every comparison with the
    paper uses. ``normed=True`` is a labelled variant: what the model would make of the
    value if it were the only thing in the residual stream, ``unembed(final_norm(
    mlp_post_norm(v_i)))`` (Gemma's post-feedforward norm; identity for GPT-2 and Llama).
    RMSNorm and LayerNorm do not only rescale: their per-dimension gains (and LayerNorm's
    centring) change the direction of the vector, so the variant can rank tokens differently.
    """
    v = view(model)
    values = v.mlp_out_weight(layer)
    values = values if keys is None else values[torch.as_tensor(keys, device=values.device)]
    with torch.no_grad():
        if normed:
            return v.to_logits(v.mlp_post_norm(layer, values[:, None]))[:, 0]
        return v.unembed(values[:, None])[:, 0]


@dataclass
class ValueTokens:
    """The token each value of a layer promotes, by the sign of its coefficient ([d_mlp, top] each).

    A memory adds ``m_i v_i``: with m_i > 0 it promotes ``argmax(v_i E)`` (``positive``); in a
    gated MLP m_i can be negative, and then it adds ``-|m_i| v_i`` and promotes
    ``argmax(-v_i E)``, the value's bottom token (``negative``).
    """

    positive: torch.Tensor
    negative: torch.Tensor

    def promoted(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The top token each memory promotes under ``coefficients`` ([..., d_mlp]): by the sign of m_i."""
        return torch.where(coefficients >= 0, self.positive[:, 0], self.negative[:, 0])


def value_tokens(model: Model, layer: int, top: int = 1, *, normed: bool = False, chunk: int = 256) -> ValueTokens:
    """The ``top`` tokens of every value of ``layer`` and of its negation (:class:`ValueTokens`), by
    :func:`value_logits`; one pass over the values, cached per model, layer, ``top`` and projection.

    This is the expensive step of the chapter on a CPU: a [d_mlp, d_model] x [d_model, d_vocab]
    product per layer (about 0.7 TFLOP for Gemma 3 270M's 2,048 values and 262,144 tokens).
    """
    v = view(model)
    v.check_layer(layer)

    def build() -> dict[str, torch.Tensor]:
        pos, neg = [], []
        for s in range(0, v.d_mlp, chunk):
            logits = value_logits(model, layer, range(s, min(s + chunk, v.d_mlp)), normed=normed)
            pos.append(logits.topk(top, -1).indices)
            neg.append((-logits).topk(top, -1).indices)
        return {"positive": torch.cat(pos), "negative": torch.cat(neg)}

    key = {"model": v.name, "layer": layer, "top": top, "projection": "normed" if normed else "geva"}
    t = cached_tensors("memories-value-tokens", key, build)
    return ValueTokens(t["positive"], t["negative"])


@dataclass
class ValueAgreement:
    """Section 4 for the keys of a :class:`TriggerSearch`, per layer ``{layer: [per key]}``.

    ``agrees``: the value's top token is the next token of the key's top trigger (1/0; NaN when
    the top trigger ends its text); ``chance``: the probability of that for the corpus's next
    tokens (the top token's share of them); ``precision``: the share of the key's triggers whose
    next token is the value's top token (the paper's Table 2 reads it at k = 50); ``top_token``.
    """

    agrees: dict[int, list[float]]
    chance: dict[int, list[float]]
    precision: dict[int, list[float]]
    top_token: dict[int, list[int]]

    @property
    def agreement(self) -> dict[int, float]:
        """Per layer, the share of keys whose value agrees (the paper's Figure 4)."""
        return {l: nanmean(a) for l, a in self.agrees.items()}

    @property
    def baseline(self) -> dict[int, float]:
        """Per layer, the mean chance of agreeing."""
        return {l: nanmean(c) for l, c in self.chance.items()}

    def flags(self, layers: Iterable[int]) -> list[float]:
        """``agrees`` (1/0) of every key of ``layers`` (those read) whose top trigger has a next token."""
        return [a for l in layers if l in self.agrees for a in self.agrees[l] if not math.isnan(a)]


def value_agreement(model: Model, triggers: Mapping[int, Triggers], corpus: Corpus, *,
                    normed: bool = False) -> ValueAgreement:
    """How often each key's value predicts the next token of its top trigger (Geva et al. section 4),
    for the keys of ``triggers`` (``search.triggers``, or ``search.every_key`` for every key).

    The value's top token is ``argmax(v_i E)`` (:func:`value_logits`; ``normed`` for the labelled
    variant); from :func:`value_tokens` (every value of the layer, cached) when the triggers cover
    most of a layer's keys, else from those keys' values alone.
    """
    v = view(model)
    freq = corpus.next_token_frequency()
    total = sum(freq.values())
    out = ValueAgreement({}, {}, {}, {})
    for l, tr in triggers.items():
        if len(tr.keys) > v.d_mlp // 4:
            tops = value_tokens(model, l, normed=normed).positive[tr.keys, 0].tolist()
        else:
            tops = value_logits(model, l, tr.keys, normed=normed).argmax(-1).tolist()
        agrees, prec = [], []
        for i, top in enumerate(tops):
            nexts = [corpus.next_token(int(t), int(p)) for t, p in zip(tr.text[i], tr.position[i])]
            agrees.append(math.nan if nexts[0] is None else float(nexts[0] == top))
            known = [n for n in nexts if n is not None]
            prec.append(sum(n == top for n in known) / len(known) if known else math.nan)
        out.agrees[l], out.precision[l], out.top_token[l] = agrees, prec, tops
        out.chance[l] = [freq[top] / total for top in tops]
    return out


# --------------------------------------------------------------------------- one prediction


@torch.no_grad()
def strongest_memories(model: Model, prompt: str, top: int = 3, n_tokens: int = 5, *,
                       normed: bool = False) -> list[dict]:
    """Per layer, the ``top`` memories that add the most at the prompt's last token, ranked by the
    size of their contribution ``|m_i| ||v_i||`` (LM-Debugger's view of one prediction), with the
    signed coefficient and the tokens the memory promotes: the top of ``v_i E`` when m_i > 0, of
    ``-v_i E`` when m_i < 0 (:func:`value_logits`; ``normed`` for the labelled variant)."""
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty: write the text whose next token the memories predict")
    if top < 1 or n_tokens < 1:
        raise ValueError(f"top and n_tokens must be at least 1, got {top} and {n_tokens}")
    v = view(model)
    acts = v.capture(v.batch([prompt]).ids, [v.key_hook(l) for l in range(v.n_layers)])
    rows = []
    for l in range(v.n_layers):
        m = acts[v.key_hook(l)][0, -1]
        size = m.abs() * v.mlp_out_weight(l).norm(dim=-1).to(m.device)
        best = size.topk(min(top, len(size))).indices
        logits = value_logits(model, l, best, normed=normed) * m[best].sign()[:, None]
        tokens = logits.topk(n_tokens, -1).indices
        for key, toks in zip(best.tolist(), tokens.tolist()):
            rows.append({"layer": l, "key": key, "coefficient": float(m[key]),
                         "promotes": [v.tokenizer.decode([t]) for t in toks]})
    return rows
