"""Parallel mode: rotations trained from one dense pass, spread over processes (gloo on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from drlightning.cli import DRLightningCLI
from drlightning.pipeline.parallel import Ranks, RotationStore

from .tiny import checkout_env, fit_args, save_tiny_dir

ENV = checkout_env(OMP_NUM_THREADS="1")


def _launch(nproc: int, args: list[str]) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--standalone", "-m", "drlightning.cli", *args]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow  # 36 s: two processes; the slow part of CI runs it
def test_two_processes_give_the_one_process_model_and_layer0_matches_sequential(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama", num_hidden_layers=4)
    runs = {name: tmp_path / name for name in ("w1", "w2", "seq")}
    par = ("--run.launch.mode", "parallel")
    _launch(1, fit_args(src, runs["w1"], steps=30, extra=par))
    _launch(2, fit_args(src, runs["w2"], steps=30, extra=(*par, "--run.monitor.tensorboard", "true")))
    seq = subprocess.run([sys.executable, "-m", "drlightning.cli", *fit_args(src, runs["seq"], steps=30)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert seq.returncode == 0, seq.stderr[-3000:]

    one = load_file(runs["w1"] / "model" / "model.safetensors")
    two = load_file(runs["w2"] / "model" / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key
    results = json.loads((runs["w2"] / "results.json").read_text())
    assert [layer["rank"] for layer in results["layers"]] == [0, 1, 0, 1]
    assert results["options"]["launch"]["mode"] == "parallel"
    assert all(abs(layer["sparsity"]["down"] - 0.5) < 1e-6 for layer in results["layers"])
    # every rank logs its own layers' curves
    assert sorted(p.name for p in (runs["w2"] / "tensorboard").iterdir()) == [
        "layer_00", "layer_01", "layer_02", "layer_03", "summary"]
    # layer 0 sees the same (dense) inputs in both protocols → the same rotation; layer 1 does not
    seq0 = load_file(runs["seq"] / "state" / "layer_00.safetensors")["rotation"]
    par0 = load_file(runs["w2"] / "state" / "rotations" / "layer_00.safetensors")["q"]
    assert torch.equal(seq0, par0)
    seq1 = load_file(runs["seq"] / "state" / "layer_01.safetensors")["rotation"]
    par1 = load_file(runs["w2"] / "state" / "rotations" / "layer_01.safetensors")["q"]
    assert not torch.allclose(seq1, par1, atol=1e-3)


def test_trained_rotations_are_reused_after_an_interruption(tmp_path, monkeypatch):
    src = save_tiny_dir(tmp_path / "tiny", "llama", num_hidden_layers=3)
    run = tmp_path / "run"
    args = fit_args(src, run, steps=10, extra=("--run.launch.mode", "parallel"))
    first = DRLightningCLI(args=args).results
    # simulate a crash after rotation training: only the rotations survive
    for f in (run / "state").glob("layer_*.safetensors"):
        f.unlink()
    (run / "results.json").unlink()
    from drlightning.lightning.layer_data import LayerDataModule

    def no_training(*a, **k):
        raise AssertionError("rotations were retrained although saved")

    monkeypatch.setattr(LayerDataModule, "train_dataloader", no_training)
    again = DRLightningCLI(args=args).results
    assert again["ppl"] == first["ppl"]
    assert [x["best_loss"] for x in again["layers"]] == [x["best_loss"] for x in first["layers"]]


def test_parallel_mode_settings_are_checked(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    with pytest.raises(ValueError, match=r"run.launch.mode='both'; allowed: 'sequential', 'parallel'"):
        DRLightningCLI(args=fit_args(src, tmp_path / "a", steps=2, extra=("--run.launch.mode", "both")))
    with pytest.raises(ValueError, match=r"model.steps=0"):
        DRLightningCLI(args=fit_args(src, tmp_path / "b", steps=0, extra=("--run.launch.mode", "parallel")))
    DRLightningCLI(args=fit_args(src, tmp_path / "c", steps=2))
    with pytest.raises(ValueError, match=r"run.launch.mode: '<unset>' → 'parallel'"):
        DRLightningCLI(args=fit_args(src, tmp_path / "c", steps=2, extra=("--run.launch.mode", "parallel")))


def test_ranks_split_layers_round_robin_and_missing_rotations_are_named(tmp_path):
    ranks = [Ranks(rank=r, world=3) for r in range(3)]
    assert [[i for i in range(7) if rk.owns(i)] for rk in ranks] == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(FileNotFoundError, match=r"no trained rotations for layer 4 in .*every rank"):
        RotationStore(tmp_path).load(4)
