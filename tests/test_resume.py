"""Runs survive crashes: per-layer state, bit-identical resume, refusal of changed settings."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from drlightning.cli import DRLightningCLI

from .tiny import fit_args, save_tiny_dir


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "drlightning.cli", *args]


def _same_tensors(a, b) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_sigkill_mid_run_then_rerun_is_bit_identical(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama", num_hidden_layers=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cli(fit_args(src, full, steps=300)), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cli(fit_args(src, killed, steps=300)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "state" / "layer_01.safetensors"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert proc.returncode == -9, "the run ended before it could be killed mid-way"
    assert not (killed / "model").exists() and not (killed / "results.json").exists()

    out = subprocess.run(_cli(fit_args(src, killed, steps=300)), check=True, env=env,
                         capture_output=True, text=True).stdout
    assert "resuming" in out and "were finished by an earlier run" in out
    _same_tensors(full / "model" / "model.safetensors", killed / "model" / "model.safetensors")


def test_changed_settings_are_refused_naming_the_difference(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "qwen2")
    DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=3))
    with pytest.raises(ValueError, match=r"(?s)other settings.*model\.steps: 3 → 4"):
        DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=4))
    with pytest.raises(ValueError, match=r"data\.nsamples: 8 → 4"):
        DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=3, nsamples=4))
    # a setting added later shows the value older runs had (what to pass to resume them)
    with pytest.raises(ValueError, match=r"model\.r1_blocks: 1 → 2"):
        DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=3, extra=("--model.r1_blocks", "2")))
    with pytest.raises(ValueError, match=r"model\.role_weights: 'measured' → 'equal'"):
        DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=3,
                                     extra=("--model.role_weights", "equal")))
    # settings that do not shape the layers (evaluation, progress) may change
    DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=3,
                                 extra=("--run.eval.max_windows", "1")))
    # a setting added later, at its default, is left out of the fingerprint (old runs resume)
    fp = json.loads((tmp_path / "run" / "state" / "fingerprint.json").read_text())
    assert "r1_blocks" not in fp["model"]


def test_disk_full_while_saving_a_layer_keeps_the_previous_state(tmp_path, monkeypatch):
    import drlightning.pipeline.state_files as run_state

    src = save_tiny_dir(tmp_path / "tiny", "mistral", num_hidden_layers=3)
    real = run_state.save_file

    def flaky(tensors, path, metadata=None):
        if len(list((tmp_path / "run" / "state").glob("layer_*.safetensors"))) == 1:
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(run_state, "save_file", flaky)
    with pytest.raises(OSError, match="No space left"):
        DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=5))
    state = tmp_path / "run" / "state"
    assert sorted(p.name for p in state.iterdir() if not p.name.endswith(".json")) == [
        "layer_00.safetensors"]
    assert "layer.self_attn.q_proj.weight" in load_file(state / "layer_00.safetensors")
    monkeypatch.setattr(run_state, "save_file", real)
    cli = DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=5))
    assert len(cli.results["layers"]) == 3


def test_disk_full_while_saving_the_model_keeps_the_previous_model(tmp_path, monkeypatch):
    import drlightning.export.hf_dir as hf_dir

    src = save_tiny_dir(tmp_path / "tiny", "llama")
    DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=2))
    model_dir = tmp_path / "run" / "model"
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf_dir, "_rewrite_config", full_disk)
    with pytest.raises(OSError, match="No space left"):
        DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=2))
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the half-written temporary model directory was removed


def test_resumed_runs_record_total_and_this_attempts_wall_time(tmp_path):
    from drlightning.pipeline.state import RunClock, RunState
    from drlightning.reporting.results import format_table

    state = RunState(tmp_path, {"model": {"steps": 1}})
    state.check_or_claim()
    first = RunClock(state)
    assert first.earlier == 0.0
    state.save_json("elapsed.json", {"seconds": 120.0})  # an attempt killed after 2 minutes
    again = RunClock(state)
    assert again.total() >= 120.0 and again.this_run() < 120.0
    again.save()
    assert RunClock(state).earlier >= 120.0
    table = format_table({"model": "m", "method": "sparsegpt", "pattern": "2:4", "steps": 1,
                          "ppl": {}, "dense_ppl": {}, "seconds": again.total(),
                          "seconds_this_run": again.this_run()})
    assert "in this attempt, resumed" in table
