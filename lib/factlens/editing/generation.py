"""Text generation from a bridged model, with a key-value cache.

Generating ``n`` tokens by re-running the whole prefix for every new token costs ``n`` forward
passes over ever longer inputs. A key-value cache keeps each layer's attention keys and values
of the tokens already read, so each step runs the model on the one new token: the View's
:meth:`~factlens.core.view.View.decoding` (:func:`factlens.core.forward.decoding` says why the
bridge's own cached generation cannot be used: it repeats a token, "Seattle Seattle Seattle ...").
Prompts of different lengths are left-padded with an attention mask and explicit position ids,
so every row is generated as if it were alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from factlens.core import forward
from factlens.core.models import Model, view


def _next_token(top_k: int | None, generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Greedy (``top_k`` None), or a sample from the softmax of the ``top_k`` largest logits."""
    def pick(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float().cpu()
        if top_k is None:
            return logits.argmax(-1)
        top = logits.topk(top_k, dim=-1)
        return top.indices.gather(1, torch.multinomial(top.values.softmax(-1), 1, generator=generator))[:, 0]
    return pick


@torch.no_grad()
def _generate_cached(model: Model, rows: list[list[int]], max_new_tokens: int,
                     pick: Callable[[torch.Tensor], torch.Tensor]) -> list[list[int]]:
    v = view(model)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), v.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):  # left-padded: every row's last token is the last column
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    ids, mask = ids.to(v.device), mask.to(v.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    new: list[torch.Tensor] = []
    with v.decoding() as step:
        for _ in range(max_new_tokens):
            token = pick(step(ids, mask, positions))
            new.append(token)
            ids = token[:, None].to(v.device)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
    return torch.stack(new, 1).tolist() if new else [[] for _ in rows]


@torch.no_grad()
def _generate_recomputed(model: Model, rows: list[list[int]], max_new_tokens: int,
                         pick: Callable[[torch.Tensor], torch.Tensor]) -> list[list[int]]:
    v = view(model)
    rows = [list(r) for r in rows]
    start = [len(r) for r in rows]
    for _ in range(max_new_tokens):
        batch = v.batch(rows)
        for r, t in zip(rows, pick(v.logits_at(batch.ids, batch.last)).tolist()):
            r.append(t)
    return [r[s:] for r, s in zip(rows, start)]


def generate_tokens(model: Model, prompts: Iterable[str], max_new_tokens: int = 30, *, top_k: int | None = None,
                    seed: int = 0, use_cache: bool = True) -> list[list[int]]:
    """The token ids of each prompt's continuation by ``max_new_tokens`` tokens: greedy, or
    sampled from the top ``top_k`` tokens with a generator seeded by ``seed`` (the same seed,
    the same tokens). The first greedy token is the prompt's top next token.

    ``use_cache`` (default): one batched pass over the prompts, then one token per step through
    a key-value cache; ``use_cache=False`` re-runs each whole prefix for every new token (the
    straightforward loop; the tests and ``bench/bench_rome.py`` check that both give the same
    text). Runs the model as it is now, so an applied edit shows; hooks are not needed.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, got {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive number of tokens (or None for greedy), got {top_k}")
    v = view(model)
    rows = [v.token_ids(p) for p in prompts]
    if not rows:
        return []
    pick = _next_token(top_k, torch.Generator().manual_seed(seed))
    run = _generate_cached if use_cache else _generate_recomputed
    # every product of a step has as many rows as prompts: padded with copies of the last prompt,
    # dropped afterwards (forward.ROW_MULTIPLE: 3 rows cost about twice as much as 4)
    return run(model, rows + rows[-1:] * forward.row_padding(len(rows)), max_new_tokens, pick)[:len(rows)]


def generate(model: Model, prompts: Iterable[str], max_new_tokens: int = 30, *, top_k: int | None = None,
             seed: int = 0, use_cache: bool = True) -> list[str]:
    """Each prompt continued by ``max_new_tokens`` tokens (:func:`generate_tokens`), decoded;
    the prompt is not included."""
    tokens = generate_tokens(model, prompts, max_new_tokens, top_k=top_k, seed=seed, use_cache=use_cache)
    return [view(model).tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


__all__ = ["generate", "generate_tokens"]
