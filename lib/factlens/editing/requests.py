"""What every editing method shares: the request, the record that undoes an edit, the Editor interface.

* :class:`EditRequest`: one fact to write, ``(s, r, o*)`` as a prompt template, a subject and a new
  object; :func:`check_requests` checks a batch of them.
* :class:`Edit`: the record of one change to a model's weights, whatever made it (a rank-one update
  of one layer, a batch spread over several layers, fine-tuning of a weight and its bias, a whole
  sequence of edits). It clones what will change *before* the change; :meth:`Edit.undo` restores it
  bit for bit.
* :class:`Editor`: an editing method with its settings and any state it keeps between calls:
  ``editor(model, requests)`` writes the requests and returns their :class:`Edit`. ROME
  (``factlens.editing.rome.ROME``), MEMIT (``memit.MEMIT``), AlphaEdit (``alphaedit.AlphaEdit``),
  FT and FT+L (``fine_tuning.FineTuner``) and knowledge neurons (``knowledge_neurons.KnowledgeNeurons``)
  are editors; the evaluation (``evaluation.evaluate_counterfact``) and the sequence runner
  (``sequences.run_sequence``) take any of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from factlens.core.models import Model, view

if TYPE_CHECKING:
    from factlens.data import CounterFactCase


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt.format(subject)`` followed by ``target``.

    ``prompt`` is a template with ``{}`` where the subject goes ("{} plays the sport of"),
    ``target`` the new object (" basketball"; several tokens allowed, a leading space is
    added when missing).
    """

    prompt: str
    subject: str
    target: str

    def __post_init__(self) -> None:
        if self.prompt.count("{}") != 1:
            raise ValueError(
                f"the prompt must be a template with exactly one '{{}}' where the subject goes, "
                f"e.g. '{{}} plays the sport of'; got {self.prompt!r}"
            )
        if not self.subject or not self.subject.strip():
            raise ValueError("the subject is empty: give the entity whose fact changes, e.g. 'LeBron James'")
        if not self.target or not self.target.strip():
            raise ValueError("the target is empty: give the new object to write, e.g. 'football'")

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)

    def prefixed(self, templates: Sequence[str]) -> list[str]:
        """``x_j + p`` (ROME's eq. 3, 4): each context template ("<prefix>. {}") around the prompt, the
        subject filled in."""
        return [t.replace("{}", self.prompt).replace("{}", self.subject) for t in templates]

    @classmethod
    def from_counterfact(cls, case: CounterFactCase) -> EditRequest:
        """The requested rewrite of a ``factlens.data.CounterFactCase`` (its ``target_new``)."""
        return cls(prompt=case.prompt, subject=case.subject, target=case.target_new)


def check_requests(requests: Iterable[EditRequest]) -> list[EditRequest]:
    """The requests as a list, after checking that there is one at least and that no two share a subject
    and a prompt (relation).

    Two requests for the same ``(s, r)`` ask for two values at one key: a least-squares update would
    average them and write neither (MEMIT needs distinct ``(s_i, r_i)``, eq. 5).
    """
    requests = list(requests)
    if not requests:
        raise ValueError("no requests: give at least one factlens.editing.requests.EditRequest")
    seen: dict[tuple[str, str], int] = {}
    for i, r in enumerate(requests):
        if not isinstance(r, EditRequest):
            raise TypeError(f"request {i} is a {type(r).__name__}, not a factlens.editing.requests.EditRequest")
        key = (r.subject, r.prompt)
        if key in seen:
            raise ValueError(
                f"requests {seen[key]} and {i} both rewrite subject {r.subject!r} with prompt {r.prompt!r} "
                f"(targets {requests[seen[key]].target!r} and {r.target!r}): one key cannot be mapped to two "
                "values in one batch; keep one of them, or apply them in separate batches")
        seen[key] = i
    return requests


class Edit:
    """The record of one change to ``model``'s weights, by any editing method, that undoes it bit for bit.

    Create it *before* changing anything, naming what will change: ``layers`` (their MLP output
    weights, the matrix ROME, MEMIT, AlphaEdit, FT and KN edit) and any other ``parameters`` (FT's
    output bias). It clones them as they are then (:meth:`cover` and :meth:`cover_parameter` add
    more later, before they change). :meth:`undo` copies the clones back, however many changes came
    in between; it is idempotent. As a context manager it undoes on exit, also when the body raises.
    Edits of the same weights must be undone in reverse order (each restores what it saw), or taken
    into one record (:meth:`extend`).

    ``method`` names the editor, ``requests`` are the facts written, ``info`` holds what the method
    reports (its keys are the method's; ``seconds`` is the time the edit took).
    """

    def __init__(self, model: Model, method: str, requests: Sequence[EditRequest] = (), *,
                 layers: Iterable[int] = (), parameters: Iterable[torch.nn.Parameter] = (),
                 info: dict[str, Any] | None = None):
        self.model = model
        self.method = method
        self.requests: list[EditRequest] = list(requests)
        self.info: dict[str, Any] = dict(info or {})
        self.original: dict[int, torch.Tensor] = {}  # layer -> its MLP output weight V as recorded
        self._parameters: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}  # id -> (parameter, clone)
        self.undone = False
        for layer in layers:
            self.cover(layer)
        for parameter in parameters:
            self.cover_parameter(parameter)

    def cover(self, layer: int) -> None:
        """Record layer ``layer``'s MLP output weight as it is now, unless it is recorded already."""
        if layer not in self.original:
            self.original[layer] = view(self.model).mlp_out_weight(layer).detach().clone()

    def cover_parameter(self, parameter: torch.nn.Parameter) -> None:
        """Record any other parameter of the model (e.g. an output bias) as it is now, unless it is recorded
        already. (A layer's MLP output weight is recorded by :meth:`cover`.)"""
        if id(parameter) not in self._parameters:
            self._parameters[id(parameter)] = (parameter, parameter.detach().clone())

    def original_of(self, parameter: torch.nn.Parameter) -> torch.Tensor:
        """The recorded value of a parameter given to :meth:`cover_parameter`."""
        if id(parameter) not in self._parameters:
            raise KeyError("this parameter is not recorded by the edit; it records the MLP output weights of "
                           f"layers {self.layers} (edit.original) and {len(self._parameters)} other parameters")
        return self._parameters[id(parameter)][1]

    @property
    def layers(self) -> list[int]:
        """The layers whose MLP output weight is recorded, ascending."""
        return sorted(self.original)

    @property
    def layer(self) -> int:
        """The one recorded layer (an error when the edit recorded none or several: see :attr:`layers`)."""
        if len(self.original) != 1:
            raise ValueError(f"this {self.method} edit records layers {self.layers}, not one; use edit.layers")
        return next(iter(self.original))

    @property
    def request(self) -> EditRequest:
        """The one request written (an error when there are several: see :attr:`requests`)."""
        if len(self.requests) != 1:
            raise ValueError(f"this {self.method} edit wrote {len(self.requests)} requests, not one; "
                             "use edit.requests")
        return self.requests[0]

    def delta(self, layer: int | None = None) -> torch.Tensor:
        """``V̂ − V`` of layer ``layer`` (default: the one recorded layer): [d_mlp, d_model], zero once undone."""
        layer = self.layer if layer is None else layer
        if layer not in self.original:
            raise KeyError(f"layer {layer} is not recorded by this edit; it records layers {self.layers}")
        return view(self.model).mlp_out_weight(layer).detach() - self.original[layer]

    def extend(self, later: Edit) -> None:
        """Take ``later``, an edit of the same model made after this one, into this record: the weights it
        recorded that this record does not yet are recorded as ``later`` saw them (before any change, since
        only this record's edits came before), and its requests are appended. Undoing this record then
        undoes both."""
        if later.model is not self.model:
            raise ValueError("the later edit changed another model object; a record undoes one model")
        for layer, weight in later.original.items():
            self.original.setdefault(layer, weight)
        for key, saved in later._parameters.items():
            self._parameters.setdefault(key, saved)
        self.requests += later.requests

    @torch.no_grad()
    def undo(self) -> None:
        """Restore everything recorded exactly as it was when recorded (idempotent)."""
        if not self.undone:
            v = view(self.model)
            for parameter, saved in self._parameters.values():
                parameter.copy_(saved)
            for layer, weight in self.original.items():
                v.set_mlp_out_weight(layer, weight)
            self.undone = True

    def __enter__(self) -> Edit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def __repr__(self) -> str:
        state = "undone" if self.undone else "applied"
        return f"Edit({self.method}, {len(self.requests)} requests, layers {self.layers}, {state})"


class Editor(ABC):
    """An editing method: ``editor(model, requests)`` writes the requests into ``model`` and returns the
    :class:`Edit` that undoes them.

    An editor holds its hyperparameters and whatever it keeps between calls (statistics, cached targets,
    AlphaEdit's record of the keys edited so far): one editor per model. ``name`` is the method's name
    in tables, plots and results; ``max_requests`` the most requests one call writes (1 for a method
    that writes one fact per edit, ROME, FT, KN; None for a batch method, MEMIT, AlphaEdit).

    A subclass implements :meth:`write`; the call checks the requests first (:func:`check_requests`,
    the subject in each prompt, a target the tokenizer can write), so that a bad request fails before
    any work and changes nothing.
    """

    name: str
    max_requests: int | None = None

    def __call__(self, model: Model, requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests)
        if self.max_requests is not None and len(requests) > self.max_requests:
            raise ValueError(f"{self.name} writes at most {self.max_requests} request(s) per edit, got "
                             f"{len(requests)}: edit them one after another (factlens.editing.sequences."
                             "run_sequence) or use a batch method (MEMIT, AlphaEdit)")
        v = view(model)
        for r in requests:
            v.subject_span(r.text, r.subject)  # SubjectNotFoundError
            v.target_ids(r.target)  # TargetSplitError
        return self.write(model, requests)

    @abstractmethod
    def write(self, model: Model, requests: list[EditRequest]) -> Edit:
        """Write the (checked) requests into ``model``; return the record, created before any change. If
        anything fails midway, restore the weights before the error propagates."""
