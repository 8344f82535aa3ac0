"""The dense evaluation is reused across runs of the same weights and evaluation protocol."""

from __future__ import annotations

import json

import pytest

from drlightning.cli import DRLightningCLI
from drlightning.pipeline.placement import WholeModel

from .tiny import fit_args, save_tiny_dir


@pytest.fixture
def counted(monkeypatch):
    """Count WholeModel.evaluate calls (the dense one and the final one)."""
    calls = []
    original = WholeModel.evaluate

    def evaluate(self, eval_tokens, seqlen):
        calls.append(seqlen)
        return original(self, eval_tokens, seqlen)

    monkeypatch.setattr(WholeModel, "evaluate", evaluate)
    return calls


def _run(model_dir, out, *extra):
    args = fit_args(model_dir, out, steps=0, nsamples=4, seqlen=32, extra=("--run.eval.data",
                    "[embedded]", *extra))
    DRLightningCLI(args=args)
    return json.loads((out / "results.json").read_text())


def test_second_run_reuses_the_dense_evaluation_and_changes_recompute(tmp_path, counted, capsys):
    src = save_tiny_dir(tmp_path / "tiny", "llama", num_hidden_layers=2)
    first = _run(src, tmp_path / "a")
    assert len(counted) == 2  # dense + final
    assert first["memory"]["peak_rss_mib"] > 50  # the process's peak resident set, recorded
    assert "reused from" not in capsys.readouterr().out

    second = _run(src, tmp_path / "b", "--model.method", "wanda")  # another pruner, same dense model
    assert len(counted) == 3  # only the final evaluation
    assert "dense evaluation: reused from" in capsys.readouterr().out
    assert second["dense_ppl"] == first["dense_ppl"]

    _run(src, tmp_path / "c", "--run.eval.max_windows", "1")  # another protocol
    assert len(counted) == 5
    _run(src, tmp_path / "d", "--run.eval.dense_cache", "false")  # asked not to reuse
    assert len(counted) == 7
    other = save_tiny_dir(tmp_path / "other", "llama", seed=1, num_hidden_layers=2)
    third = _run(other, tmp_path / "e")  # other weights
    assert len(counted) == 9 and third["dense_ppl"] != first["dense_ppl"]


def test_unwritable_cache_is_skipped(tmp_path, counted, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    monkeypatch.setenv("DRL_CACHE_DIR", str(blocker / "cache"))
    src = save_tiny_dir(tmp_path / "tiny", "llama", num_hidden_layers=2)
    assert _run(src, tmp_path / "a")["dense_ppl"]["embedded"] > 1
    _run(src, tmp_path / "b")
    assert len(counted) == 4  # nothing cached, nothing broken


def test_the_key_depends_on_the_machine_arithmetic(monkeypatch):
    """A machine that rounds the probe product differently gets another key (its dense numbers are
    measured again, not taken from another machine's cache)."""
    import torch

    from drlightning.eval import dense_cache

    model = torch.nn.Linear(4, 4)
    tokens = {"embedded": torch.arange(8)}
    same = dense_cache.dense_key(model, tokens, {"seqlen": 8})
    assert dense_cache.dense_key(model, tokens, {"seqlen": 8}) == same  # deterministic
    assert dense_cache.arithmetic_probe() == dense_cache.arithmetic_probe()
    monkeypatch.setattr(dense_cache, "arithmetic_probe", lambda device="cpu": "other rounding")
    assert dense_cache.dense_key(model, tokens, {"seqlen": 8}) != same
