"""The traps a new user hit, each closed: unquoted N:M in YAML, `drlightning eval <run dir>` with
another protocol or over the run's numbers, lm-eval's batch size, a logger dropped silently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from drlightning.cli import DRLightningCLI, main
from drlightning.eval.plan import EvalPlan

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pattern, number", [("2:4", 124), ("4:8", 248)])
def test_unquoted_nm_in_yaml_says_to_quote_it(tmp_path, pattern, number):
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  method: wanda\n  pattern: {pattern}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"pattern={number} \(YAML reads an unquoted {pattern} "
                                         rf"as {number}.*quote N:M patterns in YAML"):
        DRLightningCLI(args=["fit", "--config", str(config), "--run.output_dir", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_eval_of_a_run_directory_uses_its_protocol_and_keeps_earlier_files(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run(method="wanda", pattern="2:4", seqlen=48), run)
    res = json.loads((run / "results.json").read_text())
    main(["eval", "--model", str(run), "--progress", "false"])
    first = json.loads((run / "eval.json").read_text())
    assert first["eval"]["seqlen"] == res["eval"]["seqlen"] == 48  # not 512
    assert first["eval"]["max_windows"] == res["eval"]["max_windows"] == 2
    assert first["ppl"]["embedded"] == pytest.approx(res["ppl"]["embedded"], rel=1e-5)
    main(["eval", "--model", str(run), "--eval.seqlen", "32", "--progress", "false"])
    assert json.loads((run / "eval.json").read_text()) == first  # not written over
    assert json.loads((run / "eval-2.json").read_text())["eval"]["seqlen"] == 32


def test_eval_batch_size_reaches_lm_eval(monkeypatch):
    import drlightning.eval.api as api

    seen = {}

    def fake_zero_shot(model, tokenizer, tasks, **kwargs):
        seen.update(kwargs)
        return {"tasks": {}, "mean": 0.0}

    monkeypatch.setattr(api, "zero_shot", fake_zero_shot)
    monkeypatch.setattr(api, "load_eval_text", lambda name: "text")
    api.evaluate_loaded(None, None, EvalPlan(data=[], zero_shot=["drl_continuation"], batch_size=3))
    assert seen["batch_size"] == 3


def test_a_logger_in_the_config_is_refused_not_dropped(tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.logger=CSVLogger: .*not supported yet"):
        DRLightningCLI(args=["fit", "--config", str(ROOT / "configs/smollm2/wanda-2of4.yaml"),
                             "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                             "--trainer.logger.save_dir", str(tmp_path / "csv"),
                             "--run.output_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_old_eval_flags_and_lora_keys_name_their_new_place(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--model", "x", "--tasks", "[drl_continuation]", "--ppl", "[embedded]"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "tasks → eval.zero_shot" in err and "ppl → eval.data" in err
    with pytest.raises(SystemExit):
        main(["lora", "fit", "--export.eval_data", "[embedded]"])
    assert "export.eval_data → export.eval.data" in capsys.readouterr().err


def test_layerwise_eval_of_a_run_leaves_its_zero_shot_tasks_out(tmp_path, capsys):
    from drlightning.eval.api import run_plan

    options = {"eval": {"data": ["embedded"], "seqlen": None, "max_windows": 3, "batch_size": 2,
                        "zero_shot": ["drl_continuation"], "dense": True}}
    (tmp_path / "results.json").write_text(json.dumps({"options": options, "eval": {"seqlen": 64}}))
    whole, streamed = run_plan(tmp_path), run_plan(tmp_path, layerwise=True)
    assert whole == EvalPlan(data=["embedded"], seqlen=64, max_windows=3, batch_size=2,
                             zero_shot=["drl_continuation"])
    assert streamed.zero_shot == [] and streamed.seqlen == 64
    assert "perplexity only" in capsys.readouterr().out
