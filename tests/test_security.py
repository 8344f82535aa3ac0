"""Inputs are never unpickled and never run remote code unless the user asks for it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from drlightning.models import load_model

from .tiny import save_tiny_dir

ROOT = Path(__file__).resolve().parents[1]


def test_pickled_weights_are_refused(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    from safetensors.torch import load_file

    torch.save(load_file(src / "model.safetensors"), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="only from\\s+safetensors or GGUF"):
        load_model(str(src))


def test_remote_code_of_input_models_is_not_run_by_default(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    marker = tmp_path / "remote-code-ran"
    (src / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n"
        "from transformers import LlamaConfig\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'llama'\n")
    cfg = json.loads((src / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (src / "config.json").write_text(json.dumps(cfg))
    model, _ = load_model(str(src))  # the built-in Llama code is used, evil.py is not imported
    assert not marker.exists()
    assert type(model).__module__.startswith("transformers.models.llama")


def test_no_unsafe_torch_load_in_the_package():
    for path in [*ROOT.glob("drlightning/**/*.py"), *ROOT.glob("callbacks/*.py")]:
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: {call}"
