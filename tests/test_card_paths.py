"""Model cards leave the machine: no absolute path (model, calibration text, output directory), Hub
dataset ids only where the text is a Hub dataset, and metric values rounded."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

import drlightning
from drlightning.data import load_documents
from drlightning.eval.plan import EvalPlan
from drlightning.export.card import model_card

from .card_checks import check_hub_dataset_ids, check_no_local_paths, check_rounded_metrics, front_matter
from .test_model_card import _results


@pytest.fixture(autouse=True)
def _empty_hub_cache(tmp_path, monkeypatch):
    """No test reads the user's Hub cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_local_paths_are_named_by_their_final_name(tmp_path):
    model = tmp_path / "deep" / "my-finetune"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    notes = tmp_path / "private" / "notes.jsonl"
    results = _results(model=str(model), source=str(notes),
                       ppl={str(notes): 12.3456789, "wikitext2": 20.0},
                       dense_ppl={str(notes): 10.0, "wikitext2": 19.0})
    text = model_card(results, str(tmp_path / "out" / "model"))
    check_no_local_paths(text, tmp_path)
    assert "`my-finetune`" in text and "`notes.jsonl`" in text
    assert "| perplexity, notes.jsonl | 10.000 | 12.346 |" in text
    assert "from_pretrained('model'" in text
    assert front_matter(text)["model-index"][0]["name"].startswith("my-finetune pruned to 2:4")
    check_hub_dataset_ids(text, "notes.jsonl")


def test_hub_cache_path_is_its_repository(tmp_path):
    snapshot = tmp_path / "hub" / "models--someorg--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    text = model_card(_results(model=str(snapshot), source=f"mix:embedded,{tmp_path / 'a.txt'}"),
                      str(tmp_path / "model"))
    check_no_local_paths(text, tmp_path)
    assert front_matter(text)["base_model"] == "someorg/cached" and "`someorg/cached`" in text
    assert "`mix:embedded,a.txt`" in text


@pytest.mark.parametrize(("source", "hub"), [
    ("embedded", None), ("speeches", None), ("mix", None), ("mix:embedded,fiction", None),
    ("/data/notes.txt", None), ("c4", "allenai/c4"), ("hf:someone/corpus:cfg", "someone/corpus"),
])
def test_only_hub_datasets_are_dataset_ids(source, hub):
    results = _results(source=source, ppl={source: 30.123456, "embedded": 31.0},
                       dense_ppl={source: 25.0, "embedded": 26.0})
    text = model_card(results, "model")
    check_hub_dataset_ids(text, "notes.txt")
    meta = front_matter(text)
    assert meta.get("datasets") == ([hub] if hub else None)
    ppl_types = [r["dataset"]["type"] for r in meta["model-index"][0]["results"]
                 if r["metrics"][0]["type"] == "perplexity"]
    assert ppl_types == ([hub] if hub else [])
    assert "embedded" not in json.dumps(meta)  # the offline text is in the body's table only
    assert "| perplexity, embedded | 26.000 | 31.000 |" in text


def test_metric_values_are_rounded():
    zs = {"tasks": {"piqa": {"metric": "acc_norm", "value": 0.123456789012345, "n": 9}},
          "mean": 0.123456789012345}
    results = _results(ppl={"wikitext2": 55.123456789012345}, dense_ppl={}, zero_shot=zs,
                       dense_zero_shot={})
    text = model_card(results, "model")
    assert sorted(check_rounded_metrics(text)) == [0.1235, 55.123]
    assert "123456" not in text


def _check_real_card(text: str, *roots) -> None:
    check_no_local_paths(text, *roots)
    check_hub_dataset_ids(text)
    check_rounded_metrics(text)


def test_card_of_a_python_api_run_names_no_local_path(tiny_dir, tmp_path):
    notes = tmp_path / "calibration" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text(load_documents("embedded", "calibration")[0][:60000])
    out = tmp_path / "out"
    drlightning.prune(str(tiny_dir("llama")), method="wanda", pattern="2:4", calibration=str(notes),
                      nsamples=4, seqlen=32, steps=2, output_dir=str(out), progress=False,
                      eval=EvalPlan(max_windows=2, seqlen=32))
    results = json.loads((out / "results.json").read_text())
    assert results["model"].startswith("/")  # what the card must not repeat
    text = (out / "model" / "README.md").read_text()
    _check_real_card(text, tmp_path, tiny_dir("llama").parent)
    assert "`notes.txt`" in text and "`model` pruned to **2:4**" in text
    assert ModelCard(text).data.datasets is None


def test_card_of_a_cli_run_names_no_local_path(finished_run):
    run = finished_run()
    text = (run / "model" / "README.md").read_text()
    _check_real_card(text, run.parent)
    assert "[More Information Needed]" not in text
