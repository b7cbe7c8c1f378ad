"""The model registry (factlens.core.registry): every model the README names resolves, in any case and
by its aliases, through every editing method's defaults, without loading it; the papers' models get
the papers' settings; a loaded model gets what its entry gives. (Knowledge neurons' settings,
``KNHyperParams``, are the same for every model: the registry holds none.)"""

from __future__ import annotations

import re
import socket
from dataclasses import fields

import pytest

from factlens.core import registry
from factlens.core.models import ModelUnavailableError, load_model, model_entry, view
from factlens.core.registry import Shape
from factlens.editing import alphaedit, fine_tuning, memit, rome

# every model the README names, with the ways a reader may spell it
SPELLINGS = {
    "gemma-3-270m": ("gemma-3-270m", "Gemma-3-270M"),
    "smollm2-135m": ("smollm2-135m", "SmolLM2-135M"),
    "gpt2": ("gpt2", "GPT2", "openai-community/gpt2"),
    "gpt2-xl": ("gpt2-xl", "GPT2-XL", "openai-community/gpt2-xl"),
    "EleutherAI/gpt-j-6b": ("EleutherAI/gpt-j-6b", "EleutherAI/gpt-j-6B", "eleutherai/GPT-J-6B", "gpt-j-6b"),
}
SPELLED = [(name, spelling) for name, spellings in SPELLINGS.items() for spelling in spellings]


def every_method(model):
    """Each editing method's default hyperparameters for ``model`` (a loaded model or an entry)."""
    return {"ROME": rome.default_hparams(model), "MEMIT": memit.default_hparams(model),
            "AlphaEdit": alphaedit.default_hparams(model), "FT": fine_tuning.default_hparams(model),
            "FT+L": fine_tuning.default_hparams(model, constrained=True)}


def test_the_readme_names_no_model_the_registry_lacks(repo_root):
    readme = (repo_root / "README.md").read_text()
    named = set(re.findall(r"model_name[ =]([\w./-]+)", readme))
    named |= set(re.findall(r"`(gemma-3-270m|smollm2-135m|gpt2-xl)`", readme))
    assert named and named <= set(SPELLINGS), named - set(SPELLINGS)


@pytest.mark.parametrize("name,spelling", SPELLED)
def test_every_spelling_resolves_through_every_method(name, spelling):
    entry = registry.entry(spelling)
    assert entry.name == name and entry is registry.entry(name)
    hparams = every_method(entry)
    assert hparams == every_method(registry.entry(name))
    layers = [hparams["ROME"].layer, *hparams["MEMIT"].layers, hparams["FT"].layer, hparams["FT+L"].layer]
    assert all(0 <= layer < entry.shape.n_layers for layer in layers)
    assert hparams["FT"].layer == hparams["FT+L"].layer == hparams["ROME"].layer  # ours: ROME's layer
    assert hparams["FT"].norm_constraint is None and hparams["FT+L"].norm_constraint == registry.PAPER_FT_EPSILON
    assert hparams["AlphaEdit"].memit == hparams["MEMIT"]


def test_the_papers_models_get_the_papers_settings():
    """ROME's hparams/ROME/{gpt2-xl, EleutherAI_gpt-j-6B}.json and MEMIT's hparams/MEMIT/*.json."""
    gptj, xl = every_method(registry.entry("EleutherAI/GPT-J-6B")), every_method(registry.entry("gpt2-xl"))
    assert gptj["ROME"].layer == 5 and gptj["MEMIT"].layers == (3, 4, 5, 6, 7, 8)
    assert xl["ROME"].layer == 17 and xl["MEMIT"].layers == (13, 14, 15, 16, 17)
    assert (gptj["MEMIT"].mom2_update_weight, xl["MEMIT"].mom2_update_weight) == (15_000.0, 20_000.0)
    assert (gptj["MEMIT"].v_steps, xl["MEMIT"].v_steps) == (25, 20)
    for hp in (gptj, xl):
        assert hp["ROME"].mom2_samples == hp["MEMIT"].mom2_samples == 100_000
        assert hp["ROME"].context_templates == ((5, 10), (10, 10)) and hp["MEMIT"].context_templates == ((10, 5),)
        assert (hp["AlphaEdit"].nullspace_threshold, hp["AlphaEdit"].l2) == (2e-2, 10.0)
    assert every_method(registry.entry("gpt2-medium"))["ROME"].layer == 8
    assert every_method(registry.entry("gpt2-large"))["ROME"].layer == 12


def test_a_model_the_registry_does_not_list_gets_settings_from_its_shape():
    entry = registry.entry("someone/some-model")
    assert (entry.name, entry.label, entry.source, entry.offline) == ("someone/some-model", "someone/some-model",
                                                                     registry.HubId("someone/some-model"), False)
    with pytest.raises(ValueError, match="known only once it is loaded"):
        rome.default_hparams(entry)
    hp = every_method(entry.with_shape(Shape(n_layers=10, d_mlp=1_000)))
    assert hp["ROME"].layer == 3 and hp["ROME"].mom2_samples == 20_000  # a third of the way up; 20 keys per neuron
    assert hp["MEMIT"].layers == (0, 1, 2, 3) and hp["MEMIT"].mom2_update_weight == 15_000.0 * 1_000 / 16_384
    for name in ("context_templates", "clamp_norm_factor", "mom2_samples", "v_steps"):  # δ and C as ROME's
        assert getattr(hp["MEMIT"], name) == getattr(hp["ROME"], name)
    assert every_method(entry.with_shape(Shape(400, 1_000_000)))["ROME"].mom2_samples == 100_000  # the paper's at most


def test_listed_settings_that_do_not_fit_the_model_give_way_to_the_generic_ones():
    small = registry.entry("gpt2-xl").with_shape(Shape(n_layers=12, d_mlp=3_072))
    assert rome.default_hparams(small).layer == 4 and memit.default_hparams(small).layers == (1, 2, 3, 4)
    assert alphaedit.default_hparams(small).l2 == 10.0  # no layers: the listed settings fit any model


def test_every_listed_setting_names_a_field_of_its_method():
    classes = {"ROME": rome.ROMEHyperParams, "MEMIT": memit.MEMITHyperParams,
               "AlphaEdit": alphaedit.AlphaEditHyperParams, "FT": fine_tuning.FTHyperParams,
               "FT+L": fine_tuning.FTHyperParams}
    for entry in registry.ENTRIES:
        assert set(entry.listed) <= set(registry.METHODS), entry.name
        for method, settings in entry.listed.items():
            names = {f.name for f in fields(classes[method])}
            assert set(settings.fields) | set(settings.from_rome) <= names, (entry.name, method)


def test_names_aliases_and_labels_are_unambiguous():
    spellings = [n.lower() for e in registry.ENTRIES for n in (e.name, *e.aliases)]
    assert len(spellings) == len(set(spellings))
    assert registry.OFFLINE_MODELS == ("gemma-3-270m", "smollm2-135m", "tiny-gpt2", "tiny-gemma3")
    assert registry.DEFAULT_MODEL in registry.OFFLINE_MODELS
    assert registry.entry("GPT-J-6B").label == "GPT-J 6B"
    assert registry.entry("gemma-3-270m").label.startswith("Gemma 3 270M (4-bit GGUF Q4_K_M")
    with pytest.raises(ValueError, match="model name is empty"):
        registry.entry(" ")
    with pytest.raises(ValueError, match="unknown editing method 'KN'"):
        registry.entry("gpt2-xl").settings("KN")


def test_a_loaded_model_has_its_entry_with_the_shape_it_has(tiny):
    v = view(tiny)
    listed = registry.entry(v.name)
    assert model_entry(tiny) == model_entry(v) == v.entry == listed  # the registry's shape is the loaded one
    assert v.entry.shape == Shape(v.n_layers, v.d_mlp) and v.label == listed.label
    assert every_method(tiny) == every_method(listed)


def test_a_name_loads_in_any_case_under_its_canonical_name():
    model = load_model("TINY-GPT2", device="cpu")
    assert view(model).name == "tiny-gpt2"


def test_an_unknown_model_offline_is_a_clear_error(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ModelUnavailableError, match="gemma-3-270m, smollm2-135m, tiny-gpt2, tiny-gemma3.*reached"):
        load_model("someone/not-a-local-model")
    with pytest.raises(ModelUnavailableError, match="'EleutherAI/gpt-j-6b'.*cannot be reached"):
        load_model("EleutherAI/GPT-J-6B")  # listed, but from the hub: the registry's own id
