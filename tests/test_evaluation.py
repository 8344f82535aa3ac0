"""Evaluation: generated and offline zero-shot tasks through lm-eval, reports, eval/compare CLI."""

from __future__ import annotations

import json

import pytest
import torch

import drlightning
from drlightning.cli import DRLightningCLI, main
from drlightning.data import load_eval_text
from drlightning.eval.continuation import continuation_items
from drlightning.eval.plan import EvalPlan
from drlightning.eval.zeroshot import local_task_files, zero_shot
from drlightning.reporting.report import gap_closed, report_markdown

from .tiny import fit_args, save_tiny_dir

TEXT = " ".join(f"w{i}" for i in range(400))


def test_continuation_items_are_deterministic_and_correct():
    a = continuation_items(TEXT, n_items=10, context_words=5, continuation_words=3, seed=1)
    assert a == continuation_items(TEXT, n_items=10, context_words=5, continuation_words=3, seed=1)
    assert a != continuation_items(TEXT, n_items=10, context_words=5, continuation_words=3, seed=2)
    words = TEXT.split()
    for item in a:
        start = words.index(item["context"].split()[0])
        true = " ".join(words[start + 5 : start + 8])
        assert item["choices"][item["label"]] == true
        assert len(set(item["choices"])) == 4
    assert {item["label"] for item in a} != {a[0]["label"]}  # the answer position varies
    with pytest.raises(ValueError, match="the text has 400 words"):
        continuation_items(TEXT, n_items=100, context_words=5, continuation_words=3)
    with pytest.raises(ValueError, match="n_choices=1"):
        continuation_items(TEXT, n_choices=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_dir(tmp_path_factory.mktemp("eval") / "tiny", "llama")
    model, tok = drlightning.load_pretrained(path, with_tokenizer=True)
    return path, model, tok


@torch.no_grad()
def reference_continuation_acc(model, tok, items) -> tuple[float, float]:
    """Independent slow reference: argmax of summed log-probs (and per-byte for acc_norm)."""
    hits = hits_norm = 0
    for item in items:
        ctx = tok(item["context"]).input_ids
        scores, norm = [], []
        for choice in item["choices"]:
            whole = tok(item["context"] + " " + choice).input_ids
            logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            cont = whole[len(ctx):]
            ll = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
            scores.append(ll)
            norm.append(ll / len((" " + choice).encode()))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
        hits_norm += int(max(range(len(norm)), key=norm.__getitem__) == item["label"])
    return hits / len(items), hits_norm / len(items)


def test_generated_task_matches_an_independent_reference(tiny):
    _, model, tok = tiny
    text = load_eval_text("embedded")
    res = zero_shot(model, tok, ["drl_continuation"], text=text, n_items=24, batch_size=4)
    row = res["tasks"]["drl_continuation"]
    assert row["metric"] == "acc" and row["n"] == 24 and res["mean"] == row["value"]
    acc, _ = reference_continuation_acc(model, tok, continuation_items(text, n_items=24))
    assert row["value"] == pytest.approx(acc)
    assert res["protocol"]["num_fewshot"] == 0 and res["protocol"]["lm_eval"].startswith("0.4")


LOCAL = {
    "piqa": [{"goal": "To open a jar,", "sol1": "twist the lid.", "sol2": "eat the lid.", "label": 0},
             {"goal": "To dry hands,", "sol1": "wet them.", "sol2": "use a towel.", "label": 1},
             {"goal": "To cool tea,", "sol1": "wait a while.", "sol2": "boil it.", "label": 0}],
    "arc_easy": [{"id": "a", "question": "Which is a liquid?", "answerKey": "A",
                  "choices": {"text": ["water", "iron", "salt"], "label": ["A", "B", "C"]}}],
    "winogrande": [{"sentence": "The cup did not fit in the box because _ was big.",
                    "option1": "cup", "option2": "box", "answer": "1"}],
    "hellaswag": [{"ind": 1, "activity_label": "Cooking", "ctx_a": "A man puts a pan on a stove.",
                   "ctx_b": "he", "ctx": "A man puts a pan on a stove. he",
                   "endings": ["heats it.", "swims.", "reads.", "flies."], "label": "0",
                   "source_id": "x", "split": "val", "split_type": "indomain"}],
}


def test_standard_tasks_run_offline_from_local_jsonl(tiny, tmp_path):
    _, model, tok = tiny
    files = local_task_files()
    for task, docs in LOCAL.items():
        (tmp_path / files[task]).write_text("".join(json.dumps(d) + "\n" for d in docs))
    res = zero_shot(model, tok, list(LOCAL), task_data_dir=str(tmp_path), batch_size=2)
    assert set(res["tasks"]) == set(LOCAL)
    for task, docs in LOCAL.items():
        row = res["tasks"][task]
        assert row["n"] == len(docs) and 0.0 <= row["value"] <= 1.0
        assert row["metric"] == ("acc" if task == "winogrande" else "acc_norm")
    assert res["protocol"]["source"] == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="arc_challenge.jsonl"):
        zero_shot(model, tok, ["arc_challenge"], task_data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no offline data layout for task 'mmlu'"):
        zero_shot(model, tok, ["mmlu"], task_data_dir=str(tmp_path))


def test_report_gap_closed_and_layout():
    assert gap_closed(10.0, 20.0, 15.0) == pytest.approx(0.5)
    assert gap_closed(10.0, 9.0, 15.0) is None
    res = {"model": "m", "method": "sparsegpt", "pattern": "2:4", "steps": 50,
           "ppl": {"embedded": 15.0}, "dense_ppl": {"embedded": 10.0},
           "zero_shot": {"tasks": {"piqa": {"metric": "acc_norm", "value": 0.6, "n": 3}},
                         "mean": 0.6}, "dense_zero_shot": {"tasks": {"piqa": {
                             "metric": "acc_norm", "value": 0.7, "n": 3}}, "mean": 0.7}}
    base = {**res, "ppl": {"embedded": 20.0}, "run_dir": "runs/plain"}
    md = report_markdown(res, base)
    assert "| ppl embedded | 10.000 | 15.000 | 20.000 | 50.0% |" in md
    assert "| piqa (acc_norm) | 70.00 | 60.00 | 60.00 | - |" in md
    assert "| zero-shot mean | 70.00 | 60.00 |" in md and "## Protocol" in md


def test_fit_with_zero_shot_writes_report_and_eval_compare_cli(tiny, tmp_path, capsys):
    src, _, _ = tiny
    extra = ("--run.eval.zero_shot", "[drl_continuation]", "--run.eval.task_items", "16")
    DRLightningCLI(args=fit_args(src, tmp_path / "plain", steps=0, extra=extra))
    DRLightningCLI(args=fit_args(src, tmp_path / "dr", steps=10, extra=(
        *extra, "--run.monitor.baseline_run", str(tmp_path / "plain"))))
    res = json.loads((tmp_path / "dr" / "results.json").read_text())
    assert res["zero_shot"]["tasks"]["drl_continuation"]["n"] == 16
    assert res["dense_zero_shot"]["tasks"]["drl_continuation"]["n"] == 16
    report = (tmp_path / "dr" / "report.md").read_text()
    assert "drl_continuation (acc)" in report and "gap closed" in report
    capsys.readouterr()
    main(["compare", str(tmp_path / "plain"), str(tmp_path / "dr")])
    out = capsys.readouterr().out
    assert "sparsegpt 2:4 s0" in out and "sparsegpt 2:4 s10" in out and "ppl embedded" in out
    main(["eval", "--model", str(tmp_path / "dr"), "--eval.zero_shot", "[drl_continuation]",
          "--eval.task_items", "16", "--eval.max_windows", "2", "--eval.seqlen", "64",
          "--progress", "false"])
    ev = json.loads((tmp_path / "dr" / "eval.json").read_text())
    assert ev["zero_shot"]["tasks"]["drl_continuation"] == res["zero_shot"]["tasks"]["drl_continuation"]
    assert ev["ppl"]["embedded"] == pytest.approx(res["ppl"]["embedded"], rel=1e-5)


def test_c4_uses_the_protocol_window_count(monkeypatch):
    import drlightning.eval.api as ev

    seen = {}
    monkeypatch.setattr(ev, "load_eval_text", lambda name: f"text of {name}")
    monkeypatch.setattr(ev, "tokenize_text", lambda tok, text: text)

    def fake_ppl(model, tokens, seqlen, batch_size, windows, progress):
        seen[tokens] = (seqlen, windows)
        return 1.0

    monkeypatch.setattr(ev, "perplexity", fake_ppl)
    ev.evaluate_loaded(None, None, EvalPlan(data=["c4", "wikitext2", "notes.txt"], seqlen=2048))
    assert seen == {"text of c4": (2048, 256), "text of wikitext2": (2048, None),
                    "text of notes.txt": (2048, None)}
    ev.evaluate_loaded(None, None, EvalPlan(data=["c4"], seqlen=128, max_windows=3))
    assert seen["text of c4"] == (128, 3)
