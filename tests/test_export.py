"""Saved runs are plain Hugging Face directories: exact function, strict loading, real sparsity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import drlightning
from drlightning.cli import DRLightningCLI
from drlightning.export import boundary_matrices
from drlightning.rotation import random_orthogonal

from .tiny import ARCHS, fit_args, save_tiny_dir

ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def dense_logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def rotated_runs(tmp_path_factory):
    """One rotate-only (pattern none) run per architecture: (tiny dir, run dir)."""
    runs = {}
    for arch in ARCHS:
        base = tmp_path_factory.mktemp(arch)
        src = save_tiny_dir(base / "tiny", arch)
        DRLightningCLI(args=fit_args(src, base / "run", pattern="none", steps=15))
        runs[arch] = (src, base / "run")
    return runs


def test_boundary_matrices_merge_exit_and_entry():
    q = [random_orthogonal(6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    mats = boundary_matrices([q[0], None, q[1], q[2]])
    assert sorted(mats) == [0, 1, 2, 3, 4]
    assert torch.equal(mats[0], q[0]) and torch.equal(mats[1], q[0].T)
    assert torch.equal(mats[2], q[1]) and torch.allclose(mats[3], q[1].T @ q[2])
    assert torch.equal(mats[4], q[2].T)
    assert boundary_matrices([None, None]) == {}


@pytest.mark.parametrize("arch", ARCHS)
def test_rotate_only_run_saves_a_model_matching_dense(rotated_runs, arch):
    src, run = rotated_runs[arch]
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["model_type"] == f"drlightning_{arch}" and cfg["drl_boundaries"] == [0, 1, 2]
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    model = drlightning.load_pretrained(run / "model")
    assert not any(torch.equal(model.drl_rotations.matrix(b), torch.eye(64)) for b in (0, 1, 2))
    with torch.no_grad():
        got = model(ids).logits
    assert rel(got, dense_logits(src, ids)) <= 1e-4


def test_remote_code_loading_needs_no_drlightning_and_is_required(rotated_runs):
    src, run = rotated_runs["llama"]
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(1))
    torch.save(ids, run / "ids.pt")
    script = (
        "import sys; sys.modules['drlightning'] = None\n"
        "import torch\nfrom transformers import AutoModelForCausalLM\n"
        "try:\n"
        f"    AutoModelForCausalLM.from_pretrained({str(run / 'model')!r})\n"
        "    raise SystemExit('loaded without trust_remote_code')\n"
        "except ValueError as err:\n"
        "    assert 'trust_remote_code' in str(err)\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(run / 'model')!r}, trust_remote_code=True)\n"
        f"ids = torch.load({str(run / 'ids.pt')!r}, weights_only=True)\n"
        "assert type(m).__module__.startswith('transformers_modules'), type(m).__module__\n"
        f"torch.save(m(ids).logits.detach(), {str(run / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=run)
    got = torch.load(run / "logits.pt", weights_only=True)
    assert rel(got, dense_logits(src, ids)) <= 1e-4


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_loading_is_strict(rotated_runs, tmp_path, change):
    import shutil

    _, run = rotated_runs["llama"]
    bad = tmp_path / "bad"
    shutil.copytree(run / "model", bad)
    tensors = load_file(bad / "model.safetensors")
    if change == "missing":
        tensors.pop("model.layers.1.mlp.up_proj.weight")
    elif change == "unexpected":
        tensors["model.layers.1.mlp.extra"] = torch.zeros(3)
    else:
        tensors["drl_rotations.m1"] = torch.eye(32)
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises((ValueError, RuntimeError)):
        drlightning.load_pretrained(bad)


def test_rotations_keep_float32_when_loaded_in_bfloat16(rotated_runs):
    _, run = rotated_runs["mistral"]
    full = drlightning.load_pretrained(run / "model")
    half = drlightning.load_pretrained(run / "model", dtype="bfloat16")
    assert half.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert half.drl_rotations.m1.dtype == torch.float32
    assert torch.equal(half.drl_rotations.m1, full.drl_rotations.m1)
    half.to(torch.float16)
    assert half.drl_rotations.m1.dtype == torch.float32


@pytest.fixture(scope="module")
def pruned_runs(finished_run):
    """SparseGPT 2:4 and Wanda 50% runs on a tiny Llama (the session's shared runs)."""
    return {"2:4": finished_run(method="sparsegpt", pattern="2:4"),
            "50%": finished_run(method="wanda", pattern="50%")}


def test_saved_weights_have_the_requested_pattern(pruned_runs):
    for pattern, run in pruned_runs.items():
        tensors = load_file(run / "model" / "model.safetensors")
        for layer in range(2):
            for role in ROLES:
                block = "self_attn" if role[0] in "qkvo" else "mlp"
                name = f"model.layers.{layer}.{block}.{role}.weight"
                w = tensors[name]
                if pattern == "2:4":
                    zeros = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
                    assert (zeros == 2).all(), name
                else:
                    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=1e-6), name


def test_saved_model_generates_and_loads_in_lm_eval(pruned_runs):
    run = pruned_runs["2:4"]
    model, tok = drlightning.load_pretrained(run / "model", with_tokenizer=True)
    ids = tok("The object", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 5)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(run / "model"), trust_remote_code=True, batch_size=1, device="cpu")
    req = Instance("loglikelihood", {}, ("The object", " is"), 0)
    (logprob, _), = lm.loglikelihood([req])
    assert logprob < 0 and torch.isfinite(torch.tensor(logprob))


def test_run_directory_records_provenance(rotated_runs):
    _, run = rotated_runs["llama"]
    res = json.loads((run / "results.json").read_text())
    assert res["settings"] == {"seed_everything": 0, "trainer": {"precision": "32-true"}}
    assert {"python", "torch", "lightning", "transformers", "lm_eval"} <= set(res["versions"])
    assert res["device"].startswith("cpu") and res["seconds"] > 0
    assert all(layer["seconds"] > 0 and "fit_seconds" in layer for layer in res["layers"])
    assert {"perplexity", "calibration"} <= set(res["eval"]["protocol"])
    assert res["calibration"]["seed"] == 0 and res["calibration"]["nsamples"] == 8
    assert res["export"]["boundary_merge_error"] < 1e-5
    assert "pattern: none" in (run / "config.yaml").read_text()


def test_unrotated_run_saves_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    src = save_tiny_dir(tmp_path / "tiny", "qwen2")
    DRLightningCLI(args=fit_args(src, tmp_path / "run", method="wanda", steps=0,
                                 extra=("--model.permute", "false")))
    model_dir = tmp_path / "run" / "model"
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "qwen2"
    assert not (model_dir / "modeling_drlightning.py").exists()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    w = model.model.layers[1].mlp.down_proj.weight
    assert (w.reshape(w.shape[0], -1, 4) == 0).sum(-1).eq(2).all()


def test_block_diagonal_r1_run_is_function_preserving(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    DRLightningCLI(args=fit_args(src, tmp_path / "run", pattern="none", steps=10,
                                 extra=("--model.r1_blocks", "4")))
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["rotation"]["r1_blocks"] == 4
    model = drlightning.load_pretrained(tmp_path / "run" / "model")
    m = model.drl_rotations.matrix(1).double()  # Q_1ᵀ Q_0: block-diagonal in 4 blocks of 16
    mask = torch.block_diag(*[torch.ones(16, 16)] * 4).bool()
    assert m[~mask].abs().max() < 1e-6 and not torch.allclose(m, torch.eye(64, dtype=m.dtype))
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(ids).logits
    assert rel(got, dense_logits(src, ids)) <= 1e-4
    with pytest.raises(ValueError, match="r1_blocks=3 does not divide the hidden size 64"):
        DRLightningCLI(args=fit_args(src, tmp_path / "bad", pattern="none", steps=1,
                                     extra=("--model.r1_blocks", "3")))
