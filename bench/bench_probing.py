"""LAMA probing throughput (facts per second): ``factlens.probing.lama.probe`` (facts of every template
batched together, logits only at the position that is read) against the straightforward loop a
reader would write first: one fact at a time, full logits for every position, then rank.

    PYTHONPATH=lib FACTLENS_DATA_DIR=... python bench/bench_probing.py [--model gemma-3-270m] [--facts 64]

Uses T-REx facts whose template ends in [Y] (one forward pass per fact in both methods), checks
that both give the same ranks, and prints facts per second for each and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch


@torch.no_grad()
def one_at_a_time(model, facts) -> list[int]:
    """The peer: per fact, the full [1, t, vocab] logits, then the gold token's rank among LAMA's tokens."""
    from factlens.core.models import view
    from factlens.probing.cloze import fact_cloze
    from factlens.probing.ranking import vocabulary_tokens

    v = view(model)
    candidates = torch.tensor(list(vocabulary_tokens(model)))
    ranks = []
    for f in facts:
        ids = v.batch([fact_cloze(f).prefix]).ids
        logprobs = model(ids)[0, -1].float().log_softmax(-1).cpu()[candidates]
        gold = logprobs[candidates == v.single_token_id(f.object)][0]
        ranks.append(1 + int((logprobs > gold).sum()))
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--facts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from factlens.core.models import load_model
    from factlens.probing.cloze import fact_cloze
    from factlens.probing.lama import lama_facts, probe

    model = load_model(args.model)
    pool = [f for f in lama_facts("TREx", per_relation=max(2, args.facts // 20), seed=0) if fact_cloze(f).final]
    result = probe(model, pool[: args.facts], progress=False)  # warm-up, and keeps only probed facts
    facts = [f for f in pool[: args.facts] if f not in {s for s, _ in result.skipped}]

    start = time.perf_counter()
    ours = probe(model, facts, batch_size=args.batch_size, progress=False)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    peer = one_at_a_time(model, facts)
    t_peer = time.perf_counter() - start

    agree = sum(int(a == b) for a, b in zip(ours.frame["rank"], peer))
    print(f"model {args.model}, {len(facts)} T-REx facts (final [Y]), {torch.get_num_threads()} threads")
    print(f"  factlens.probing.lama.probe (batched):  {len(facts) / t_ours:8.1f} facts/s")
    print(f"  one fact at a time, full logits:   {len(facts) / t_peer:8.1f} facts/s")
    print(f"  ratio {t_peer / t_ours:.1f}x; same rank for {agree}/{len(facts)} facts")


if __name__ == "__main__":
    main()
