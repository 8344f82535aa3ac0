"""The model ``drlightning.prune`` returns saves itself: ``result.model.save_pretrained(d)`` writes
the same directory a run saves, and it reloads to the same logits with remote code and with
``drlightning.load_pretrained``, while plain transformers refuses it (never another model)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import drlightning

from .tiny import ARCHS, MOE_ARCHS, checkout_env, save_tiny_dir

QUICK = {"method": "wanda", "pattern": "2:4", "nsamples": 4, "seqlen": 32, "progress": False,
         "eval": False}
IDS = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))

REMOTE = """
import sys; sys.modules['drlightning'] = None  # plain transformers only
import torch
from transformers import AutoModelForCausalLM
d, ids, out = sys.argv[1:4]
try:
    AutoModelForCausalLM.from_pretrained(d)
    raise SystemExit('loaded without trust_remote_code')
except ValueError as err:
    assert 'trust_remote_code' in str(err), err
m = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True, experts_implementation='eager')
assert type(m).__module__.startswith('transformers_modules'), type(m).__module__
with torch.no_grad():
    torch.save(m.eval()(torch.load(ids, weights_only=True)).logits, out)
"""


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def logits(model) -> torch.Tensor:
    if getattr(model.config, "num_experts", None) or getattr(model.config, "num_local_experts", None):
        model.set_experts_implementation("eager")  # the same kernel in every load
    with torch.no_grad():
        return model.eval()(IDS).logits


def prune_tiny(tmp_path, arch: str, **options):
    # Qwen2Tokenizer adds <|endoftext|> after the tiny vocabulary: its id needs an embedding row
    src = save_tiny_dir(tmp_path / "tiny", arch)
    return drlightning.prune(str(src), output_dir=tmp_path / "run", **{**QUICK, **options})


def check_rotated_round_trip(tmp_path, arch: str, result=None) -> None:
    result = result or prune_tiny(tmp_path, arch, steps=3)
    model, saved = result.model, tmp_path / "saved"
    assert type(model).__name__ == "DRLightningForCausalLM"
    assert model.config.model_type == f"drlightning_{arch}"
    ref = logits(model)
    model.save_pretrained(saved)
    run_model = tmp_path / "run" / "model"  # the run saved the same model the same way
    config = json.loads((saved / "config.json").read_text())
    assert config == json.loads((run_model / "config.json").read_text())
    assert config["architectures"] == ["DRLightningForCausalLM"] and "quantization_config" not in config
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_drlightning.DRLightningForCausalLM"
    source = (saved / "modeling_drlightning.py").read_text()
    assert f"BASE_MODEL_TYPE = {arch!r}" in source
    assert source == (run_model / "modeling_drlightning.py").read_text()
    ours, theirs = load_file(saved / "model.safetensors"), load_file(run_model / "model.safetensors")
    assert ours.keys() == theirs.keys() and any(k.startswith("drl_rotations.") for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert rel(logits(drlightning.load_pretrained(saved)), ref) <= 1e-6
    torch.save(IDS, tmp_path / "ids.pt")  # remote code, and plain transformers' refusal, elsewhere
    subprocess.run([sys.executable, "-c", REMOTE, str(saved), str(tmp_path / "ids.pt"),
                    str(tmp_path / "remote.pt")], check=True, cwd=tmp_path, env=checkout_env())
    assert rel(torch.load(tmp_path / "remote.pt", weights_only=True), ref) <= 1e-6


@pytest.fixture(scope="module")
def pruned_llama(tmp_path_factory):
    """(work directory, result) of one quick rotated prune of a tiny Llama (tied embeddings)."""
    work = tmp_path_factory.mktemp("llama")
    return work, prune_tiny(work, "llama", steps=3)


def test_a_pruned_llama_saves_itself_and_reloads_to_the_same_logits(pruned_llama):
    work, result = pruned_llama
    check_rotated_round_trip(work, "llama", result)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in (*ARCHS, *MOE_ARCHS) if a != "llama"])
def test_every_family_saves_itself_and_reloads_to_the_same_logits(tmp_path, arch):
    check_rotated_round_trip(tmp_path, arch)


def test_an_unrotated_model_stays_plain_and_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM

    result = prune_tiny(tmp_path, "qwen2", steps=0, permute=False)
    assert type(result.model).__name__ == "Qwen2ForCausalLM" and not hasattr(result.model, "drl_rotations")
    result.model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "auto_map" not in config
    assert rel(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "saved")), logits(result.model)) <= 1e-6


@pytest.mark.slow
def test_a_shared_rotation_model_stays_plain_and_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM

    result = prune_tiny(tmp_path, "mistral", steps=3, r1="shared")
    assert type(result.model).__name__ == "MistralForCausalLM" and not hasattr(result.model, "drl_rotations")
    result.model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "mistral"
    assert rel(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "saved")), logits(result.model)) <= 1e-6


def test_save_model_dir_refuses_fields_that_contradict_the_model(pruned_llama, tmp_path):
    from drlightning.export import save_model_dir

    _, result = pruned_llama
    with pytest.raises(ValueError, match="drl_boundaries"):
        save_model_dir(result.model, result.tokenizer, tmp_path / "out", {"drl_boundaries": [0]})
    assert not (tmp_path / "out").exists()
