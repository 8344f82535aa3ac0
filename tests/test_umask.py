"""Every file drlightning writes follows the umask, even those whose writer (safetensors,
``save_pretrained``) creates a private 0600 file of its own: run state, saved model, GGUF copy."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from drlightning.export import save_model_dir
from drlightning.models import gguf_cache
from drlightning.pipeline.state import atomic_save_tensors

from .tiny import tiny_model, tiny_tokenizer

MODES = [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]


@pytest.fixture
def set_umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): _mode(p) for p in [root, *root.rglob("*")]}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama"), tiny_tokenizer()


@pytest.mark.parametrize("mask,file_mode,dir_mode", MODES)
def test_a_state_layer_file_follows_the_umask(tmp_path, set_umask, mask, file_mode, dir_mode):
    set_umask(mask)
    path = tmp_path / "state" / "layer_00.safetensors"
    atomic_save_tensors({"q": torch.eye(4)}, path, {"run": "x"})
    assert _mode(path) == file_mode
    assert sorted(p.name for p in path.parent.iterdir()) == ["layer_00.safetensors"]


@pytest.mark.parametrize("mask,file_mode,dir_mode", MODES)
def test_a_saved_model_directory_follows_the_umask(tmp_path, set_umask, tiny, mask, file_mode, dir_mode):
    set_umask(mask)
    out = save_model_dir(*tiny, tmp_path / "model")
    modes = _modes(out)
    assert "model.safetensors" in modes and "tokenizer.json" in modes
    assert modes.pop(".") == dir_mode
    assert set(modes.values()) == {file_mode}, modes


@pytest.mark.parametrize("mask,file_mode,dir_mode", MODES)
def test_a_gguf_cache_copy_follows_the_umask(tmp_path, monkeypatch, set_umask, tiny, mask, file_mode,
                                             dir_mode):
    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # the copy is keyed by the file's path, size and time only
    set_umask(mask)
    copy = gguf_cache.store(gguf, *tiny)
    assert copy is not None and gguf_cache.lookup(gguf) == copy
    modes = _modes(copy)
    assert "model.safetensors" in modes and modes.pop(".") == dir_mode
    assert set(modes.values()) == {file_mode}, modes
