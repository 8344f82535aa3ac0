"""`drlightning eval <run dir>` keeps the run's evaluation plan and changes only the fields the user
set (saying what changed); a window beyond the model's context is refused before the weights load;
a perplexity that is not a finite number is an error, never a printed ``nan``."""

from __future__ import annotations

import json
import shutil

import pytest

import drlightning
from drlightning.cli import main
from drlightning.data import load_eval_text, tokenize_text
from drlightning.eval.perplexity import perplexity
from drlightning.eval.plan import EvalPlan

from .clean_failure import fails_cleanly, snapshot

NOTE = ("note: evaluating with max_windows 1 instead of the run's 2; the run's other settings kept "
        "(seqlen 64, data [embedded])")


@pytest.fixture
def run(finished_run, tmp_path):
    """A copy of a finished tiny run (seqlen 64, 2 evaluation windows; context 128 tokens)."""
    path = tmp_path / "run"
    shutil.copytree(finished_run(), path)
    res = json.loads((path / "results.json").read_text())
    assert (res["eval"]["seqlen"], res["eval"]["max_windows"]) == (64, 2)
    return path


def reference_ppl(run, seqlen: int, windows: int) -> float:
    """The saved model's perplexity computed directly, without any evaluation plan."""
    model, tok = drlightning.load_pretrained(run / "model", with_tokenizer=True)
    return perplexity(model, tokenize_text(tok, load_eval_text("embedded")), seqlen, 4, windows,
                      progress=False)


@pytest.mark.parametrize("form", ["flag", "equals", "json", "config"])
def test_an_override_changes_only_the_fields_set_and_says_so(run, tmp_path, capsys, form):
    config = tmp_path / "eval.yaml"
    config.write_text("eval:\n  max_windows: 1\n")
    given = {"flag": ["--eval.max_windows", "1"], "equals": ["--eval.max_windows=1"],
             "json": ["--eval", '{"max_windows": 1}'], "config": ["--config", str(config)]}[form]
    main(["eval", str(run), *given, "--progress", "false"])
    out = capsys.readouterr().out
    assert NOTE in out.splitlines()
    ev = json.loads((run / "eval.json").read_text())
    assert (ev["eval"]["seqlen"], ev["eval"]["max_windows"]) == (64, 1)  # not 512 windows
    assert ev["ppl"]["embedded"] == pytest.approx(reference_ppl(run, 64, 1), rel=1e-6)


def test_a_seqlen_override_keeps_the_run_windows(run, capsys):
    main(["eval", "--model", str(run), "--eval.seqlen", "32", "--progress", "false"])
    assert ("note: evaluating with seqlen 32 instead of the run's 64; the run's other settings kept "
            "(max_windows 2, data [embedded])") in capsys.readouterr().out
    ev = json.loads((run / "eval.json").read_text())
    assert (ev["eval"]["seqlen"], ev["eval"]["max_windows"]) == (32, 2)
    assert ev["ppl"]["embedded"] == pytest.approx(reference_ppl(run, 32, 2), rel=1e-6)


def test_no_override_or_the_run_value_again_is_the_run_plan_without_a_note(run, capsys):
    main(["eval", str(run), "--progress", "false"])
    main(["eval", str(run), "--eval.max_windows", "2", "--progress", "false"])
    assert "note:" not in capsys.readouterr().out
    first, second = (json.loads((run / name).read_text()) for name in ("eval.json", "eval-2.json"))
    assert first["ppl"] == second["ppl"] and second["eval"]["seqlen"] == 64
    assert first["ppl"]["embedded"] == pytest.approx(reference_ppl(run, 64, 2), rel=1e-6)


def test_a_python_plan_without_seqlen_uses_the_run_window_length(run, tmp_path):
    from drlightning.eval.api import evaluate

    res = evaluate(str(run), EvalPlan(max_windows=1), progress=False,
                   output=str(tmp_path / "out.json"))
    assert (res["eval"]["seqlen"], res["eval"]["max_windows"]) == (64, 1)


def test_a_seqlen_beyond_the_context_is_refused_before_loading(run, tiny_dir, capsys, monkeypatch):
    import drlightning.eval.api as api

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(api, "load_any", never)
    before = snapshot(run)
    fails_cleanly(capsys, ["eval", str(run), "--eval.seqlen", "4096"], "eval.seqlen=4096",
                  "context of 128 tokens", str(run / "model" / "config.json"), "allowed: 2 to 128")
    assert snapshot(run) == before
    # a model directory evaluated with the default 512-token windows
    fails_cleanly(capsys, ["eval", "--model", str(tiny_dir("llama"))], "eval.seqlen=512",
                  "context of 128 tokens")


def test_a_non_finite_perplexity_is_an_error(tiny_dir):
    import torch

    from drlightning.eval.api import evaluate_loaded

    model, tok = drlightning.load_pretrained(tiny_dir("llama"), with_tokenizer=True)
    plan = EvalPlan(seqlen=32, max_windows=1)
    assert evaluate_loaded(model, tok, plan, progress=False)["ppl"]["embedded"] < 1e4
    with torch.no_grad():
        model.model.norm.weight.fill_(float("inf"))
    with pytest.raises(ValueError, match=r"perplexity on 'embedded' came out nan \(not a finite"):
        evaluate_loaded(model, tok, plan, progress=False)
    with pytest.raises(ValueError, match=r"eval.seqlen=256 exceeds the model's context of 128"):
        evaluate_loaded(model, tok, EvalPlan(seqlen=256), progress=False)


def test_a_nan_perplexity_from_the_cli_writes_nothing(run, capsys, monkeypatch):
    import drlightning.eval.api as api

    monkeypatch.setattr(api, "perplexity", lambda *args, **kwargs: float("nan"))
    before = snapshot(run)
    _, out = fails_cleanly(capsys, ["eval", str(run), "--progress", "false"], "came out nan",
                           "not a finite number")
    assert snapshot(run) == before
    assert "nan" not in out


@pytest.mark.parametrize("case, expected", [
    ("not json", ["results.json: not valid JSON (line 1, column 1"]),
    ("array", ["results.json: holds an array, not a JSON object"]),
    ("bad config", ["model/config.json: not valid JSON (line 2"]),
    ("no results", ["run directory without results.json"]),
    ("empty", ["eval.seqlen=512 exceeds the model's context of 128 tokens"]),
])
def test_broken_run_directories_fail_in_one_line(run, capsys, case, expected):
    if case == "not json":
        (run / "results.json").write_text("not json\n")
    elif case == "array":
        (run / "results.json").write_text("[1, 2]\n")
    elif case == "bad config":
        (run / "model" / "config.json").write_text('{"model_type": "llama",\n  oops}\n')
    elif case == "no results":
        (run / "results.json").unlink()
    else:
        (run / "results.json").write_text("{}\n")
    before = snapshot(run)
    _, out = fails_cleanly(capsys, ["eval", str(run), "--progress", "false"], *expected)
    assert snapshot(run) == before
    if case == "empty":  # the default plan is named, not taken silently
        assert f"note: {run / 'results.json'} records no evaluation plan" in out
