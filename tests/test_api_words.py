"""drlightning.prune in its own words: the calibration settings the CLI has (text_field,
chat_template, seed, batch_size), errors that name prune()'s parameters, and the model named as
given."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import drlightning
from drlightning.data import load_documents

QUICK = {"method": "wanda", "nsamples": 4, "seqlen": 64, "steps": 1, "held_out": 1,
         "progress": False, "eval": False}
CHAT = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}")
"""A small chat template for the tiny tokenizer (which has none)."""


def texts(n: int = 30) -> list[str]:
    """``n`` pieces of the embedded calibration text, 2000 characters each."""
    doc = load_documents("embedded", "calibration")[0]
    return [doc[i:i + 2000] for i in range(0, 2000 * n, 2000)]


def loaded(tiny_dir) -> tuple:
    """A fresh tiny llama and its tokenizer."""
    return (AutoModelForCausalLM.from_pretrained(tiny_dir("llama")),
            AutoTokenizer.from_pretrained(tiny_dir("llama")))


def test_seed_and_batch_size_change_the_run_and_are_recorded(tiny_dir):
    runs = {}
    for seed in (0, 5):
        model, tok = loaded(tiny_dir)
        runs[seed] = drlightning.prune(model, tok, calibration=texts(), seed=seed, batch_size=2,
                                       **{**QUICK, "steps": 0})
    for seed, result in runs.items():
        assert result.report["calibration"]["seed"] == seed
        assert result.report["calibration"]["batch_size"] == 2
        assert result.report["settings"]["seed_everything"] == seed
    a, b = (r.report["calibration"]["held_out_ppl"] for r in runs.values())
    assert a != b  # other held-out windows
    masks = [{k: v == 0 for k, v in r.model.state_dict().items() if "layers" in k}
             for r in runs.values()]
    assert any(not torch.equal(masks[0][k], masks[1][k]) for k in masks[0])  # other statistics


def test_text_field_reads_another_field_of_a_jsonl_file(tiny_dir, tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": "short", "body": t}) + "\n" for t in texts()),
                    encoding="utf-8")
    with pytest.raises(ValueError, match="no calibration document is longer than seqlen=64"):
        drlightning.prune(str(tiny_dir("llama")), calibration=str(path), **QUICK)
    result = drlightning.prune(str(tiny_dir("llama")), calibration=str(path), text_field="body",
                               **QUICK)
    calibration = result.report["calibration"]
    assert calibration["text_field"] == "body" and calibration["source"] == str(path)
    assert calibration["tokens"] == (4 + 1) * 64


def test_text_field_picks_the_column_of_a_dataset(tiny_dir):
    from datasets import Dataset

    data = Dataset.from_dict({"text": ["short"] * 30, "body": texts()})
    with pytest.raises(ValueError, match="no calibration document is longer than seqlen=64"):
        drlightning.prune(*loaded(tiny_dir), calibration=data, **QUICK)  # the short "text"
    with pytest.raises(ValueError, match=r"no 'words' column \(text_field='words'"):
        drlightning.prune(*loaded(tiny_dir), calibration=data, text_field="words", **QUICK)
    result = drlightning.prune(*loaded(tiny_dir), calibration=data, text_field="body", **QUICK)
    assert result.report["calibration"]["source"].startswith("30 texts given to prune()")


def test_chat_template_calibrates_on_conversations_given_as_a_list(tiny_dir):
    model, tok = loaded(tiny_dir)
    chats = [[{"role": "user", "content": t[:1000]}, {"role": "assistant", "content": t[1000:]}]
             for t in texts()]
    with pytest.raises(ValueError, match="holds conversations: pass chat_template=True"):
        drlightning.prune(model, tok, calibration=chats, **QUICK)
    with pytest.raises(ValueError, match="chat_template=True but the tokenizer"):
        drlightning.prune(model, tok, calibration=chats, chat_template=True, **QUICK)
    with pytest.raises(ValueError, match="calibration= must be .* list of conversations"):
        drlightning.prune(model, tok, calibration=texts(), chat_template=True, **QUICK)
    tok.chat_template = CHAT
    result = drlightning.prune(model, tok, calibration=chats, chat_template=True, **QUICK)
    calibration = result.report["calibration"]
    assert calibration["chat_template"] is True
    assert calibration["source"].startswith("30 conversations given to prune()")
    assert result.report["layers"] and all(r["pruning_error"] > 0 for r in result.report["layers"])


BAD = [  # (prune arguments, the words the error must use)
    ({"nsamples": 4000}, ["nsamples", "calibration='30 texts given to prune()"]),
    ({"nsamples": 0}, ["nsamples=0"]),
    ({"seqlen": 1}, ["seqlen=1"]),
    ({"held_out": -1}, ["held_out=-1"]),
    ({"batch_size": 0}, ["batch_size=0"]),
    ({"seed": "x"}, ["seed='x'"]),
    ({"steps": -1}, ["steps=-1"]),
    ({"method": "foo"}, ["method 'foo'"]),
    ({"calibration": "/no/such/file.jsonl"}, ["calibration='/no/such/file.jsonl'"]),
    ({"calibration": [1, 2]}, ["calibration= must be"]),
    ({"calibration": "embedded", "chat_template": True}, ["calibration='embedded'"]),
    ({"held_out": 0, "judge": True}, ["judge=", "held_out=0", "holdout="]),
    ({"held_out": 2, "holdout": 0.25}, ["held_out=2", "holdout=0.25", "set holdout=0"]),
    ({"held_out": 0, "refit": "layer"}, ["refit='layer'", "held_out=0"]),
]


@pytest.mark.parametrize(("bad", "words"), BAD, ids=[",".join(b) for b, _ in BAD])
def test_errors_name_the_parameters_of_prune(tiny_dir, bad, words):
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        drlightning.prune(str(tiny_dir("llama")), **{**QUICK, "calibration": texts(), **bad})
    message = str(err.value)
    for word in words:
        assert word in message, message
    assert "drl-prune" not in message and "/tmp/" not in message, message
    assert not re.search(r"(?<![\w.])(data|model|run)\.[a-z]", message), message


def test_in_api_words_renames_keys_and_hides_the_temporary_file(tmp_path):
    from drlightning.api import in_api_words

    made = str(tmp_path / "calibration.jsonl")
    message = (f"data.source={made!r} is too short; lower data.nsamples/data.seqlen, set "
               f"model.steps=0, run.judge=true or run.eval.max_windows=2; see {tmp_path}/run and "
               "model.config.hidden_size. Differences:\n  data.source: 'a' → 'b'")
    assert in_api_words(message, tmp_path, made) == (
        "calibration=<the calibration given to prune()> is too short; lower nsamples/seqlen, set "
        "steps=0, judge=true or eval.max_windows=2; see <prune()'s temporary folder>/run and "
        "model.config.hidden_size. Differences:\n  data.source: 'a' → 'b'")


def test_the_report_and_the_card_name_the_model_as_given(tiny_dir, tmp_path, monkeypatch):
    """A model given by name is loaded from wherever it resolves to (for a GGUF file: a cache
    directory named by a hash); results.json, report.md and the card keep the name given."""
    import drlightning.models

    shutil.copytree(tiny_dir("llama"), tmp_path / "tiny")
    cache = shutil.copytree(tiny_dir("llama"), tmp_path / "0f1e2d3c4b5a6978")
    real = drlightning.models.load_model

    def load_from_the_cache(source: str, **kw) -> tuple:
        assert source == "./tiny"
        return real(str(cache), **kw)

    monkeypatch.setattr(drlightning.models, "load_model", load_from_the_cache)
    monkeypatch.chdir(tmp_path)
    result = drlightning.prune("./tiny", calibration=texts(), output_dir=tmp_path / "run", **QUICK)
    assert result.model.config.name_or_path == str(cache)
    assert result.report["model"] == "./tiny"
    saved = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert saved["model"] == "./tiny"
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    card = (tmp_path / "run" / "model" / "README.md").read_text(encoding="utf-8")
    assert "./tiny" in report and cache.name not in report
    assert "Input: `tiny`" in card and cache.name not in card
