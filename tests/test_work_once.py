"""Work done once (DESIGN.md, Caches and results): ROME's k* and v*, and MEMIT's z through its δ, are kept
in the cache by the model and the digest of its weights, the request, the layer, the settings and the
templates, and nothing else; a hit is the computation bit for bit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from factlens.core.models import view
from factlens.editing import memit, rome, v_star
from factlens.editing.requests import EditRequest

FAST = rome.ROMEHyperParams(layer=1, context_templates=((3, 2),), v_steps=3, mom2_samples=300)
FAST_MEMIT = memit.MEMITHyperParams(layers=(0, 1), context_templates=((3, 1),), v_steps=3, mom2_samples=300)
REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Seattle")
OTHER = EditRequest("{} plays the sport of", "LeBron James", "football")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache of k* and v* at work (the conftest turns it off), in a folder of the test's own."""
    monkeypatch.setenv("FACTLENS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FACTLENS_RECOMPUTE")
    return tmp_path


def entries(cache: Path, kind: str) -> list[Path]:
    return sorted((cache / kind).glob("*.safetensors"))


@contextlib.contextmanager
def recomputed() -> Iterator[None]:
    """Within the block k* and v* are computed, the cache neither read nor written."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACTLENS_RECOMPUTE", "v_star,k_star")
        yield


@contextlib.contextmanager
def optimizations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EditRequest]]:
    """The requests whose v* is optimized (not read from the cache) within the block."""
    calls: list[EditRequest] = []
    real = v_star._optimize

    def counted(model, request, *args, **kwargs):
        calls.append(request)
        return real(model, request, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(v_star, "_optimize", counted)
        yield calls


def assert_same_value(a: v_star.ValueResult, b: v_star.ValueResult) -> None:
    for name in ("v_star", "v", "delta"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.losses, a.steps, a.target_prob) == (b.losses, b.steps, b.target_prob)


def test_a_cached_v_star_is_the_computation_bit_for_bit(tiny, cache, monkeypatch):
    templates = rome.templates_for(tiny, FAST)
    with optimizations(monkeypatch) as calls:
        first = v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates)
        again = v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates)
    assert calls == [REQUEST] and len(entries(cache, "v_star")) == 1
    with recomputed():
        fresh = v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates)
    assert_same_value(again, fresh)
    assert_same_value(first, fresh)
    assert again.seconds == first.seconds > 0  # the optimization's time, kept beside v*


def test_a_cached_k_star_is_the_computation_and_ignores_the_target(tiny, cache):
    templates = rome.templates_for(tiny, FAST)
    first = rome.compute_key(tiny, REQUEST, FAST.layer, templates)
    again = rome.compute_key(tiny, replace(REQUEST, target="Rome"), FAST.layer, templates)
    assert len(entries(cache, "k_star")) == 1
    with recomputed():
        fresh = rome.compute_key(tiny, REQUEST, FAST.layer, templates)
    assert torch.equal(first, fresh) and torch.equal(again, fresh)
    rome.compute_key(tiny, REQUEST, FAST.layer)  # k₀: other templates, another entry
    rome.compute_key(tiny, REQUEST, 0, templates)  # another layer
    assert len(entries(cache, "k_star")) == 3


def test_a_cached_z_is_the_computation_bit_for_bit(tiny, cache, monkeypatch):
    with optimizations(monkeypatch) as calls:
        first = memit.compute_z(tiny, REQUEST, FAST_MEMIT)
        again = memit.compute_z(tiny, REQUEST, FAST_MEMIT)
    assert calls == [REQUEST]
    with recomputed():
        fresh = memit.compute_z(tiny, REQUEST, FAST_MEMIT)
    assert torch.equal(first, fresh) and torch.equal(again, fresh)
    assert memit.z_seconds(tiny, [REQUEST], FAST_MEMIT) > 0


def test_a_rome_edit_from_the_cache_is_the_computed_edit(tiny, cache, monkeypatch):
    v = view(tiny)
    eye = torch.eye(v.d_mlp)
    with recomputed(), rome.ROME(FAST, stats=eye)(tiny, [REQUEST]) as computed:
        weight = v.mlp_out_weight(FAST.layer).detach().clone()
    with optimizations(monkeypatch) as calls:
        for _ in range(2):  # the first edit fills the cache, the second reads it
            with rome.ROME(FAST, stats=eye)(tiny, [REQUEST]) as cached:
                assert torch.equal(v.mlp_out_weight(FAST.layer), weight)
            for name in ("k_star", "v_star", "delta"):
                assert torch.equal(cached.info[name], computed.info[name]), name
            for name in ("losses", "steps", "target_prob", "denominator", "forecast"):
                assert cached.info[name] == computed.info[name], name
    assert calls == [REQUEST]
    assert len(entries(cache, "k_star")) == 2  # k* and the unprefixed k₀
    # a warm cache reports what the edit costs, v*'s optimization included, not a file read
    assert cached.info["seconds"] >= v_star.compute_value(tiny, REQUEST, FAST.layer, FAST,
                                                          rome.templates_for(tiny, FAST)).seconds


def test_the_key_follows_the_weights_and_an_undo_returns_to_it(tiny, cache, monkeypatch):
    v = view(tiny)
    templates = rome.templates_for(tiny, FAST)
    unedited = v.weights_digest()
    first = v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates)
    with rome.ROME(FAST, stats=torch.eye(v.d_mlp))(tiny, [OTHER]):
        assert v.weights_digest() != unedited and v.cache_key()["weights"] == v.weights_digest()
        with optimizations(monkeypatch) as calls:
            edited = v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates)
        assert calls == [REQUEST]  # the edited model's v* is its own
        assert not torch.equal(edited.v, first.v)
    assert v.weights_digest() == unedited
    with optimizations(monkeypatch) as calls:
        again = v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates)
    assert calls == []  # the undone edit finds the unedited model's entry
    assert_same_value(again, first)
    # any parameter counts, changed in place however (here a norm's weight, through a view of it)
    norm = next(p for name, p in tiny.named_parameters() if "ln" in name or "norm" in name)
    saved = norm.detach().clone()
    with torch.no_grad():
        norm.view(-1)[0] += 1
    assert v.weights_digest() != unedited
    with torch.no_grad():
        norm.copy_(saved)
    assert v.weights_digest() == unedited


def test_a_corrupt_v_star_entry_is_rebuilt_with_a_warning(tiny, cache):
    templates = rome.templates_for(tiny, FAST)
    first = v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates)
    (path,) = entries(cache, "v_star")
    data = path.read_bytes()
    path.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))
    with pytest.warns(UserWarning, match="not trusted"):
        again = v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates)
    assert_same_value(again, first)
    assert v_star.compute_value(tiny, REQUEST, FAST.layer, FAST, templates).seconds == again.seconds  # rewritten


def test_what_does_not_change_v_star_does_not_change_its_key(tiny, cache, monkeypatch):
    """C, its keys and corpus, the damping and the key mix of the update play no part in v*: the editing
    chapter's C study and ROME's code's key mix read the default edit's v*."""
    v = view(tiny)
    variants = [FAST, replace(FAST, mom2_samples=1000, mom2_corpus="other"), replace(FAST, damping=1e-2),
                replace(FAST, unprefixed_key_in_update=True)]
    with optimizations(monkeypatch) as calls:
        edits = []
        for hp, C in zip(variants + [FAST], [torch.eye(v.d_mlp)] * len(variants) + [2 * torch.eye(v.d_mlp)]):
            with rome.ROME(hp, stats=C)(tiny, [REQUEST]) as edit:
                edits.append(edit)
    assert calls == [REQUEST] and len(entries(cache, "v_star")) == 1
    for edit in edits[1:]:
        assert torch.equal(edit.info["v_star"], edits[0].info["v_star"])


@pytest.mark.parametrize("change", [{"v_lr": 0.3}, {"v_steps": 2}, {"layer": 0}, {"kl_factor": 0.5},
                                    {"context_templates": ((3, 3),)}, {"seed": 1}],
                         ids=lambda c: next(iter(c)))
def test_what_changes_v_star_changes_its_key(tiny, cache, monkeypatch, change):
    hp = replace(FAST, **change)
    for h in (FAST, hp):
        v_star.compute_value(tiny, REQUEST, h.layer, h, rome.templates_for(tiny, h))
    assert len(entries(cache, "v_star")) == 2


def test_the_layer_sweep_and_the_localization_study_share_their_edits(tiny, cache, monkeypatch):
    """The editing chapter's layer sweep and the after chapter's localization study edit the same cases at the
    same layers with the same settings: the study optimizes no v* the sweep has optimized."""
    from factlens import data
    from factlens.editing import evaluation, localization
    from factlens.locating.tracing import TraceSettings

    cases, layers = data.counterfact()[:2], localization.swept_layers(view(tiny).n_layers, 1, FAST.layer)
    with optimizations(monkeypatch) as calls:
        for layer in layers:  # the sweep (editing.ipynb), C from the chapter's keys
            evaluation.evaluate_counterfact(tiny, cases, rome.ROME(replace(FAST, layer=layer)), progress=False)
        swept = len(calls)
        settings = localization.LocalizationSettings(layers, trace=TraceSettings("mlp", samples=1, std=1.0))
        localization.localize_and_edit(tiny, cases, settings, replace(FAST, mom2_samples=500), progress=False)
    assert swept == len(cases) * len(layers) == len(calls)


def test_the_chapters_sizes_let_the_study_reuse_the_sweep(repo_root):
    """Per tier, the sweep's cases, candidates and layers are the localization study's (chapters/rome/*.yml)."""
    import yaml

    sweep = yaml.safe_load((repo_root / "chapters/rome/editing.yml").read_text())
    study = yaml.safe_load((repo_root / "chapters/rome/after.yml").read_text())
    for profile in ("cpu", "full"):
        s, a = sweep[profile], study[profile]
        assert (s["sweep_cases"], s["sweep_every"], s["sweep_candidates"]) == (
            a["n_localization"], a["sweep_every"], a["n_counterfact"]), profile
    for profile in sweep:  # the same candidates everywhere: the sweep's cases are the study's first ones
        assert sweep[profile]["sweep_candidates"] == study[profile]["n_counterfact"], profile
