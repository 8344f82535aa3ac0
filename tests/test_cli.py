"""Every config parses; the CLI runs end to end on the real embedded model with tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drlightning.cli import DRLightningCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.stem != "lora")


def test_there_are_configs_for_every_default_combination():
    names = {p.stem for p in (ROOT / "configs" / "smollm2").glob("*.yaml")}
    assert names == {f"{m}-{p}" for m in ("magnitude", "wanda", "sparsegpt")
                     for p in ("50pct", "2of4", "4of8")} | {"lora"}
    for model in ("llama3-8b", "qwen2.5-7b", "mistral-7b"):
        assert list((ROOT / "configs" / model).glob("*.yaml")), model


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses(path):
    cli = DRLightningCLI(args=["--config", str(path)], run=False)
    assert cli.model.hparams.method in path.stem
    assert cli.trainer.max_steps == cli.model.hparams.steps


def test_lora_config_parses_with_paper_defaults():
    from drlightning.lora import PAPER_DEFAULTS
    from drlightning.lora.cli import LoRACLI

    path = ROOT / "configs" / "smollm2" / "lora.yaml"
    cli = LoRACLI(args=["--config", str(path), "--model.model", "smollm2-135m-instruct"], run=False)
    hp = cli.model.hparams
    assert {k: hp[k] for k in PAPER_DEFAULTS if k != "warmup_steps"} == {
        k: v for k, v in PAPER_DEFAULTS.items() if k != "warmup_steps"}
    assert cli.trainer.max_steps == 200 and hp.mask_updates
    assert any(type(c).__name__ == "LoRAExport" for c in cli.trainer.callbacks)


def test_bf16_true_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match="bf16-true"):
        DRLightningCLI(args=["fit", "--config", str(ROOT / "configs/smollm2/wanda-2of4.yaml"),
                             "--trainer.precision", "bf16-true", "--run.output_dir", str(tmp_path)])


def test_trainer_clip_value_other_than_grad_clip_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"gradient_clip_val=0\.5 differs from model\.grad_clip=1\.0"):
        DRLightningCLI(args=["fit", "--config", str(ROOT / "configs/smollm2/wanda-2of4.yaml"),
                             "--trainer.gradient_clip_val", "0.5", "--run.output_dir", str(tmp_path)])


@pytest.mark.slow
def test_fit_on_embedded_model_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    cli = DRLightningCLI(args=[
        "fit", "--config", str(ROOT / "configs/smollm2/sparsegpt-2of4.yaml"),
        "--model.steps", "2", "--data.nsamples", "4", "--data.seqlen", "64",
        "--run.eval_max_windows", "4", "--run.output_dir", str(out), "--run.progress", "false",
        "--run.zero_shot", "[drl_continuation]", "--run.task_items", "8",
        "--model.permute", "false",  # permutations and the guard: tested on tiny models (faster)
        "--model.guard", "false",
    ])
    res = json.loads((out / "results.json").read_text())
    assert res == json.loads(json.dumps(cli.results))
    for key in ("model", "method", "pattern", "steps", "calibration", "ppl", "dense_ppl",
                "seconds", "versions"):
        assert key in res
    assert res["method"] == "sparsegpt" and res["pattern"] == "2:4" and res["steps"] == 2
    assert res["calibration"]["nsamples"] == 4 and res["calibration"]["seqlen"] == 64
    dense, pruned = res["dense_ppl"]["embedded"], res["ppl"]["embedded"]
    assert 1 < dense < pruned < 1e4
    assert len(res["layers"]) == 30
    assert res["zero_shot"]["tasks"]["drl_continuation"]["n"] == 8
    assert (out / "config.yaml").read_text().count("sparsegpt") >= 1
    assert "dense ppl" in capsys.readouterr().out
    assert any((out / "tensorboard").iterdir())


def test_print_config_shows_resolved_settings(capsys):
    with pytest.raises(SystemExit):
        DRLightningCLI(args=["fit", "--config", str(ROOT / "configs/smollm2/wanda-4of8.yaml"),
                             "--model.steps", "0", "--print_config"])
    out = capsys.readouterr().out
    assert "method: wanda" in out and "pattern: 4:8" in out.replace("'", "") and "steps: 0" in out


@pytest.mark.slow
def test_rotate_only_run_on_embedded_model_saves_dense_equivalent(tmp_path):
    """Zero sparsity: the saved default model's logits match the dense model's (float32)."""
    import torch

    import drlightning
    from drlightning.models import load_model

    out = tmp_path / "run"
    DRLightningCLI(args=[
        "fit", "--config", str(ROOT / "configs/smollm2/sparsegpt-2of4.yaml"),
        "--model.pattern", "none", "--model.steps", "3", "--data.nsamples", "2",
        "--data.seqlen", "32", "--run.eval_data", "[]", "--run.dense_ppl", "false",
        "--run.zero_shot", "[]",
        "--run.output_dir", str(out), "--run.progress", "false", "--run.tensorboard", "false",
    ])
    dense, tok = load_model()
    saved = drlightning.load_pretrained(out / "model")
    ids = tok("Pruning removes the weights with the lowest importance scores.",
              return_tensors="pt").input_ids
    with torch.no_grad():
        ref, got = dense(ids).logits.double(), saved(ids).logits.double()
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-4
    assert not torch.equal(saved.drl_rotations.matrix(1), torch.eye(576))
