"""drlightning.prune: a model in memory (or by name) pruned 2:4 in place, the report returned, and
no run directory left behind unless asked."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import drlightning
from drlightning.data import load_documents
from drlightning.eval.plan import EvalPlan

SMALL = {"nsamples": 4, "seqlen": 32, "steps": 3, "progress": False,
         "eval": EvalPlan(max_windows=2, seqlen=32)}


def decoder_linears(model) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in name}


def test_prune_a_loaded_model_in_memory(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir("llama"))
    tok = AutoTokenizer.from_pretrained(tiny_dir("llama"))
    texts = load_documents("embedded", "calibration")[0].split("\n\n")[:400]
    result = drlightning.prune(model, tok, method="wanda", pattern="2:4", calibration=texts, **SMALL)
    assert result.model is model and result.tokenizer is tok
    linears = decoder_linears(model)
    assert len(linears) == 2 * 7
    for name, w in linears.items():  # every decoder linear keeps exactly 2 of every 4 inputs
        assert ((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) == 2).all(), name
    report = result.report
    assert report["method"] == "wanda" and report["pattern"] == "2:4" and report["steps"] == 3
    assert [r["layer"] for r in report["layers"]] == [0, 1]
    assert all(0 < r["pruning_error"] < 1 for r in report["layers"])
    assert len(report["calibration"]["held_out_windows"]) == 1  # a quarter of nsamples 4
    assert all(r["judged_on"] == "held-out windows" for r in report["layers"])
    assert result.dense_ppl["embedded"] < result.ppl["embedded"] < float("inf")
    assert "path" not in report["export"] and list(tmp_path.iterdir()) == []  # nothing written
    ids = tok("The object", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_prune_by_name_keeps_a_run_directory_when_asked(tiny_dir, tmp_path):
    result = drlightning.prune(str(tiny_dir("qwen2")), method="sparsegpt", pattern="4:8",
                               output_dir=tmp_path / "run", **SMALL)
    assert (tmp_path / "run" / "results.json").is_file()
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert result.report["export"]["path"] == str(tmp_path / "run" / "model")


def test_prune_refuses_unknown_options_and_a_model_without_its_tokenizer(tiny_dir):
    import pytest

    with pytest.raises(TypeError, match=r"unknown options \['stepz'\]"):
        drlightning.prune(str(tiny_dir("llama")), stepz=3)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        drlightning.prune(AutoModelForCausalLM.from_pretrained(tiny_dir("llama")))


def test_prune_with_the_judge_returns_the_model_it_kept(tiny_dir, tmp_path, monkeypatch):
    """``judge=True``: the plain pruner prunes a copy, DenoiseRotator the model given; the result
    is the one with the lower perplexity on the ``held_out`` windows, whichever it is."""
    monkeypatch.chdir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir("llama"))
    tok = AutoTokenizer.from_pretrained(tiny_dir("llama"))
    texts = load_documents("embedded", "calibration")[0].split("\n\n")[:400]
    result = drlightning.prune(model, tok, method="magnitude", pattern="2:4", calibration=texts,
                               held_out=2, judge=True, **SMALL)
    verdict = result.report["judge"]
    held = verdict["held_out_ppl"]
    assert len(verdict["held_out_windows"]) == 2 and set(held) == {"plain", "denoiserotator"}
    assert held[verdict["kept"]] == min(held.values())
    assert (result.model is model) == (verdict["kept"] == "denoiserotator")
    for name, w in decoder_linears(result.model).items():  # the kept model is pruned 2:4
        assert ((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all(), name
    assert list(tmp_path.iterdir()) == []  # nothing written without an output_dir


def test_prune_refuses_a_judge_without_held_out_windows(tiny_dir):
    import pytest

    with pytest.raises(ValueError, match="judge"):
        drlightning.prune(str(tiny_dir("llama")), judge=True, held_out=0, **SMALL)
