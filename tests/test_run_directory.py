"""Run directories: claimed only once every check passed, reused when nothing was finished, and a
late evaluation failure keeps the saved model. Command-line errors: one message, exit 2."""

from __future__ import annotations

import json

import pytest

from drlightning.cli import main
from drlightning.pipeline.state import RunState

from .tiny import fit_args, save_tiny_dir


def test_failed_run_leaves_no_claim_and_the_corrected_command_succeeds_there(tmp_path, capsys):
    src = save_tiny_dir(tmp_path / "tiny", "llama")  # hidden 64: 3:7 cannot tile it
    run = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(src, run, pattern="3:7", steps=2))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "3:7 needs in_features divisible by M=7" in err and "Traceback" not in err
    assert not (run / "state").exists() and not (run / "config.yaml").exists()
    main(fit_args(src, run, pattern="2:4", steps=2))
    assert json.loads((run / "results.json").read_text())["pattern"] == "2:4"


def test_directory_without_finished_layers_is_reused_with_new_settings(tmp_path, capsys):
    old = RunState(tmp_path, {"model": {"steps": 5}})
    old.check_or_claim()
    old.save_json("dense_eval.json", {"wanted": {}, "result": {"ppl": {"embedded": 1.0}}})
    new = RunState(tmp_path, {"model": {"steps": 7}})
    assert new.check()
    new.claim()
    assert "reusing" in capsys.readouterr().out
    saved = json.loads((tmp_path / "state" / "fingerprint.json").read_text())
    assert saved == {"model": {"steps": 7}}
    assert new.load_json("dense_eval.json") is None  # cached results of other settings dropped
    (tmp_path / "state" / "layer_00.safetensors").write_bytes(b"finished")
    with pytest.raises(ValueError, match=r"(?s)finished layers.*model.steps: 7 → 5"):
        RunState(tmp_path, {"model": {"steps": 5}}).check()


def test_late_evaluation_failure_keeps_the_saved_model(tmp_path, monkeypatch):
    import drlightning.pipeline.placement as placement

    src = save_tiny_dir(tmp_path / "tiny", "qwen2")
    run = tmp_path / "run"

    def broken(*args, **kwargs):
        raise ConnectionError("zero-shot task unreachable")

    monkeypatch.setattr(placement, "evaluate_loaded", broken)
    with pytest.raises(RuntimeError, match=r"saved in .*model — evaluate it again with `drlightning "
                                           r"eval --model"):
        main(["--debug", *fit_args(src, run, steps=2, extra=("--run.eval.dense", "false"))])
    assert (run / "model" / "config.json").is_file()
    assert len(list((run / "state").glob("layer_*.safetensors"))) == 2


def test_unknown_keys_get_one_line_and_a_suggestion(tmp_path, capsys):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(src, tmp_path / "run", extra=("--model.stepz", "3")))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: ") and "did you mean 'model.steps'?" in err[0]
    assert len(err) == 2 and "--debug" in err[1]
    config = tmp_path / "typo.yaml"
    config.write_text("run:\n  eval:\n    zero_shoot: []\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config)])
    assert "did you mean 'run.eval.zero_shot'?" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stepz"):
        main(["--debug", *fit_args(src, tmp_path / "run", extra=("--model.stepz", "3"))])
