"""Bad run-level input fails early with a message naming the value."""

from __future__ import annotations

import re

import pytest

from drlightning.lightning.calibration import CalibrationDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.pipeline.job import run_job
from drlightning.pipeline.options import EvalOptions, ExportOptions, MonitorOptions, RunOptions
from drlightning.reporting.results import ensure_writable

from .tiny import save_tiny_dir


def test_seqlen_longer_than_model_context_is_refused():
    data = CalibrationDataModule(nsamples=2, seqlen=4096)
    with pytest.raises(ValueError, match="seqlen=4096 exceeds the model context of 2048"):
        data.calibration(tokenizer=None, max_length=2048)


@pytest.mark.parametrize("name,value", [("nsamples", 0), ("seqlen", 1), ("batch_size", 0)])
def test_bad_calibration_sizes(name, value):
    with pytest.raises(ValueError, match=f"{name}={value}"):
        CalibrationDataModule(**{name: value})


def test_unwritable_output_dir_fails_before_loading_anything(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="is not writable"):
        ensure_writable(blocker / "run")
    opts = RunOptions(output_dir=str(blocker / "run"), model="/nowhere/model")
    # the writability error comes first, before the (missing) model would be loaded
    with pytest.raises(PermissionError, match="output_dir"):
        run_job(RotationModule(), CalibrationDataModule(), opts)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "obs"}, "unknown method 'obs'; allowed: magnitude, wanda, sparsegpt"),
    ({"steps": -1}, "steps=-1 must be an integer ≥ 0"),
    ({"lr": 0.0}, "lr=0.0 must be a finite number > 0"),
    ({"lr": float("inf")}, "lr=inf must be a finite number > 0"),
    ({"pattern": "0"}, "sparsity '0' is out of range"),
    ({"pattern": "1.0"}, "sparsity '1.0' is out of range"),
    ({"pattern": "100%"}, "sparsity '100%' is out of range"),
    ({"pattern": "4:4"}, "N:M needs 0 < N < M"),
    ({"pattern": "5:4"}, "N:M needs 0 < N < M"),
])
def test_bad_rotation_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RotationModule(**kwargs)


def test_nm_not_dividing_the_width_fails_before_calibration(tmp_path, monkeypatch):
    src = save_tiny_dir(tmp_path / "tiny", "llama")  # hidden 64, intermediate 96
    data = CalibrationDataModule(nsamples=2, seqlen=16)
    monkeypatch.setattr(data, "calibration", lambda *a: pytest.fail("calibration started"))
    opts = RunOptions(model=str(src), output_dir=str(tmp_path / "run"),
                      monitor=MonitorOptions(progress=False))
    with pytest.raises(ValueError, match=r"3:7 needs in_features divisible by M=7.*q_proj"):
        run_job(RotationModule(pattern="3:7"), data, opts)
    with pytest.raises(ValueError, match=r"needs in_features divisible by M=64.*down_proj"):
        run_job(RotationModule(pattern="32:64"), data, RunOptions(
            model=str(src), output_dir=str(tmp_path / "run2"), monitor=MonitorOptions(progress=False)))


def test_tiny_calibration_singular_hessians_are_handled_by_damping(tmp_path):
    # 1 window of 4 tokens: every 64×64 Hessian has rank ≤ 4
    src = save_tiny_dir(tmp_path / "tiny", "qwen2")
    res = run_job(RotationModule(pattern="2:4", steps=3), CalibrationDataModule(nsamples=1, seqlen=4),
                  RunOptions(model=str(src), output_dir=str(tmp_path / "run"),
                             monitor=MonitorOptions(tensorboard=False, progress=False),
                             eval=EvalOptions(max_windows=1)))
    assert all(layer["sparsity"]["down"] == 0.5 for layer in res["layers"])
    assert all(v < float("inf") for v in res["ppl"].values())


def test_unknown_rotation_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="rotation_dtype='int8'; allowed: 'auto', 'model'"):
        run_job(RotationModule(), CalibrationDataModule(),
                RunOptions(output_dir=str(tmp_path), export=ExportOptions(rotation_dtype="int8")))
