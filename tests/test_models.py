"""Adapters, model sources and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config

from drlightning.models import HeadLayout, adapter_for, check_finite, default_gguf_path
from drlightning.models.loading import check_model_limits, resolve_source

from .tiny import ARCHS, tiny_config, tiny_model, tiny_tokenizer


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


def _copy(src, dst):
    import shutil

    return Path(shutil.copytree(src, dst))


def test_a_checkpoint_with_missing_or_unexpected_tensors_is_refused(tiny_dir, tmp_path):
    from drlightning.models import load_model

    model, _ = load_model(str(tiny_dir("llama")))  # tied embeddings: no lm_head saved, none missing
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    bad = _copy(tiny_dir("llama"), tmp_path / "bad")
    tensors = load_file(bad / "model.safetensors")
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    tensors["model.layers.1.mlp.extra"] = torch.zeros(3)
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"weights in {bad} do not match.*1 tensor missing "
                                         r"\(model.layers.1.mlp.up_proj.weight\); 1 tensor unexpected "
                                         r"\(model.layers.1.mlp.extra\)"):
        load_model(str(bad))


def _corrupt(data: bytes, how: str) -> bytes:
    header = int.from_bytes(data[:8], "little")
    return {"truncated": data[: len(data) // 2], "empty": b"",
            "header": data[:8] + b"#" + data[9:],  # the JSON header no longer parses
            "length": (10 ** 15).to_bytes(8, "little") + data[8:],
            "tail": data[: 8 + header + 100]}[how]


@pytest.mark.parametrize("how", ["truncated", "empty", "header", "length", "tail"])
def test_a_truncated_or_corrupt_weight_file_is_one_line_naming_it(tiny_dir, tmp_path, how):
    import drlightning
    from drlightning.models import load_model
    from drlightning.models.shards import ShardedCheckpoint

    bad = _copy(tiny_dir("llama"), tmp_path / "bad")
    weights = bad / "model.safetensors"
    weights.write_bytes(_corrupt(weights.read_bytes(), how))
    pattern = rf"weight file {weights} is truncated or corrupt \("
    for load in (lambda: load_model(str(bad)), lambda: drlightning.load_pretrained(bad),
                 lambda: ShardedCheckpoint(bad)):
        with pytest.raises(ValueError, match=pattern) as err:
            load()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,shown", [("Infinity", "inf"), ("4096.5", "4096.5"), ("0", "0"),
                                        (str(10 ** 30), "1" + "0" * 30), ('"4096"', "'4096'")])
def test_an_impossible_context_length_is_refused_before_loading(tiny_dir, tmp_path, text, shown):
    import json

    from drlightning.models import load_model
    from drlightning.models.header import model_shape

    bad = _copy(tiny_dir("llama"), tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["max_position_embeddings"] = "@"
    (bad / "config.json").write_text(json.dumps(config).replace('"@"', text))
    (bad / "model.safetensors").unlink()  # refused before the weights are read
    for load in (lambda: load_model(str(bad)), lambda: check_model_limits(model_shape(str(bad)))):
        with pytest.raises(ValueError, match=rf"max_position_embeddings.*{shown}") as err:
            load()
        assert "\n" not in str(err.value)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    from drlightning.models import load_model

    from .tiny import save_tiny_dir

    src = save_tiny_dir(tmp_path / "tiny", "llama", vocab_size=300)  # its tokenizer has 320 tokens
    with pytest.raises(ValueError, match="token ids up to 319 but the model's vocab_size is 300"):
        load_model(str(src))
    config = tiny_config("llama")
    config.vocab_size = 320
    check_model_limits(config, tiny_tokenizer())  # 320 tokens, ids 0..319: fits


@pytest.mark.parametrize("error", ["disk full", "read-only"])
def test_a_gguf_copy_that_cannot_be_written_only_warns(tmp_path, monkeypatch, error):
    from safetensors import SafetensorError

    from drlightning.models import gguf_cache

    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    model = tiny_model("llama")

    def save_pretrained(directory, **kwargs):  # what save_file raises on ENOSPC (safetensors 0.8)
        (Path(directory) / "model.safetensors").write_bytes(b"partial")
        if error == "disk full":
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(model, "save_pretrained", save_pretrained)
    with pytest.warns(UserWarning, match="could not keep a converted copy"):
        assert gguf_cache.store(gguf, model, tiny_tokenizer()) is None
    assert gguf_cache.lookup(gguf) is None
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # the temporary copy is gone
