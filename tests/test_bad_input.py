"""Bad run-level input fails early with a message naming the value."""

from __future__ import annotations

import pytest

from drlightning.calibration_data import CalibrationDataModule
from drlightning.results import ensure_writable
from drlightning.rotation_module import RotationModule
from drlightning.run import RunOptions, run_job


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
