"""Adapters, model sources and their errors."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config

from drlightning.models import HeadLayout, adapter_for, check_finite, default_gguf_path
from drlightning.models.loading import resolve_source

from .tiny import ARCHS, tiny_config, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_adapters_find_every_role(arch):
    model = tiny_model(arch)
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    layer = adapter.decoder_layers(model)[0]
    shapes = {r: tuple(adapter.linear(layer, r).weight.shape) for r in
              ("q", "k", "v", "o", "gate", "up", "down")}
    d, hd = layout.hidden, layout.head_dim
    assert shapes["q"] == (layout.n_heads * hd, d) and shapes["v"] == (layout.n_kv_heads * hd, d)
    assert shapes["o"] == (d, layout.n_heads * hd) and shapes["down"] == (d, layout.intermediate)
    assert layout.n_rep == 2
    assert (adapter.linear(layer, "q").bias is not None) == (arch == "qwen2")


def test_unsupported_architecture_names_supported_ones():
    supported = "llama, mistral, mixtral, phi3, qwen2, qwen3, qwen3_moe"
    with pytest.raises(ValueError, match=rf"model_type='gpt2'.*{supported}"):
        adapter_for(GPT2Config())


def test_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "model.gguf"))
    with pytest.raises(FileNotFoundError, match="model path not found"):
        resolve_source(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_source(str(tmp_path))
    assert resolve_source("org/some-model") == ("org/some-model", None)


def test_local_directory_and_embedded_gguf_resolve(tmp_path):
    tiny_config("llama").save_pretrained(tmp_path)
    assert resolve_source(str(tmp_path)) == (str(tmp_path), None)
    path = default_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert resolve_source("smollm2-135m-instruct") == (str(path.parent), path.name)


def test_nan_weights_are_rejected():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layers.1.mlp.up_proj.weight"):
        check_finite(model)


@pytest.mark.slow
def test_embedded_gguf_is_dequantised_once_and_its_copy_loads_identically(tmp_path, monkeypatch):
    from drlightning.models import gguf_cache, load_model

    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path))  # a fresh cache: the first load converts
    direct, tok_direct = load_model()
    copy_dir = gguf_cache.lookup(default_gguf_path())
    assert copy_dir is not None and copy_dir.parent == tmp_path / "gguf"
    cached, tok_cached = load_model()
    assert cached.config._name_or_path == str(copy_dir)  # read from the copy, not the GGUF file
    a, b = direct.state_dict(), cached.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # tied
    skip = {"_name_or_path"}
    assert ({k: v for k, v in direct.config.to_dict().items() if k not in skip}
            == {k: v for k, v in cached.config.to_dict().items() if k not in skip})
    text = "<|im_start|>user\nPruning keeps the important weights, émigré 42.<|im_end|>"
    assert tok_direct(text).input_ids == tok_cached(text).input_ids
    assert (tok_direct.chat_template, tok_direct.eos_token, tok_direct.pad_token) == (
        tok_cached.chat_template, tok_cached.eos_token, tok_cached.pad_token)
    assert direct.generation_config.to_dict() == cached.generation_config.to_dict()
