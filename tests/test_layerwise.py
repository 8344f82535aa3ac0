"""Layer-by-layer loading (run.launch.layerwise): same results as the whole model, one layer in memory."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

import drlightning.pipeline.sequential as pipeline
from drlightning.cli import DRLightningCLI
from drlightning.eval.api import evaluate
from drlightning.eval.plan import EvalPlan
from drlightning.export import load_pretrained
from drlightning.lightning.layer_data import LayerDataModule
from drlightning.models.shards import LayerwiseModel, ShardedCheckpoint

from .tiny import fit_args, save_tiny_dir

LAYERWISE = ("--run.launch.layerwise", "true")


def _sharded_tensors(directory) -> dict:
    ckpt = ShardedCheckpoint(directory)
    return ckpt.load(ckpt.names())


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _materialised(lw: LayerwiseModel) -> int:
    return sum(not any(p.is_meta for p in layer.parameters()) for layer in lw.layers)


def test_layerwise_run_equals_whole_model_run_and_resumes(tmp_path, monkeypatch):
    src = save_tiny_dir(tmp_path / "tiny", "mistral", num_hidden_layers=3)
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    DRLightningCLI(args=fit_args(src, whole, steps=5))

    most, stale, datamodules = [], [], []
    load, init = LayerwiseModel.load, LayerDataModule.__init__

    def counting_load(self, index, tensors=None):
        layer = load(self, index, tensors)
        most.append(_materialised(self))
        stale.append(sum(ref() is not None for ref in datamodules))
        return layer

    def tracked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        datamodules.append(weakref.ref(self))

    monkeypatch.setattr(LayerDataModule, "__init__", tracked_init)

    monkeypatch.setattr(LayerwiseModel, "load", counting_load)
    step = pipeline.layer_step

    def fail_at_layer_1(index, *args, **kwargs):
        if index == 1:
            raise RuntimeError("interrupted")
        return step(index, *args, **kwargs)

    monkeypatch.setattr(pipeline, "layer_step", fail_at_layer_1)
    with pytest.raises(RuntimeError, match="interrupted"):
        DRLightningCLI(args=fit_args(src, streamed, steps=5, extra=LAYERWISE))
    assert (streamed / "state" / "layer_00.safetensors").is_file()
    monkeypatch.setattr(pipeline, "layer_step", step)
    DRLightningCLI(args=fit_args(src, streamed, steps=5, extra=LAYERWISE))
    assert max(most) == 1, "more than one decoder layer was in memory at once"
    assert max(stale) == 0, "a finished layer's datamodule (its tensors) is still alive"

    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, streamed))
    assert a["ppl"] == b["ppl"] and a["dense_ppl"] == b["dense_ppl"]
    assert a["export"]["boundary_merge_error"] == b["export"]["boundary_merge_error"]
    whole_tensors = load_file(whole / "model" / "model.safetensors")
    _same(whole_tensors, _sharded_tensors(streamed / "model"))
    index = json.loads((streamed / "model" / "model.safetensors.index.json").read_text())
    shards = {f for k, f in index["weight_map"].items() if k.startswith("model.layers.")}
    assert len(shards) == 3  # one shard per decoder layer
    ids = torch.randint(0, 300, (1, 24))
    assert torch.equal(load_pretrained(whole / "model")(ids).logits,
                       load_pretrained(streamed / "model")(ids).logits)
    # `drlightning eval --layerwise true` on the saved run streams it: same numbers as loaded whole
    kw = {"eval": EvalPlan(seqlen=64, max_windows=2), "progress": False}
    streamed_eval = evaluate(str(streamed), layerwise=True, **kw)["ppl"]
    assert streamed_eval == evaluate(str(whole), **kw)["ppl"] == b["ppl"]


def test_layerwise_plain_pruner_with_tied_embeddings(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    plain = ("--model.permute", "false")
    DRLightningCLI(args=fit_args(src, whole, method="wanda", steps=0, extra=plain))
    DRLightningCLI(args=fit_args(src, streamed, method="wanda", steps=0, extra=(*LAYERWISE, *plain)))
    tensors = _sharded_tensors(streamed / "model")
    _same(load_file(whole / "model" / "model.safetensors"), tensors)
    assert not any(k.startswith("drl_") or k == "lm_head.weight" for k in tensors)
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, streamed))
    assert a["ppl"] == b["ppl"]


@pytest.mark.slow
def test_layerwise_parallel_mode_equals_whole_model_parallel_mode(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "qwen2")
    parallel = ("--run.launch.mode", "parallel")
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    DRLightningCLI(args=fit_args(src, whole, steps=4, extra=parallel))
    DRLightningCLI(args=fit_args(src, streamed, steps=4, extra=(*parallel, *LAYERWISE)))
    _same(load_file(whole / "model" / "model.safetensors"), _sharded_tensors(streamed / "model"))
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, streamed))
    assert a["ppl"] == b["ppl"]


def test_layerwise_bad_input_is_refused_early(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    with pytest.raises(ValueError, match="GGUF"):
        DRLightningCLI(args=fit_args("smollm2-135m-instruct", tmp_path / "a", extra=LAYERWISE))
    with pytest.raises(ValueError, match="perplexity only"):
        evaluate(str(src), EvalPlan(seqlen=64, zero_shot=["drl_continuation"]), layerwise=True,
                 progress=False)
    with pytest.raises(ValueError, match="zero_shot"):
        DRLightningCLI(args=fit_args(src, tmp_path / "b", extra=(
            *LAYERWISE, "--run.eval.zero_shot", "[drl_continuation]")))

    bad = tmp_path / "nan"
    save_tiny_dir(bad, "llama")
    tensors = load_file(bad / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    lw = LayerwiseModel(str(bad))
    lw.load(0)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight .*NaN"):
        lw.load(1)

    (bad / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors or model.safetensors.index.json"):
        LayerwiseModel(str(bad))
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors"):
        LayerwiseModel(str(bad))
