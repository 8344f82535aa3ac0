"""A run that saved no model says how to get one, and the way it names works: the same fit with
``--run.export.save true`` resumes from state/ and saves the model without training again."""

from __future__ import annotations

import pytest

from drlightning.cli import DRLightningCLI, main

from .tiny import fit_args


def test_eval_of_a_run_without_a_model_says_how_to_get_one(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = fit_args(tiny_dir("llama"), run, steps=3)
    DRLightningCLI(args=[*args, "--run.export.save", "false"])
    assert not (run / "model").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(run)])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "saved no model" in err[0] and "--run.export.save true" in err[0]
    DRLightningCLI(args=[*args, "--run.export.save", "true"])
    out = capsys.readouterr().out
    assert "layers 0-1 were finished by an earlier run" in out
    assert (run / "model" / "config.json").is_file()
    main(["eval", "--model", str(run)])
    assert (run / "eval.json").is_file()


def test_a_checkpoint_path_in_the_rotation_stage_is_refused_with_how_to_resume(tiny_dir, tmp_path,
                                                                              capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*fit_args(tiny_dir("llama"), tmp_path / "run", steps=2), "--ckpt_path",
              "/nonexistent.ckpt"])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "re-run the same command to resume" in err[0]
    assert not (tmp_path / "run" / "state").exists()
