"""The fine-tuning baselines of the ROME paper (Meng et al. 2022, section 4.2): FT and FT+L.

Both write an ``EditRequest`` (``factlens.editing.requests``) by gradient descent on one layer's MLP
output weight ``W`` (the matrix ROME edits; with ``tune_bias`` its bias too, where the model
has one), every other weight frozen:

* **FT** minimises the negative log-likelihood of the new object after the prompt,
  ``L(W) = −(1/T) Σ_t log P_W(o*_t | p, o*_<t)``, with Adam;
* **FT+L** does the same under the L∞ constraint ``‖W − W₀‖_∞ ≤ ε`` (Zhu et al. 2020):
  after every step each entry of ``W`` is clamped to ``[W₀ − ε, W₀ + ε]``.

Two configurations (:func:`default_hparams`, :func:`paper_hparams`): ours tunes the layer ROME
edits, so that the comparison isolates the update rule; the paper's (kmeng01/rome's
``hparams/FT/gpt2-xl_constr.json`` and ``gpt2-xl_unconstr.json``) tunes layer 0's MLP output,
weight and bias, with ε = 5·10⁻⁴ for FT+L, and layer 1 for FT.

:func:`fine_tune` optimizes many requests in one batch: every request gets its own copy of
``W`` (and of the bias), substituted for the layer's output in its own row of the batch, and
its own Adam state and early stop, so each result is the one a run on that request alone
gives (the test compares them). :class:`FineTuner` is the editor (``factlens.editing.requests.Editor``):
``FineTuner(hparams)(model, [request])`` writes what FT found for the request and returns the ``Edit``
(``edit.undo()`` restores weight and bias bit for bit); told the requests to come, it tunes them a
batch at a time. Unlike ROME, FT sees only the one prompt: no random prefixes, no key statistics, no
term that keeps the subject's other knowledge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from factlens.core.models import Model, model_entry, view
from factlens.core.registry import PAPER_FT_EPSILON, ModelEntry
from factlens.editing import rome
from factlens.editing.requests import Edit, Editor, EditRequest


@dataclass(frozen=True)
class FTHyperParams:
    """Hyperparameters of FT / FT+L (names as in ROME's ``hparams/FT/*.json``).

    Attributes:
        layer: the MLP whose output weight is tuned.
        lr: Adam learning rate. ROME's code: 5e-4.
        steps: at most this many Adam steps. ROME's code: 25.
        norm_constraint: ε of FT+L's ``‖W − W₀‖_∞ ≤ ε``; ``None`` for unconstrained FT.
            ROME's code: 5e-4 for GPT-2 XL.
        stop_loss: stop once the loss is below this (before the step). ROME's code: 1e-2.
        tune_bias: tune the output bias too, where the model has one (ROME's code tunes every
            parameter of ``mlp.c_proj``: weight and bias). Gemma and Llama have none.
    """

    layer: int
    lr: float = 5e-4
    steps: int = 25
    norm_constraint: float | None = None
    stop_loss: float = 1e-2
    tune_bias: bool = False

    @property
    def method(self) -> str:
        return "FT" if self.norm_constraint is None else "FT+L"


def default_hparams(model: Model | ModelEntry, *, constrained: bool = False) -> FTHyperParams:
    """Ours: FT (``constrained=False``) or FT+L at the layer ROME edits on this model, with
    ROME's code's optimizer settings, the weight only; ``model``: a loaded model or a registry entry
    (``factlens.core.registry``, where FT+L's ε per model lives: the paper's, unless listed)."""
    settings = model_entry(model).settings("FT+L" if constrained else "FT")
    return FTHyperParams(**settings.arguments(rome.default_hparams(model)))


def paper_hparams(model: Model, *, constrained: bool = True) -> FTHyperParams:
    """The paper's configuration (ROME's code for GPT-2 XL): FT+L tunes layer 0's MLP output,
    weight and bias, with ε = 5·10⁻⁴; FT (``constrained=False``) layer 1, unconstrained."""
    layer = view(model).check_layer(0 if constrained else 1)
    return FTHyperParams(layer=layer, norm_constraint=PAPER_FT_EPSILON if constrained else None, tune_bias=True)


def output_bias(model: Model, layer: int) -> torch.nn.Parameter | None:
    """The bias beside layer ``layer``'s MLP output weight (GPT-2's ``c_proj.bias``), or None
    where the output projection has none (Gemma, Llama): ``View.mlp_out_bias``."""
    return view(model).mlp_out_bias(layer)


def method_label(model: Model, hp: FTHyperParams) -> str:
    """A row name that says what is tuned: ``"FT (layer 6: W)"``, ``"FT+L (layer 0: W and b)"``
    (GPT-2), ``"FT+L (layer 0: W, no bias)"`` (Gemma, whose output projection has none)."""
    if not hp.tune_bias:
        what = "W"
    else:
        what = "W and b" if output_bias(model, hp.layer) is not None else "W, no bias"
    return f"{hp.method} (layer {hp.layer}: {what})"


# --------------------------------------------------------------------------- the editor


@dataclass
class Tuned:
    """What FT found for one request: the change to the values ``ΔW`` ([d_mlp, d_model]) and to
    the bias (None when not tuned), and the loss before each Adam step with, last, the loss it
    stopped at (below ``stop_loss``, or after the last step)."""

    request: EditRequest
    delta: torch.Tensor
    delta_bias: torch.Tensor | None
    losses: list[float]

    @property
    def steps(self) -> int:
        """The Adam steps taken."""
        return len(self.losses) - 1


class FineTuner(Editor):
    """FT or FT+L (``hparams.norm_constraint``) as an editor: ``tuner(model, [request])`` writes the
    weights FT finds for ``request`` (:func:`fine_tune`) into ``model``; returns the ``Edit`` that
    restores weight and bias bit for bit.

    ``requests``: those it will be asked for, in order. The first time one of them is asked for, its
    batch of ``batch_size`` is tuned together (each request as if alone); only the current batch's
    results are kept, so asking in the requests' order tunes each batch once and memory stays at one
    batch. A request not among them is tuned alone. What is tuned starts from the weights as they are
    when its batch is tuned: undo each edit before the next (as ``factlens.editing.evaluation`` does).
    ``steps`` keeps the Adam steps of every request tuned so far, ``seconds`` the time spent tuning;
    ``edit.info["seconds"]`` is that time shared among the requests tuned.
    """

    max_requests = 1  # each request's own ΔW from the same weights: one at a time

    def __init__(self, hparams: FTHyperParams, *, requests: Sequence[EditRequest] = (), batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.hparams = hparams
        self.name = hparams.method
        self.requests = list(requests)
        self.batch_size = batch_size
        self.steps: dict[EditRequest, int] = {}
        self.seconds = 0.0
        self._batch_of = {r: i // batch_size for i, r in enumerate(self.requests)}
        self._current: tuple[Model | None, object, dict[EditRequest, Tuned]] = (None, None, {})

    def tuned(self, model: Model, request: EditRequest) -> Tuned:
        """What FT finds for ``request`` on ``model`` (tuning its batch if it is not the current one)."""
        number = self._batch_of.get(request)
        key = ("batch", number) if number is not None else ("alone", request)
        if self._current[0] is not model or self._current[1] != key:
            batch = ([request] if number is None
                     else self.requests[number * self.batch_size:(number + 1) * self.batch_size])
            start = time.perf_counter()
            tuned = fine_tune(model, batch, self.hparams, batch_size=self.batch_size)
            self.seconds += time.perf_counter() - start
            self._current = (model, key, {t.request: t for t in tuned})
            self.steps.update({t.request: t.steps for t in tuned})
        return self._current[2][request]

    def write(self, model: Model, requests: list[EditRequest]) -> Edit:
        """Write ``W₀ + ΔW`` (and the bias's change) that FT found for the request."""
        (request,) = requests
        tuned, hp = self.tuned(model, request), self.hparams
        v = view(model)
        bias = output_bias(model, hp.layer) if tuned.delta_bias is not None else None
        record = Edit(model, self.name, [request], layers=[hp.layer], parameters=[bias] if bias is not None else [])
        with torch.no_grad():
            v.set_mlp_out_weight(hp.layer, record.original[hp.layer] + tuned.delta)
            if bias is not None:
                bias.add_(tuned.delta_bias)
        n_tokens = len(v.target_ids(request.target))
        record.info.update(losses=tuned.losses, steps=tuned.steps,
                           target_prob=math.exp(-n_tokens * tuned.losses[-1]), hparams=asdict(hp),
                           seconds=self.seconds / len(self.steps))
        return record


# --------------------------------------------------------------------------- the optimization


_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


def _adam_step(param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, s: torch.Tensor, step: int,
               lr: float) -> None:
    """One step of Adam, in place (``torch.optim.Adam``'s update, no weight decay); every entry
    is its own optimizer, so a stack of requests' weights is a stack of independent optimizers."""
    b1, b2 = _BETAS
    m.lerp_(grad, 1 - b1)
    s.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (s.sqrt() / math.sqrt(1 - b2 ** step)).add_(_ADAM_EPS)
    param.addcdiv_(m, denom, value=-lr / (1 - b1 ** step))


class _Forward:
    """The model's final-normed hidden states when row ``i`` of the batch has its own values
    ``W_i`` (and bias) at layer ``l``: either the whole model with ``W_i k`` substituted for the
    layer's output (``from_layer=False``), or only the blocks above ``l`` re-run on
    ``h^(l+1) − g(W₀ k + b₀) + g(W_i k + b_i)`` from one recorded run (``g``: what the block applies
    to the MLP output, e.g. Gemma's post-feedforward norm), since nothing below the output of
    layer ``l``'s MLP, keys ``k`` included, depends on ``W``."""

    def __init__(self, model: Model, ids: torch.Tensor, layer: int, bias: torch.Tensor | None, from_layer: bool):
        self.v, self.ids, self.layer, self.bias = view(model), ids, layer, bias
        self.key_name, self.value_name = self.v.key_hook(layer), self.v.value_hook(layer)
        self.recording = None
        if from_layer:
            above = range(layer + 1, self.v.n_layers)
            self.recording = self.v.record(ids, names=[self.key_name, self.value_name], layers=above)
            self.keys = self.recording.captured[self.key_name]
            self.base = self.recording.resid[layer + 1] - self.v.mlp_post_norm(
                layer, self.recording.captured[self.value_name])

    def _values(self, keys: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        out = torch.einsum("btm,bmd->btd", keys, W)
        bias = b[:, None] if b is not None else self.bias
        return out + bias if bias is not None else out

    def __call__(self, rows: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """Final-normed hidden states [r, t, d_model] of the batch's rows ``rows`` (r of them) with
        values ``W`` [r, d_mlp, d_model] and biases ``b`` [r, d_model] (None: the model's own)."""
        v = self.v
        if self.recording is not None:
            resid = self.base[rows] + v.mlp_post_norm(self.layer, self._values(self.keys[rows], W, b))
            return v.run_from(self.recording, self.layer + 1, resid, rows=rows)
        keys: dict[str, torch.Tensor] = {}

        def grab(x: torch.Tensor, hook: object) -> None:
            keys["k"] = x

        def substitute(x: torch.Tensor, hook: object) -> torch.Tensor:
            return self._values(keys["k"], W, b)

        return v.final_hidden(self.ids[rows], fwd_hooks=[(self.key_name, grab), (self.value_name, substitute)])


def _tune_batch(model: Model, requests: Sequence[EditRequest], hp: FTHyperParams,
                from_layer: bool) -> list[Tuned]:
    """FT on ``requests`` together; row ``i`` of the batch runs with its own ``W_i`` (and bias)."""
    v = view(model)
    heads = [v.token_ids(r.text) for r in requests]
    tails = [v.target_ids(r.target) for r in requests]
    batch = v.batch([h + t[:-1] for h, t in zip(heads, tails)])
    device = batch.ids.device
    case = torch.tensor([i for i, t in enumerate(tails) for _ in t], device=device)
    pos = torch.tensor([len(h) - 1 + j for h, t in zip(heads, tails) for j in range(len(t))], device=device)
    token = torch.tensor([x for t in tails for x in t], device=device)
    counts = torch.tensor([len(t) for t in tails], device=device, dtype=torch.float32)

    W0 = v.mlp_out_weight(hp.layer).detach()  # [d_mlp, d_model]
    bias = output_bias(model, hp.layer)
    b0 = bias.detach() if bias is not None else None
    n = len(requests)
    starts = {"W": W0, **({"b": b0} if b0 is not None and hp.tune_bias else {})}
    # the weights of the requests still being tuned (rows of `active`), their Adam moments, their results
    params = {k: x.expand(n, *x.shape).clone() for k, x in starts.items()}
    moments = {k: (torch.zeros_like(p), torch.zeros_like(p)) for k, p in params.items()}
    found: dict[str, list[torch.Tensor | None]] = {k: [None] * n for k in params}
    hidden_states = _Forward(model, batch.ids, hp.layer, b0, from_layer)
    losses: list[list[float]] = [[] for _ in requests]
    active = torch.arange(n, device=device)

    def finish(which: torch.Tensor) -> None:
        for k, p in params.items():
            for i, row in zip(active[which].tolist(), p[which]):
                found[k][i] = row - starts[k]

    for step in range(1, hp.steps + 2):  # the last pass only reads the losses after the last step
        leaves = {k: p.detach().requires_grad_(step <= hp.steps) for k, p in params.items()}
        rows = torch.isin(case, active)
        local = torch.searchsorted(active, case[rows])
        with torch.set_grad_enabled(step <= hp.steps):
            hidden = hidden_states(active, leaves["W"], leaves.get("b"))
            logp = v.unembed(hidden[local, pos[rows]][:, None])[:, 0].float().log_softmax(-1)
            nll = -logp[torch.arange(len(local), device=device), token[rows]]
            per_case = torch.zeros(len(active), device=device).index_add(0, local, nll) / counts[active]
        for i, loss in zip(active.tolist(), per_case.tolist()):
            losses[i].append(loss)
        going = per_case.detach() >= hp.stop_loss
        if step > hp.steps or not bool(going.any()):
            finish(torch.ones_like(going))
            break
        per_case[going].sum().backward()
        with torch.no_grad():
            if not bool(going.all()):  # requests that reached the stop loss keep their weights
                finish(~going)
                params = {k: p[going] for k, p in params.items()}
                moments = {k: (m[going], s[going]) for k, (m, s) in moments.items()}
            for k, p in params.items():
                grad = leaves[k].grad if bool(going.all()) else leaves[k].grad[going]
                _adam_step(p, grad, *moments[k], step, hp.lr)
                if hp.norm_constraint is not None:
                    eps = hp.norm_constraint
                    torch.clamp(p, starts[k] - eps, starts[k] + eps, out=p)
        active = active[going]
    return [Tuned(r, found["W"][i], found["b"][i] if "b" in found else None, losses[i])
            for i, r in enumerate(requests)]


def fine_tune(model: Model, requests: Sequence[EditRequest], hparams: FTHyperParams, *,
              batch_size: int = 16, from_layer: bool = True, progress: bool = False) -> list[Tuned]:
    """FT (FT+L when ``hparams.norm_constraint`` is set) of layer ``hparams.layer``'s MLP output
    on each request, ``batch_size`` requests per batch; returns what it found for each, in order
    (:class:`FineTuner` writes one into the model); the model is left unchanged.

    For each request, Adam minimises ``L(W) = −(1/T) Σ_t log P_W(o*_t | p, o*_<t)`` (teacher
    forced over the target's T tokens) for at most ``hparams.steps`` steps, stopping before a
    step once ``L < stop_loss``; FT+L clamps ``W`` (and the bias) to ``W₀ ± ε`` after every step.
    ROME's code scores every target token at the prompt's last position instead; the two agree
    for one-token targets. Each request is optimized as if alone (its own ``W``, Adam moments and
    stop), so ``batch_size`` changes the speed, not the result beyond floating-point rounding.

    ``from_layer``: each step re-runs only the blocks above layer ``hparams.layer``
    (``View.run_from``; logits only at the target's positions); ``False`` runs the whole model
    each step, the straightforward computation that the bench and the tests compare with.
    """
    v = view(model)
    v.check_layer(hparams.layer)  # IndexError for a layer out of range, before any work
    if hparams.norm_constraint is not None and hparams.norm_constraint <= 0:
        raise ValueError(f"norm_constraint must be a positive ε (or None for FT), got {hparams.norm_constraint}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    requests = list(requests)
    for r in requests:
        v.subject_span(r.text, r.subject)  # same checks as ROME: the subject is in the prompt
        v.target_ids(r.target)
    tuned: list[Tuned] = []
    chunks = range(0, len(requests), batch_size)
    with v.frozen_except([]):
        for i in tqdm(chunks, desc=method_label(model, hparams), disable=not progress, leave=False):
            tuned += _tune_batch(model, requests[i:i + batch_size], hparams, from_layer)
    return tuned
