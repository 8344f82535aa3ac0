"""LoRA recovery: frozen rotations and base weights, masks intact after merge, resume, CLI chain."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from lightning import Trainer
from safetensors.torch import load_file

from drlightning.cli import main
from drlightning.export import load_pretrained
from drlightning.lora import LoRAModule, TextDataModule, masked_merge, sparsity_masks
from drlightning.reporting.report import compare

from .card_checks import check_hub_dataset_ids, check_no_local_paths, check_rounded_metrics, front_matter

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def pruned_run(finished_run):
    """A tiny llama rotated and pruned 2:4, as a drlightning run directory (the session's shared
    run, also used by test_export)."""
    return finished_run(method="sparsegpt", pattern="2:4")


def _data(**kw) -> TextDataModule:
    return TextDataModule(seqlen=32, batch_size=2, val_windows=2, max_train_windows=8, **kw)


def _train(module: LoRAModule, steps: int) -> None:
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0)
    trainer.fit(module, datamodule=_data())


def _check_2of4(weight: torch.Tensor, name: str) -> None:
    zeros = (weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1)
    assert bool((zeros == 2).all()), f"{name}: groups of 4 with {zeros.unique().tolist()} zeros"


def test_rotations_and_base_weights_stay_frozen(pruned_run):
    torch.manual_seed(0)
    module = LoRAModule(str(pruned_run), lr=1e-2, warmup_steps=0)
    base = module.base_model
    buffers = {n: b.clone() for n, b in base.named_buffers() if n.startswith("drl_rotations")}
    assert buffers, "the rotated model should carry its boundary rotations"
    frozen = {n: p.detach().clone() for n, p in base.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in module.lora_parameters().items()}
    assert lora and all("lora_" in n for n in lora)

    loss = module(torch.randint(0, 300, (2, 16)))
    loss.backward()
    for name, p in base.named_parameters():
        if "lora_" not in name:
            assert not p.requires_grad and p.grad is None, f"{name} got a gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.lora_parameters().values())
    module.zero_grad()

    _train(module, steps=3)
    for name, b in base.named_buffers():
        if name in buffers:
            assert torch.equal(b, buffers[name]), f"rotation buffer {name} changed"
    for name, p in base.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"frozen weight {name} changed"
    changed = [n for n, p in module.lora_parameters().items() if not torch.equal(p, lora[n])]
    assert changed, "LoRA parameters did not train"


@pytest.mark.parametrize("mask_updates", [True, False])
def test_masked_merge_keeps_the_pattern_and_matches_a_reference(pruned_run, mask_updates):
    torch.manual_seed(1)
    module = LoRAModule(str(pruned_run), mask_updates=mask_updates)
    for p in module.lora_parameters().values():  # B starts at 0: make the update dense
        torch.nn.init.normal_(p, std=0.05)
    base = module.base_model
    names = [n for n, m in base.named_modules() if hasattr(m, "lora_A")]
    assert sorted({n.rsplit(".", 1)[1] for n in names}) == sorted(TARGETS)
    masks = sparsity_masks(base, names)
    modules = dict(base.named_modules())
    expected = {}
    for n in names:
        m = modules[n]
        w = m.get_base_layer().weight.double()
        a, b = m.lora_A["default"].weight.double(), m.lora_B["default"].weight.double()
        expected[n] = (w + m.scaling["default"] * b @ a) * masks[n]
    ids = torch.randint(0, 300, (2, 24))
    module.eval()
    with torch.no_grad():
        before = module.model(input_ids=ids).logits
    merged = masked_merge(module.model, masks)
    with torch.no_grad():
        after = merged(input_ids=ids).logits
    merged_modules = dict(merged.named_modules())
    for n in names:
        weight = merged_modules[n].weight
        assert isinstance(merged_modules[n], torch.nn.Linear)
        torch.testing.assert_close(weight.double(), expected[n], rtol=1e-5, atol=1e-6)
        _check_2of4(weight, n)
    if mask_updates:  # what was trained is exactly what was merged
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    else:  # the dense update loses its pruned part on merge
        assert not torch.allclose(after, before, atol=1e-4)


def _lora_args(run, out, steps: int, extra: tuple = ()) -> list[str]:
    return ["--model.model", str(run), "--model.warmup_steps", "1", "--model.lr", "1e-3",
            "--data.seqlen", "32", "--data.batch_size", "2", "--data.val_windows", "2",
            "--data.max_train_windows", "8", "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.accelerator", "cpu", "--export.output_dir", str(out),
            "--export.eval.max_windows", "2", "--export.progress", "false", *extra]


def _check_lora_cards(out, res: dict, pruned_run, tmp_path) -> None:
    """The merged model and the adapters each carry a real card: base named, no local path, no
    non-Hub dataset id, rounded metrics, nothing of peft's blank template."""
    merged, adapter = (out / "model" / "README.md").read_text(), (out / "adapter" / "README.md").read_text()
    for text in (merged, adapter):
        check_no_local_paths(text, tmp_path, pruned_run.parent)
        check_hub_dataset_ids(text)
        check_rounded_metrics(text)
        assert "[More Information Needed]" not in text and "More Information" not in text
        assert f"run `{pruned_run.name}`" in text and "`model` pruned to 2:4 with sparsegpt" in text
        assert "rank 8, alpha 32" in text and "Python's bundled documentation" in text
        before = f"{res['before']['ppl']['embedded']:.3f}"
        assert f"| perplexity, embedded | {before} | {res['after_adapter']['ppl']['embedded']:.3f} |" \
            in text
    assert f"| {res['after']['ppl']['embedded']:.3f} |" in merged and "W ← M ⊙ (W + BA)" in merged
    meta = front_matter(merged)
    assert meta["library_name"] == "transformers" and {"lora", "sparsity-2:4"} <= set(meta["tags"])
    assert "datasets" not in meta and "model-index" not in meta  # embedded text only: prose, no ids
    assert "drlightning.load_pretrained('model')" in merged
    meta = front_matter(adapter)
    assert meta["library_name"] == "peft" and "base_model" not in meta  # the base is a local model
    assert "PeftModel.from_pretrained(base, 'adapter')" in adapter and "mask_lora_updates" in adapter


def test_cli_chain_saves_sparse_model_adapters_and_resumes(pruned_run, tmp_path, caplog):
    out = tmp_path / "lora"
    main(["lora", "fit", *_lora_args(pruned_run, out, steps=4)])
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 4
    assert res["sparsity"]["nonzero_at_pruned_positions"] == 0
    assert res["sparsity"]["pruned_fraction"] == pytest.approx(0.5)
    for stage in ("before", "after_adapter", "after"):
        assert res[stage]["ppl"]["embedded"] > 1
    report = (out / "report.md").read_text()
    assert "| ppl embedded |" in report and "+ LoRA merged (sparse)" in report
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    _check_lora_cards(out, res, pruned_run, tmp_path)
    table = compare([str(pruned_run), str(out)])
    assert "+ LoRA r8 s4" in table and f"{res['after']['ppl']['embedded']:.3f}" in table
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    weights = load_file(out / "model" / "model.safetensors")
    for name, w in weights.items():
        if name.endswith(tuple(f"{t}.weight" for t in TARGETS)):
            _check_2of4(w, name)
    model = load_pretrained(out / "model")
    assert model.config.model_type == "drlightning_llama"
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.isfinite().all()

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])

    # resume from the last checkpoint and go on to step 6; stage: lora routes `fit` here
    cfg = tmp_path / "lora.yaml"
    cfg.write_text(yaml.safe_dump({"stage": "lora"}))
    with caplog.at_level(logging.INFO):
        main(["fit", "--config", str(cfg), *_lora_args(pruned_run, out, steps=6), "--ckpt_path", "last"])
    assert "Restored all states from the checkpoint" in caplog.text
    res2 = json.loads((out / "results.json").read_text())
    assert res2["steps"] == 6
    assert res2["before"] == res["before"]  # evaluated once, cached for the resumed run

    # the resumed adapters come from the checkpoint, not from a fresh initialisation
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6
    for key in ckpt["state_dict"]:
        if "lora_B" in key:
            ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], 0.125)
    torch.save(ckpt, tmp_path / "edited.ckpt")
    main(["lora", "fit", *_lora_args(pruned_run, out, steps=6, extra=("--export.use_best", "false")),
          "--ckpt_path", str(tmp_path / "edited.ckpt")])
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all(bool((v == 0.125).all()) for v in lora_b)


def test_lora_cards_name_hub_data_and_no_local_path(tmp_path):
    from drlightning.lora.report import adapter_card, lora_model_card

    local = str(tmp_path / "eval" / "notes.txt")
    res = {"model": str(tmp_path / "runs" / "sparsegpt-2of4"),
           "lora": {"r": 4, "alpha": 16, "dropout": 0.0, "mask_updates": False},
           "data": {"source": "hf:someone/corpus:cfg", "seqlen": 64, "train_windows": 10}, "steps": 7,
           "source_run": {"model": "someorg/dense-1b", "pattern": "2:4", "method": "wanda",
                          "export": {"drl_boundaries": [0]}},
           "before": {"ppl": {"wikitext2": 40.123456789, local: 3.33333333}},
           "after_adapter": {"ppl": {"wikitext2": 30.1234567, local: 3.1}},
           "after": {"ppl": {"wikitext2": 30.2345678, local: 3.2},
                     "zero_shot": {"tasks": {"piqa": {"metric": "acc", "value": 0.612345678}}}},
           "eval": {"seqlen": 64}}
    merged, adapter = lora_model_card(res, str(tmp_path / "lora" / "model")), adapter_card(res)
    for text in (merged, adapter):
        check_no_local_paths(text, tmp_path)
        check_hub_dataset_ids(text, "notes.txt")
        check_rounded_metrics(text)
        assert "run `sparsegpt-2of4` (`someorg/dense-1b` pruned to 2:4 with wanda" in text
        assert "rank 4, alpha 16" in text and "`hf:someone/corpus:cfg`" in text
        assert "| perplexity, notes.txt | 3.333 | 3.100 |" in text
        assert front_matter(text)["datasets"] == ["someone/corpus"]
    meta = front_matter(merged)
    assert meta["base_model"] == "someorg/dense-1b" and "custom_code" in meta["tags"]
    assert sorted(check_rounded_metrics(merged)) == [0.6123, 30.235]  # notes.txt: table only
    assert "mask_lora_updates" not in adapter  # plain LoRA: peft applies what was trained


def test_bad_lora_input_is_refused_early(pruned_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        LoRAModule(str(tmp_path))
    with pytest.raises(ValueError, match="r=0"):
        LoRAModule(str(pruned_run), r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRAModule(str(pruned_run), dropout=1.5)
    module = LoRAModule(str(pruned_run))
    data = TextDataModule(seqlen=32, val_windows=10**6)
    with pytest.raises(ValueError, match="val_windows=1000000"):
        data.split(module.tokenizer)


def test_validation_that_would_never_run_is_refused_before_loading(tmp_path, capsys):
    args = _lora_args(tmp_path / "no-such-run", tmp_path / "out", steps=4)
    args[args.index("--trainer.val_check_interval") + 1] = "10"
    with pytest.raises(SystemExit) as exit_info:
        main(["lora", "fit", *args])
    assert exit_info.value.code == 2
    assert "val_check_interval=10 > trainer.max_steps=4" in capsys.readouterr().err
