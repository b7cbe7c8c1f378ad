"""ROME's value ``v*`` (Meng et al. 2022, section 3.1, eq. 4): what the edited MLP must write.

``v*`` is found by optimization: a residual ``δ`` is added to the output of layer ``l``'s down
projection at the subject's last token (``z = v + δ``), in the request's prompt and in its
variants with random text prefixes, and optimized so that the model then says the new object,
while a KL term keeps what the model predicts after "{subject} is a" (the subject's
"essence"). :func:`compute_value` runs it; ``factlens.editing.rome`` turns ``v*`` into the rank-one
update (eq. 2).

The optimization re-runs the model at every step, but ``δ`` changes nothing below layer ``l``
and nothing before the subject's last token, and in block ``l`` only what its MLP adds there:
each step writes that block's new output at the subject's token and re-runs only the blocks from
``l + 1`` up, on the positions from the subject on, attending to recorded keys and values of the
earlier positions (``View.record`` / ``View.run_from``); eq. 4's terms and their gradient come from
one pass over the unembedding at the positions the loss reads (``factlens.editing.v_star_loss``)
(``partial=True``; ``partial=False`` is the straightforward computation: whole forward passes,
logits, a log-softmax and autograd).

``v*`` is work done once: :func:`compute_value` keeps every result in the cache (``$FACTLENS_CACHE_DIR/v_star``,
``factlens.core.cache.cached_tensors``) under what it depends on and nothing else: the model
(``View.cache_key``: its name, the digest of its weights as they are now, so that each step of a
sequence of edits has its own entries and an undone edit finds the unedited model's, the device,
torch), the request, the layer, the settings of :class:`ValueSettings` (not ``C``, the key mix of
the update, the damping), the context templates themselves and ``partial``. An edit that differs
from another only in ``C`` or in its update (the editing chapter's C study, ROME's code's key mix)
or a later build reads ``v*`` back, bit for bit; MEMIT's ``z`` (``factlens.editing.memit.compute_z``)
is this optimization at its last critical layer and is kept the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from factlens.core.cache import cached_tensors
from factlens.core.models import Model, view
from factlens.editing.requests import EditRequest
from factlens.editing.v_star_loss import Essence, rewrite_terms

#: The cache's kind (its folder) for ``v*``.
CACHE_KIND = "v_star"
#: What an entry holds, in its key; the version changes whenever :func:`compute_value` changes what it
#: returns for the same inputs (the library's code is not part of the key).
_WHAT = "v_star.compute_value, version 2: v_star, v, delta, losses, target_prob, steps, seconds"
#: The terms of each evaluation of the loss, in ``ValueResult.losses``.
LOSS_TERMS: tuple[str, ...] = ("nll", "kl", "decay", "total")


class ValueSettings(Protocol):
    """The settings :func:`compute_value` reads (``factlens.editing.rome.ROMEHyperParams`` has them all,
    and says what each one does)."""

    v_lr: float
    v_steps: int
    kl_factor: float
    weight_decay: float
    clamp_norm_factor: float
    essence_prompt: str
    kl_edited_first: bool
    kl_at_subject: bool
    norm_of_unprefixed: bool
    stop_on_total_loss: bool
    unembedding_bf16: bool


@dataclass(frozen=True)
class RewritePrompts:
    """The prompts of eq. 4 in one right-padded batch, and where the loss reads them.

    Rows ``0 … N−1`` are the rewriting prompts ``x_j + p`` followed by the new object's tokens
    ``o*`` (teacher forced: ``o*_t`` is scored at the position before it); row 0 is the
    unprefixed prompt (template "{}"). Row ``N`` is the essence prompt ``p'`` ("{subject} is
    a"). ``z = v + δ`` is written at ``subject_last`` in every row. The loss reads the
    next-token distribution at ``read_rows, read_positions``: the ``N·T`` target positions,
    then the essence position.
    """

    ids: torch.Tensor               # [N + 1, t]
    lengths: torch.Tensor           # [N + 1]: each row's real tokens
    subject_last: torch.Tensor      # [N + 1]: the subject's last token in each row
    target: torch.Tensor            # [T]: o*'s token ids
    read_rows: torch.Tensor         # [N·T + 1]: the row of each read position
    read_positions: torch.Tensor    # [N·T + 1]: N·T positions whose next token must be o*_t, then p''s
    n: int                          # N, the number of rewriting prompts

    @classmethod
    def build(cls, model: Model, request: EditRequest, templates: Sequence[str], essence_prompt: str, *,
              kl_at_subject: bool = False) -> RewritePrompts:
        """The batch for ``request`` with each template (the first must be "{}", the prompt itself);
        the essence prompt read at its end, or at its subject's last token (``kl_at_subject``)."""
        if not templates or templates[0] != "{}":
            raise ValueError(f"the first template must be '{{}}' (the unprefixed prompt), got {list(templates)[:1]}")
        v = view(model)
        target = v.target_ids(request.target)
        rewriting = request.prefixed(templates)
        essence = essence_prompt.replace("{}", request.subject)
        # each prompt's ids followed by the target's ids exactly (no retokenization)
        heads = [v.token_ids(p) for p in rewriting]
        batch = v.batch([h + target for h in heads] + [v.token_ids(essence)])
        last = [v.subject_span(p, request.subject).last for p in [*rewriting, essence]]
        n, t = len(heads), len(target)
        essence_read = last[-1] if kl_at_subject else int(batch.last[-1])
        return cls(
            ids=batch.ids, lengths=batch.lengths,
            subject_last=torch.tensor(last, device=v.device),
            target=torch.tensor(target, device=v.device),
            read_rows=torch.tensor([*(i for i in range(n) for _ in range(t)), n], device=v.device),
            read_positions=torch.tensor([*(len(h) - 1 + j for h in heads for j in range(t)), essence_read],
                                        device=v.device),
            n=n,
        )

    def log_probs(self, model: Model, read: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the final-normed hidden states at the read positions [N·T + 1, d_model]:
        ``log P[o*_t | x_j + p, o*_<t]`` as [N, T] and ``log P[x | p']`` as [1, d_vocab]. One
        unembedding for all of them (its 262k × 640 matrix is read once)."""
        logp = view(model).unembed(read[:, None])[:, 0].float().log_softmax(-1)
        targets = self.target.repeat(self.n)
        new = logp[torch.arange(len(targets), device=logp.device), targets].view(self.n, -1)
        return new, logp[-1:]


def _write_at(rows: torch.Tensor, positions: torch.Tensor, delta: torch.Tensor):
    """A hook that adds ``δ`` to the value at ``(rows[i], positions[i])``: ``z = v + δ``."""
    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        x[rows, positions] = x[rows, positions] + delta
        return x
    return hook


#: A re-run of one group of rows costs about as much as this many more token positions (the
#: blocks' weights are read once per group): :func:`row_groups` splits rows only where it saves more.
_GROUP_COST = 32


def row_groups(starts: Sequence[int], ends: Sequence[int]) -> list[list[int]]:
    """Rows re-run together: contiguous runs of the rows sorted by ``starts`` (first re-run
    position) that minimise Σ over groups of ``_GROUP_COST + rows · (max end − min start)``."""
    order = sorted(range(len(starts)), key=lambda r: (starts[r], ends[r]))
    best: list[tuple[float, int]] = [(0.0, 0)]  # best[i]: (cost of the first i sorted rows, start of the last group)
    for i in range(1, len(order) + 1):
        best.append(min((best[j][0] + _GROUP_COST + (i - j) * (max(ends[r] for r in order[j:i]) - starts[order[j]]), j)
                        for j in range(i)))
    groups, i = [], len(order)
    while i:
        j = best[i][1]
        groups.append(order[j:i])
        i = j
    return groups[::-1]


def _value_reader(model: Model, prompts: RewritePrompts, layer: int, delta: torch.Tensor, *,
                  partial: bool) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
    """``(v, read)``: the values at the subject's last token of each row before any change
    [N + 1, d_model], and a function that runs the model with ``z = v + δ`` written there and
    returns the final-normed hidden states at the read positions [N·T + 1, d_model].

    ``partial``: nothing below layer ``layer`` or before a row's subject token changes with
    ``δ``, and nothing after its last read position is read. Block ``layer`` itself changes only
    at the subject's token, and only in what its MLP adds: its output there is ``h_mid + N(v + δ)``
    (``h_mid`` the stream between its attention and its MLP, ``N`` Gemma's post-feedforward norm or
    nothing, ``View.mlp_post_norm``), exactly the block's own arithmetic. The rows are split into
    groups of similar subject positions and lengths (:func:`row_groups`: the unprefixed prompts, the
    short prefixes, the long ones), each group runs once (``View.record``), and each call writes
    that output into the recorded stream entering block ``layer + 1`` and re-runs the blocks from
    ``layer + 1`` up on the positions from the group's earliest subject token on (``View.run_from``),
    attending to the recorded keys and values of the earlier ones. Otherwise each call is a whole
    forward pass of the batch with ``δ`` added by a hook (the straightforward computation, for comparison).
    """
    v = view(model)
    hook = v.value_hook(layer)
    everyone = torch.arange(prompts.n + 1, device=v.device)
    if not partial:
        with torch.no_grad():
            values = v.capture(prompts.ids, [hook])[hook][everyone, prompts.subject_last]
        hooks = [(hook, _write_at(everyone, prompts.subject_last, delta))]
        return values, lambda: v.final_hidden(prompts.ids, fwd_hooks=hooks)[prompts.read_rows, prompts.read_positions]

    mid = v.resid_mid_hook(layer)
    subject_last = prompts.subject_last.tolist()
    # a row is needed up to its last read position (a target's last token is read by nothing)
    needed = [max([p + 1 for r2, p in zip(prompts.read_rows.tolist(), prompts.read_positions.tolist()) if r2 == r]
                  + [subject_last[r] + 1]) for r in range(prompts.n + 1)]
    values = torch.empty(prompts.n + 1, v.d_model, device=v.device)
    parts, order = [], []
    for rows in row_groups(subject_last, needed):
        local = {row: i for i, row in enumerate(rows)}
        recording = v.record(v.batch([prompts.ids[r, :needed[r]].tolist() for r in rows]).ids, names=[hook, mid],
                             layers=range(layer + 1, v.n_layers))
        start = min(subject_last[r] for r in rows)
        here = torch.arange(len(rows), device=v.device)
        at = torch.tensor([subject_last[r] for r in rows], device=v.device)
        values[rows] = recording.captured[hook][here, at]
        reads = [i for i, r in enumerate(prompts.read_rows.tolist()) if r in local]
        read_rows = torch.tensor([local[int(prompts.read_rows[i])] for i in reads], device=v.device)
        parts.append((recording, start, (here, at - start), recording.captured[mid][here, at], values[rows],
                      read_rows, prompts.read_positions[reads] - start))
        order += reads
    restore = torch.argsort(torch.tensor(order, device=v.device))

    def read() -> torch.Tensor:
        hidden = []
        for rec, start, subject, h_mid, value, rows, positions in parts:
            resid = rec.resid[layer + 1][:, start:].index_put(subject, h_mid + v.mlp_post_norm(layer, value + delta))
            hidden.append(v.run_from(rec, layer + 1, resid, start=start)[rows, positions])
        return torch.cat(hidden)[restore]
    return values, read


#: Eq. 4's two terms from the read hidden states: ``log P[o*_t | x_j + p]`` [N, T] and the KL term.
Terms = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _dense_terms(model: Model, prompts: RewritePrompts, hp: ValueSettings) -> Terms:
    """The straightforward computation: every read row's logits, a log-softmax and autograd
    (:meth:`RewritePrompts.log_probs`), the unedited ``log P_G[x | p']`` kept from the first call."""
    before: list[torch.Tensor] = []

    def terms(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_p_new, log_p_essence = prompts.log_probs(model, hidden)
        if not before:
            before.append(log_p_essence.detach())
        kl = (kl_divergence(log_p_essence, before[0]) if hp.kl_edited_first
              else kl_divergence(before[0], log_p_essence))
        return log_p_new, kl
    return terms


def _one_pass_terms(model: Model, prompts: RewritePrompts, hp: ValueSettings) -> Terms | None:
    """The same terms in one pass over the unembedding (``factlens.editing.v_star_loss``), its weight in
    bfloat16 with ``unembedding_bf16``; None where the logits are not a linear map (``View.unembedding_map``)."""
    unembedding = view(model).unembedding_map()
    if unembedding is None:
        return None
    weight, bias = (t if t is None else t.detach() for t in unembedding)
    if hp.unembedding_bf16:
        weight, bias = weight.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16)
    targets, essence = prompts.target.repeat(prompts.n), Essence()

    def terms(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_p_new, kl = rewrite_terms(hidden, targets, weight, bias, essence, edited_first=hp.kl_edited_first)
        return log_p_new.view(prompts.n, -1), kl
    return terms


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``D_KL(P ‖ Q) = Σ_x P(x) (log P(x) − log Q(x))`` from log-probabilities over the last
    axis, averaged over the leading ones."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def value_settings(hp: ValueSettings) -> dict[str, Any]:
    """The settings ``v*`` depends on, as its cache key has them: the fields of :class:`ValueSettings`."""
    return {name: getattr(hp, name) for name in ValueSettings.__annotations__}


@dataclass
class ValueResult:
    """What :func:`compute_value` found: ``v* = v + δ`` and how the optimization went."""

    v_star: torch.Tensor          # the down projection's output to write (bias included)
    v: torch.Tensor               # its output before the edit, averaged over the rewriting prompts
    delta: torch.Tensor           # v* − v
    losses: list[dict[str, float]] = field(default_factory=list)  # per evaluation: LOSS_TERMS
    target_prob: float = 0.0      # mean P(target) over the prompts at the last evaluation
    steps: int = 0                # Adam steps taken (fewer than v_steps when it stopped early)
    seconds: float = 0.0          # how long the optimization took when it was computed (the cache keeps it)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The result as the cache keeps it (every number exactly: losses and the probability as float64)."""
        losses = torch.tensor([[row[t] for t in LOSS_TERMS] for row in self.losses], dtype=torch.float64)
        return {"v_star": self.v_star, "v": self.v, "delta": self.delta, "losses": losses.reshape(-1, len(LOSS_TERMS)),
                "target_prob": torch.tensor([self.target_prob], dtype=torch.float64),
                "steps": torch.tensor([self.steps]), "seconds": torch.tensor([self.seconds], dtype=torch.float64)}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], device: torch.device) -> ValueResult:
        """The result from :meth:`tensors`, its vectors on ``device``."""
        return cls(v_star=t["v_star"].to(device), v=t["v"].to(device), delta=t["delta"].to(device),
                   losses=[dict(zip(LOSS_TERMS, row)) for row in t["losses"].tolist()],
                   target_prob=float(t["target_prob"][0]), steps=int(t["steps"][0]), seconds=float(t["seconds"][0]))


def compute_value(model: Model, request: EditRequest, layer: int, hp: ValueSettings,
                  templates: Sequence[str] = ("{}",), progress: bool = False, *, partial: bool = True) -> ValueResult:
    """``v* = argmin_z (1/N) Σ_j −log P_G(m:=z)[o* | x_j + p] + kl · D_KL(P_G(m:=z)[x | p'] ‖ P_G[x | p'])``
    (paper eq. 4), plus ``weight_decay · ‖δ‖ / ‖v‖²`` (ROME's code).

    ``z = v + δ`` replaces the output of layer ``layer``'s down projection at the subject's
    last token in every prompt ``x_j + p`` (each template around the prompt, followed by the
    target's tokens) and in the essence prompt ``p'`` ("{subject} is a"). ``δ`` is optimized
    with Adam and clamped to ``clamp_norm_factor · ‖v‖`` after every step, for at most
    ``v_steps`` steps, stopping early once the fact is written (NLL + KL term below 0.05, or
    the whole loss with ``stop_on_total_loss``). The options of ``rome.ROMEHyperParams`` say
    where the KL term reads, its direction, and whose ``‖v‖`` scales the decay and the clamp.
    The model's weights do not change here.

    ``partial`` (default): each step re-runs only what ``δ`` changes, the blocks above ``layer``
    at the positions from the earliest subject token on, and takes the loss's two terms and their
    gradient in one pass over the unembedding (``factlens.editing.v_star_loss``; with
    ``unembedding_bf16`` its weight in bfloat16); ``partial=False`` runs the whole model and the
    straightforward loss each step (the same ``v*`` up to rounding: ``bench/bench_rome.py`` and the
    tests compare them).

    Computed once: the cache returns the result (``seconds`` included: how long the optimization
    took) for the same model and weights, request, layer, :func:`value_settings`, templates and
    ``partial``, bit for bit as computed (see the module docstring).
    """
    v = view(model)
    key = {**v.cache_key(), "what": _WHAT, "request": asdict(request), "layer": layer,
           "settings": value_settings(hp), "templates": list(templates), "partial": partial}

    def build() -> dict[str, torch.Tensor]:
        return _optimize(model, request, layer, hp, templates, progress, partial=partial).tensors()

    return ValueResult.from_tensors(cached_tensors(CACHE_KIND, key, build), v.device)


def _optimize(model: Model, request: EditRequest, layer: int, hp: ValueSettings, templates: Sequence[str],
              progress: bool, *, partial: bool) -> ValueResult:
    """:func:`compute_value`'s optimization, timed."""
    start = time.perf_counter()
    v = view(model)
    prompts = RewritePrompts.build(model, request, templates, hp.essence_prompt, kl_at_subject=hp.kl_at_subject)
    delta = torch.zeros(v.d_model, device=v.device, requires_grad=True)
    values, read_hidden = _value_reader(model, prompts, layer, delta, partial=partial)
    values = values[:prompts.n]
    v_mean = values.mean(0)
    v_norm = (values[0] if hp.norm_of_unprefixed else v_mean).norm()
    optimizer = torch.optim.Adam([delta], lr=hp.v_lr)
    losses: list[dict[str, float]] = []
    terms = _one_pass_terms(model, prompts, hp) if partial else None
    if terms is None and hp.unembedding_bf16:
        raise ValueError("unembedding_bf16 applies to the one-pass loss only (partial=True, an unembedding that is "
                         "a linear map); partial=False is the float32 reference")
    terms = terms or _dense_terms(model, prompts, hp)
    steps, target_prob = 0, 0.0
    with v.frozen_except([]):
        for _ in tqdm(range(hp.v_steps), desc="v*", disable=not progress, leave=False):
            optimizer.zero_grad()
            log_p_new, kl = terms(read_hidden())
            nll = -log_p_new.mean(1).mean()
            decay = hp.weight_decay * delta.norm() / v_norm**2
            loss = nll + hp.kl_factor * kl + decay
            target_prob = log_p_new.detach().sum(1).exp().mean().item()
            losses.append(dict(zip(LOSS_TERMS, (nll.item(), kl.item(), decay.item(), loss.item()))))
            if (loss if hp.stop_on_total_loss else nll + hp.kl_factor * kl).item() < 5e-2:
                break
            loss.backward()
            optimizer.step()
            steps += 1
            with torch.no_grad():
                max_norm = hp.clamp_norm_factor * v_norm
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    d = delta.detach().clone()
    return ValueResult(v_star=v_mean + d, v=v_mean, delta=d, losses=losses, target_prob=target_prob, steps=steps,
                       seconds=time.perf_counter() - start)


__all__ = ["CACHE_KIND", "LOSS_TERMS", "RewritePrompts", "ValueResult", "ValueSettings", "compute_value",
           "kl_divergence", "row_groups", "value_settings"]
