"""``model.r1: shared`` end to end on tiny models: a standard checkpoint (plain transformers, no
remote code) that matches the dense model when nothing is pruned and keeps the exact pattern."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from drlightning.cli import DRLightningCLI

from .tiny import fit_args, save_tiny_dir

IDS = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
SHARED = ("--model.r1", "shared")


def _logits(path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # no remote code
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_rotate_only_shared_run_is_a_standard_checkpoint_matching_dense(arch, tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", arch)
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, pattern="none", steps=10,
                                 extra=(*SHARED, "--model.objective", "entropy")))
    config = json.loads((run / "model" / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == arch
    assert not any(k.startswith("drl_") for k in config)
    names = set(load_file(run / "model" / "model.safetensors"))
    dense_names = set(load_file(src / "model.safetensors"))
    assert names == dense_names | {"lm_head.weight"}  # untied (llama) or already there
    dense, got = _logits(src), _logits(run / "model")
    assert ((got - dense).norm() / dense.norm()).item() <= 1e-4
    results = json.loads((run / "results.json").read_text())
    shared = results["export"]["shared_rotation"]
    assert shared["best_loss"] < shared["initial_loss"] and results["export"]["r1"] == "shared"
    assert results["export"]["untied_embeddings"] == (arch == "llama")
    assert ("saved untied" in (run / "report.md").read_text()) == (arch == "llama")
    card = (run / "model" / "README.md").read_text()
    assert "no remote code" in card and "trust_remote_code" not in card
    assert ("untied" in card) == (arch == "llama")
    emb = load_file(run / "model" / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.allclose(emb, load_file(src / "model.safetensors")["model.embed_tokens.weight"])


def _generates_and_loads_in_lm_eval(path) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path).eval()  # no trust_remote_code anywhere
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("The object", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=5, do_sample=False).shape == (1, ids.shape[1] + 5)
    lm = HFLM(pretrained=str(path), batch_size=1, device="cpu")
    (logprob, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("The object", " is"), 0)])
    cont = tok(" is").input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids[0].tolist() + cont])).logits.log_softmax(-1)[0]
    expected = sum(logits[ids.shape[1] - 1 + k, t].item() for k, t in enumerate(cont))
    assert logprob == pytest.approx(expected, abs=1e-3)


def test_pruned_shared_run_keeps_the_pattern_and_resumes(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "qwen2")
    run = tmp_path / "run"
    args = fit_args(src, run, pattern="2:4", steps=8, extra=(*SHARED, "--model.permute", "true"))
    first = DRLightningCLI(args=args).results
    tensors = load_file(run / "model" / "model.safetensors")
    for name, w in tensors.items():
        if name.endswith("proj.weight") and "layers" in name:
            assert ((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) == 2).all(), name
    assert all(r["guard"] in ("rotated", "r2_identity") for r in first["layers"])
    assert all("residual" not in r.get("permutation", {}) for r in first["layers"])
    report = (run / "report.md").read_text()
    assert "| R2 = identity (shared Q) | rotated |" in report
    assert "## Output" in report and "loads it without remote code" in report
    assert "Model-wide guard: summed pruning error" in report and "untied" not in report  # qwen2
    row = next(line for line in report.splitlines() if line.startswith("| 0 |"))
    assert f"| {first['layers'][0]['pruning_error_r2_identity']:.3f} |" in row
    assert "auto_map" not in json.loads((run / "model" / "config.json").read_text())
    _generates_and_loads_in_lm_eval(run / "model")
    again = DRLightningCLI(args=args).results  # everything is in state/: nothing is redone
    assert again["ppl"] == first["ppl"]
    assert [r["pruning_error"] for r in again["layers"]] == [r["pruning_error"] for r in first["layers"]]


def test_every_saved_model_has_a_model_card(tmp_path):
    import yaml

    src = save_tiny_dir(tmp_path / "tiny", "llama")
    DRLightningCLI(args=fit_args(src, tmp_path / "run", method="wanda", steps=3))
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "sparsity-2:4" in front["tags"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert f"| perplexity, embedded | {results['dense_ppl']['embedded']:.3f} | " \
           f"{results['ppl']['embedded']:.3f} |" in card
    assert "trust_remote_code=True" in card and "R1 per layer" in card
    rotation = results["rotation"]
    assert ("weighted by their measured pruning error" in card) == (rotation["role_weights"] == "measured")
    assert ("identity was kept wherever it pruned better" in card) == rotation["guard"]


def test_crash_while_pruning_resumes_without_redoing_finished_work(tmp_path, monkeypatch):
    import drlightning.pipeline.schedules as schedules
    import drlightning.pipeline.sequential as sequential

    src = save_tiny_dir(tmp_path / "tiny", "llama")
    args = fit_args(src, tmp_path / "run", pattern="2:4", steps=6, extra=SHARED)
    reference = DRLightningCLI(args=fit_args(src, tmp_path / "ref", pattern="2:4", steps=6,
                                             extra=SHARED)).results
    fits, steps = [], []
    real_fit, real_step = schedules.fit_shared, sequential.layer_step

    def counting_fit(*a, **k):
        fits.append(1)
        return real_fit(*a, **k)

    def crashing_step(index, *a, **k):
        steps.append(index)
        if index == 1 and len(fits) == 1 and steps.count(1) == 1:
            raise KeyboardInterrupt("simulated crash in layer 1")
        return real_step(index, *a, **k)

    monkeypatch.setattr(schedules, "fit_shared", counting_fit)
    monkeypatch.setattr(sequential, "layer_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        DRLightningCLI(args=args)
    assert (tmp_path / "run" / "state" / "shared_rotation.safetensors").is_file()
    resumed = DRLightningCLI(args=args).results
    assert fits == [1] and steps == [0, 1, 1]  # no second fit, layer 0 not pruned again
    assert resumed["ppl"] == reference["ppl"]  # bit-identical to an uninterrupted run


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_layer_by_layer_shared_run_saves_the_same_standard_checkpoint(arch, tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", arch)
    extra = (*SHARED, "--model.objective", "entropy")
    whole = DRLightningCLI(args=fit_args(src, tmp_path / "whole", pattern="none", steps=5,
                                         extra=extra)).results
    shards = DRLightningCLI(args=fit_args(src, tmp_path / "shards", pattern="none", steps=5,
                                          extra=(*extra, "--run.launch.layerwise", "true"))).results
    config = json.loads((tmp_path / "shards" / "model" / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == arch
    assert config["tie_word_embeddings"] is False
    dense, got = _logits(src), _logits(tmp_path / "shards" / "model")
    assert ((got - dense).norm() / dense.norm()).item() <= 1e-4
    assert torch.allclose(got, _logits(tmp_path / "whole" / "model"), atol=1e-5)
    assert shards["export"]["untied_embeddings"] == (arch == "llama")
    assert shards["export"]["shared_rotation"]["best_loss"] == whole["export"]["shared_rotation"]["best_loss"]


def test_model_wide_guard_drops_a_harmful_shared_rotation(tmp_path, monkeypatch):
    """Already-2:4 weights: the plain magnitude pruner removes only zeros, while a Haar-random Q
    makes every weight dense and pruning hurt — the guard must keep the model unrotated."""
    import drlightning.pipeline.schedules as schedules
    from drlightning.rotation import random_orthogonal

    src = save_tiny_dir(tmp_path / "tiny", "llama")
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                groups = p.reshape(p.shape[0], -1, 4)
                groups.scatter_(2, groups.abs().argsort(dim=2)[:, :, :2], 0.0)
    model.save_pretrained(src)
    layout = (64, 16, 2, 2)  # hidden, head_dim, KV heads, layers

    def harmful(*args, **kwargs):
        g = torch.Generator().manual_seed(0)
        q = random_orthogonal(layout[0], generator=g, dtype=torch.float32)
        r = random_orthogonal(layout[1], (layout[3], layout[2]), generator=g, dtype=torch.float32)
        return q, r, {"objective": "made by hand"}

    monkeypatch.setattr(schedules, "fit_shared", harmful)
    res = DRLightningCLI(args=fit_args(src, tmp_path / "run", method="magnitude", steps=2,
                                       extra=SHARED)).results
    guard = res["export"]["shared_rotation"]["model_guard"]
    assert guard["kept"] == "identity" and guard["identity"] < 1e-6 < guard["shared"]
    saved = load_file(tmp_path / "run" / "model" / "model.safetensors")
    for name, w in load_file(src / "model.safetensors").items():
        assert torch.equal(saved[name], w), name  # the plain pruner removed only zeros
    assert all(r["pruning_error"] < 1e-6 for r in res["layers"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "kept: identity" in report and "rotation was absorbed" not in report


def test_random_layer_subsets_are_used_and_reported(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "mistral")
    res = DRLightningCLI(args=fit_args(src, tmp_path / "run", pattern="none", steps=4, extra=(
        *SHARED, "--model.objective", "entropy", "--model.layers_per_step", "1"))).results
    shared = res["export"]["shared_rotation"]
    assert shared["layers_per_step"] == 1 and shared["layers"] == 2
    assert shared["best_loss"] is None  # subset losses are not comparable: the last iterate
    assert "last iterate of random layer subsets, over 2 layers (1 per step)" in (
        tmp_path / "run" / "report.md").read_text()
    dense, got = _logits(src), _logits(tmp_path / "run" / "model")
    assert ((got - dense).norm() / dense.norm()).item() <= 1e-4
    with pytest.raises(ValueError, match="layers_per_step=0 must be an integer ≥ 1"):
        DRLightningCLI(args=fit_args(src, tmp_path / "bad", extra=("--model.layers_per_step", "0")))
