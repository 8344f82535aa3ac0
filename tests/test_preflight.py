"""Pre-flight: each check fails before any weights are loaded and leaves the run directory empty."""

from __future__ import annotations

import gzip
import json
import re
import shutil

import pytest
import torch

from drlightning.data.corpora import text_bytes
from drlightning.data.hub import OFFLINE_VARIABLES, offline_reason
from drlightning.eval.task_index import task_dataset
from drlightning.lightning.calibration import CalibrationDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models.header import gguf_metadata, model_shape
from drlightning.pipeline.job import run_job
from drlightning.pipeline.options import EvalOptions, RunOptions
from drlightning.pipeline.preflight import check_hub

from .tiny import save_tiny_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_dir(tmp_path_factory.mktemp("pre") / "tiny", "llama")  # hidden 64, ctx 128


@pytest.fixture
def no_loading(monkeypatch):
    import drlightning.pipeline.placement as placement

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the checks ran")

    monkeypatch.setattr(placement, "load_model", refuse)
    monkeypatch.setattr(placement, "LayerwiseModel", refuse)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Hub, and an empty Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-home"


def _files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    (tmp_path / "latin1.txt").write_bytes("café crème ".encode("latin-1") * 50)
    (tmp_path / "short.txt").write_text("Too short to calibrate on.")
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip at all")


CASES = [  # (rotation settings, calibration settings, run options, message)
    ({"pattern": "3:7"}, {}, {}, "3:7 needs in_features divisible by M=7"),
    ({"pattern": "32:64"}, {}, {}, "divisible by M=64.*down_proj"),
    ({"r1_blocks": 3}, {}, {}, "r1_blocks=3 does not divide the hidden size 64"),
    ({}, {"seqlen": 256}, {}, "data.seqlen=256 exceeds the model context of 128"),
    ({}, {}, {"eval": {"seqlen": 512}}, "run.eval.seqlen=512 exceeds"),
    ({}, {"source": "{tmp}/nope.txt"}, {}, "data.source=.*no such file"),
    ({}, {"source": "{tmp}/latin1.txt"}, {}, "latin1.txt: not valid UTF-8 at byte 3"),
    ({}, {"source": "{tmp}/bad.txt.gz"}, {}, "bad.txt.gz: not a valid gzip file"),
    ({}, {"source": "{tmp}/short.txt"}, {}, "too little calibration text.*at most 27 tokens.*= 32"),
    ({}, {"source": "{tmp}/short.txt", "held_out": 2}, {},
     r"at most 27 tokens.*\(nsamples \+ held_out\).*lower data.nsamples/data.seqlen/data.held_out"),
    ({}, {"source": "c4"}, {}, "Hub is not available.*data.source='c4' .Hub dataset allenai/c4"),
    ({}, {}, {"eval": {"data": ["hf:someone/corpus:en"]}}, "run.eval.data.*someone/corpus"),
    ({}, {}, {"eval": {"zero_shot": ["piqa", "drl_continuation"]}}, "zero_shot 'piqa' .*baber/piqa"),
    ({}, {"source": "{tmp}/empty.txt"}, {}, "data.source=.*is an empty file"),
    ({}, {}, {"eval": {"data": ["{tmp}/missing.jsonl"]}}, "run.eval.data=.*no such file"),
    ({}, {}, {"eval": {"zero_shot": ["piqa"], "task_data_dir": "{tmp}"}}, "offline task 'piqa' needs"),
    ({}, {}, {"model": "{tmp}/gpt2"}, "unsupported architecture model_type='gpt2'"),
    ({}, {}, {"model": "{tmp}/no-model/"}, "model path not found"),
    ({}, {}, {"model": "{tmp}/m.gguf"}, "GGUF file not found"),
    ({}, {}, {"device": "cuda:99" if torch.cuda.is_available() else "cuda:0"}, "run.device='cuda"),
    ({}, {}, {"device": "tpu"}, "run.device='tpu'; allowed"),
]


def _fill(value, tmp: str):
    if isinstance(value, str):
        return value.replace("{tmp}", tmp)
    if isinstance(value, list):
        return [_fill(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    return value


@pytest.mark.parametrize("model_kw,data_kw,run_kw,message", CASES, ids=[c[3][:40] for c in CASES])
def test_check_fails_before_loading_and_writes_nothing(tiny, tmp_path, no_loading, offline,
                                                      model_kw, data_kw, run_kw, message):
    _files(tmp_path)
    run_kw = _fill(run_kw, str(tmp_path))
    if "eval" in run_kw:
        run_kw["eval"] = EvalOptions(**run_kw["eval"])
    run = tmp_path / "run"
    opts = RunOptions(**{"model": str(tiny), "output_dir": str(run), **run_kw})
    data = CalibrationDataModule(**{"nsamples": 2, "seqlen": 16, **_fill(data_kw, str(tmp_path))})
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_job(RotationModule(**{"steps": 1, **model_kw}), data, opts)
    assert list(run.iterdir()) == []


def test_gguf_header_gives_the_shape_without_reading_weights():
    shape = model_shape("smollm2-135m-instruct")
    assert (shape.model_type, shape.hidden_size, shape.intermediate_size) == ("llama", 576, 1536)
    assert (shape.num_attention_heads, shape.num_key_value_heads) == (9, 3)
    assert shape.max_position_embeddings == 8192


def test_gguf_reader_refuses_other_files(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(ValueError, match=re.escape(f"{bad} is not a GGUF file")):
        gguf_metadata(bad)


def test_a_directory_config_is_read_without_weights(tiny, tmp_path):
    copy = tmp_path / "config-only"
    copy.mkdir()
    shutil.copy(tiny / "config.json", copy / "config.json")  # no weights at all
    assert model_shape(str(copy)).hidden_size == 64


def _options(tmp_path, **eval_kw) -> RunOptions:
    return RunOptions(model="unused", output_dir=str(tmp_path / "run"), eval=EvalOptions(**eval_kw))


def test_hub_sources_pass_offline_once_cached(offline, tmp_path):
    opts = _options(tmp_path, data=["wikitext2"], zero_shot=["arc_challenge"])
    with pytest.raises(ValueError, match="data.source='c4'.*'wikitext2'.*allenai/ai2_arc"):
        check_hub(opts, "c4")
    for folder in ("hub/datasets--allenai--c4", "hub/datasets--Salesforce--wikitext",
                   "datasets/allenai___ai2_arc"):
        (offline / folder).mkdir(parents=True)
    check_hub(opts, "c4")  # all three are in the cache now


def test_hub_check_asks_nothing_of_local_runs(offline, tmp_path, monkeypatch):
    import drlightning.pipeline.preflight as preflight

    monkeypatch.setattr(preflight, "offline_reason", lambda: pytest.fail("probed the Hub"))
    check_hub(_options(tmp_path, zero_shot=["drl_continuation", "piqa"], task_data_dir=str(tmp_path)),
              "embedded")


def test_offline_reason_reads_the_environment_when_called(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert offline_reason() == "HF_DATASETS_OFFLINE=1"
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert "127.0.0.1 cannot be reached" in offline_reason(timeout=1.0)


def test_text_bytes_streams_and_finds_the_bad_byte(tmp_path):
    path = tmp_path / "t.txt.gz"
    good = "naïve text ".encode() * 1000
    path.write_bytes(gzip.compress(good + b"\xff" + good))
    with pytest.raises(ValueError, match=f"not valid UTF-8 at byte {len(good)}"):
        text_bytes(path, chunk=100)
    path.write_bytes(gzip.compress(good))
    assert text_bytes(path, chunk=100) == len(good)  # é split across chunks is fine


def test_task_index_knows_the_paper_tasks():
    assert task_dataset("arc_challenge") == "allenai/ai2_arc"  # through `include`
    assert {task_dataset(t) for t in ("piqa", "hellaswag", "winogrande")} == {
        "baber/piqa", "Rowan/hellaswag", "allenai/winogrande"}
