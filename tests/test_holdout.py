"""Selections judged on calibration windows no fit saw (``model.holdout``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from drlightning.cli import DRLightningCLI
from drlightning.layer.capture import LayerInputs, capture_layer_inputs, run_layer
from drlightning.layer.prune import PruneSpec
from drlightning.layer.step import FITTED_ONLY, prune_candidates
from drlightning.layer.walk import held_windows
from drlightning.lightning.rotation_settings import RotationSettings
from drlightning.models import HeadLayout, adapter_for

from .tiny import fit_args, save_tiny_dir, tiny_model, tiny_tokenizer


def test_held_windows_are_batched_on_their_own_and_disjoint():
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    ids = torch.randint(0, 96, (7, 16), generator=torch.Generator().manual_seed(0))
    inputs = capture_layer_inputs(model, adapter, ids, 4, held_windows=2)
    assert inputs.held == 1 and [h.shape[0] for h in inputs.hidden] == [4, 1, 2]
    assert [h.shape[0] for h in inputs.fitted().hidden] == [4, 1]
    whole = capture_layer_inputs(model, adapter, ids, 7)
    assert torch.equal(inputs.held_out().hidden[0], whole.hidden[0][5:])  # the last two windows
    assert held_windows(8, 0.25) == 2 and held_windows(8, 0.0) == 0 and held_windows(1, 0.5) == 0
    assert held_windows(3, 0.9) == 2  # one window always stays for the fits
    with pytest.raises(ValueError, match="holdout=1"):
        RotationSettings(holdout=1)


def _two_candidates():
    """A layer and a perturbed copy, and 'dense' outputs equal to the first candidate's on the
    fitted windows and to the second's on the held-out ones."""
    model = tiny_model("llama")
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    ids = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(1))
    inputs = capture_layer_inputs(model, adapter, ids, 2, held_windows=2)
    first = adapter.decoder_layers(model)[0]
    other = copy.deepcopy(first)
    with torch.no_grad():
        other.mlp.down_proj.weight.mul_(1.5)
    a, b = run_layer(first, inputs), run_layer(other, inputs)
    dense = LayerInputs(a.hidden[:-1] + b.hidden[-1:], inputs.kwargs, held=inputs.held)
    spec = PruneSpec(adapter, layout, "wanda", "none", guard=True, holdout=0.25)
    return {"rotated": first, "unrotated": other}, inputs, dense, spec


def test_the_guard_picks_on_held_out_windows():
    """'rotated' wins on the fitted windows (zero error) but loses on the held-out ones."""
    candidates, inputs, dense, spec = _two_candidates()
    _, report, out = prune_candidates(copy.deepcopy(candidates), inputs, dense, spec)
    assert report["guard"] == "unrotated" and report["judged_on"] == "held-out windows"
    assert report["pruning_error_fitted_rotated"] == 0 < report["pruning_error_rotated"]
    assert len(out.hidden) == len(inputs.hidden) and out.held == 1  # outputs of every window
    everything = LayerInputs(inputs.hidden, inputs.kwargs)  # judged on all windows instead
    dense_all = LayerInputs(dense.hidden, dense.kwargs)
    from dataclasses import replace

    _, report, _ = prune_candidates(copy.deepcopy(candidates), everything, dense_all,
                                    replace(spec, holdout=0.0))
    assert report["judged_on"] == FITTED_ONLY and report["guard"] in ("rotated", "unrotated")


def test_too_little_text_keeps_the_plain_pruners_layer():
    candidates, inputs, dense, spec = _two_candidates()
    none_held = LayerInputs(inputs.hidden, inputs.kwargs)
    _, report, _ = prune_candidates(candidates, none_held, LayerInputs(dense.hidden, dense.kwargs),
                                    spec)
    assert report["guard"] == "unrotated" and "too little calibration text" in report["judged_on"]


def _count_fitted_windows(monkeypatch) -> list[int]:
    """The number of windows each of the layer loop's Hessian collections sees (filled as it runs)."""
    import drlightning.pipeline.sequential as sequential

    seen: list[int] = []
    collect = sequential.collect_hessians

    def counting(layer, adapter, inputs, keys):
        seen.append(sum(h.shape[0] for h in inputs.hidden))
        return collect(layer, adapter, inputs, keys)

    monkeypatch.setattr(sequential, "collect_hessians", counting)
    return seen


def test_a_run_with_holdout_records_the_split_and_fits_without_it(tmp_path, monkeypatch):
    seen = _count_fitted_windows(monkeypatch)
    src = save_tiny_dir(tmp_path / "tiny", "qwen2")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, steps=3, extra=("--model.holdout", "0.25")))
    results = json.loads((run / "results.json").read_text())
    cal = results["calibration"]
    assert cal["held_out_windows"] == [6, 7] and cal["fitted_windows"] == list(range(6))
    assert cal["held_out_ppl"] > 1  # the finished model judged on the windows no fit saw
    assert seen and set(seen) == {6}  # the objective's Hessians: the 6 fitted windows only
    for layer in results["layers"]:
        assert layer["judged_on"] == "held-out windows"
        assert {"pruning_error_rotated", "pruning_error_fitted_rotated"} <= set(layer)


def _saved(path, tag: str):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    return path


def _finished(run_dir, held_ppl: float, eval_ppl: float, saved: bool = True) -> dict:
    path = _saved(run_dir / "model", str(run_dir)) if saved else None
    return {"model": "tiny", "method": "wanda", "pattern": "2:4", "steps": 5,
            "calibration": {"held_out_ppl": held_ppl, "held_out_windows": [6, 7]},
            "ppl": {"embedded": eval_ppl}, "export": {"path": str(path)} if saved else {}}


@pytest.mark.parametrize("plain_held, kept", [(9.0, "denoiserotator"), (11.0, "denoiserotator"),
                                              (7.0, "plain")])
def test_the_judge_keeps_the_model_better_on_held_out_windows(tmp_path, plain_held, kept):
    from drlightning.pipeline.baselines import judge

    run = tmp_path / "run"
    ours = _finished(run, 9.0 if plain_held != 11.0 else 10.0, 20.0)
    plain = _finished(run / "plain", plain_held, 30.0)
    result = judge(ours, plain, run, run / "plain")
    assert result["judge"]["kept"] == kept
    assert result["judge"]["held_out_ppl"]["plain"] == plain_held
    saved = json.loads((run / "results.json").read_text())
    assert saved["judge"]["kept"] == kept and saved["ppl"] == result["ppl"]
    tag = json.loads((run / "model" / "config.json").read_text())["tag"]
    if kept == "plain":  # the plain model and numbers are the run's; DenoiseRotator's moved aside
        assert tag == str(run / "plain") and result["ppl"] == {"embedded": 30.0}
        assert result["export"]["path"] == str(run / "model")
        assert json.loads((run / "rotated" / "model" / "config.json").read_text())["tag"] == str(run)
        assert result["judge"]["rotated"]["ppl"] == {"embedded": 20.0}
        assert (run / "rotated" / "results.json").is_file() and (run / "report.md").is_file()
    else:
        assert tag == str(run) and result["ppl"] == {"embedded": 20.0}
        assert not (run / "rotated").exists()


def test_the_judge_without_held_out_windows_keeps_the_plain_model(tmp_path):
    from drlightning.pipeline.baselines import judge

    run = tmp_path / "run"
    ours, plain = _finished(run, 9.0, 20.0, saved=False), _finished(run / "plain", 7.0, 30.0, False)
    ours["calibration"]["held_out_ppl"] = plain["calibration"]["held_out_ppl"] = None
    result = judge(ours, plain, run, run / "plain")
    assert result["judge"]["kept"] == "plain" and "too little text" in result["judge"]["note"]


@pytest.mark.parametrize("change, message", [
    ({"holdout": 0.0}, "hold none out"), ({"steps": 0}, "is the plain pruner"),
])
def test_the_judge_refuses_what_it_cannot_judge(change, message):
    from drlightning.pipeline.options import RunOptions
    from drlightning.pipeline.setup import check_options

    settings = RotationSettings(**{"steps": 5, "holdout": 0.25, **change})
    with pytest.raises(ValueError, match=message):
        check_options(RunOptions(judge=True), settings)
    from dataclasses import replace

    from drlightning.pipeline.options import LaunchOptions
    with pytest.raises(ValueError, match="layerwise"):
        check_options(replace(RunOptions(judge=True), launch=LaunchOptions(layerwise=True)),
                      RotationSettings(steps=5, holdout=0.25))


@pytest.mark.parametrize("method, pattern", [
    ("magnitude", "2:4"),
    pytest.param("magnitude", "50%", marks=pytest.mark.slow),
    pytest.param("magnitude", "4:8", marks=pytest.mark.slow),
    pytest.param("wanda", "2:4", marks=pytest.mark.slow),
    pytest.param("wanda", "4:8", marks=pytest.mark.slow),
    pytest.param("wanda", "50%", marks=pytest.mark.slow),
    pytest.param("sparsegpt", "2:4", marks=pytest.mark.slow),
    pytest.param("sparsegpt", "4:8", marks=pytest.mark.slow),
    pytest.param("sparsegpt", "50%", marks=pytest.mark.slow),
])
def test_a_judged_run_is_never_worse_than_plain_on_held_out_windows(tmp_path, method, pattern):
    """A whole judged run: the kept model is the one with the lower held-out perplexity, its
    saved copy reproduces it, and the run's numbers are the kept run's."""
    from drlightning import load_pretrained
    from drlightning.eval.perplexity import perplexity
    from drlightning.lightning.calibration import CalibrationDataModule

    src = save_tiny_dir(tmp_path / "tiny", "llama")
    run = tmp_path / "run"
    held = ("--data.held_out", "2") if pattern == "2:4" else ("--model.holdout", "0.25")
    DRLightningCLI(args=fit_args(src, run, method=method, pattern=pattern, steps=5,
                                 extra=(*held, "--run.judge", "true", "--model.lr", "0.05")))
    results = json.loads((run / "results.json").read_text())
    plain = json.loads((run / "plain" / "results.json").read_text())
    verdict = results["judge"]
    held = verdict["held_out_ppl"]
    assert held["plain"] == plain["calibration"]["held_out_ppl"]
    assert verdict["kept"] == ("plain" if held["plain"] < held["denoiserotator"] else "denoiserotator")
    assert min(held.values()) <= held["plain"]
    if verdict["kept"] == "plain":
        assert results["ppl"] == plain["ppl"] and results["steps"] == 0
        assert (run / "rotated" / "model" / "config.json").is_file()
    model = load_pretrained(str(run / "model"))  # either kind of output
    nsamples, extra = (8, 2) if pattern == "2:4" else (8, 0)
    windows = CalibrationDataModule(nsamples=nsamples, seqlen=64,
                                    held_out=extra).calibration(tiny_tokenizer())
    again = perplexity(model, windows[-2:].reshape(1, -1), 64, progress=False)
    assert again == pytest.approx(held[verdict["kept"]], rel=1e-4)


class _CountingTokenizer:
    """Document i → tokens i·10⁴ … i·10⁴ + length − 1: windows overlap iff they share a token."""

    def __call__(self, text, **_):
        i, length = (int(part) for part in text.split(":"))
        return {"input_ids": list(range(i * 10_000, i * 10_000 + length))}


def test_extra_held_out_windows_leave_the_fitted_ones_alone_and_share_no_text():
    from drlightning.data import calibration_windows

    docs = [f"{i}:{300 + 40 * i}" for i in range(6)]
    tok = _CountingTokenizer()
    plain = calibration_windows(tok, docs, 10, 64, seed=3)
    both = calibration_windows(tok, docs, 10, 64, seed=3, held_out=4)
    assert both.shape == (14, 64) and torch.equal(both[:10], plain)
    fitted = set(plain.flatten().tolist())
    for window in both[10:]:
        assert not fitted & set(window.tolist())
    short = [f"{i}:100" for i in range(3)]  # seed 0 puts a fitted window in each document
    with pytest.raises(ValueError, match="held_out=1: found only 0 windows"):
        calibration_windows(tok, short, 3, 64, seed=0, held_out=1)
    with pytest.raises(ValueError, match="held_out=-1"):
        calibration_windows(tok, docs, 2, 64, held_out=-1)


def test_a_run_with_extra_held_out_windows_fits_on_all_nsamples(tmp_path, monkeypatch):
    seen = _count_fitted_windows(monkeypatch)
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, steps=3, extra=("--data.held_out", "2")))
    cal = json.loads((run / "results.json").read_text())["calibration"]
    assert cal["held_out_windows"] == [8, 9] and cal["fitted_windows"] == list(range(8))
    assert cal["held_out"] == 2 and cal["held_out_ppl"] > 1
    assert seen and set(seen) == {8}
    with pytest.raises(ValueError, match="choose one"):  # both ways: refused before anything runs
        DRLightningCLI(args=fit_args(src, tmp_path / "both", steps=3,
                                     extra=("--data.held_out", "2", "--model.holdout", "0.25")))
    assert not (tmp_path / "both" / "results.json").exists()
