"""The plain pruner beside DenoiseRotator: as a baseline for the report (``run.monitor.plain_baseline``)
and as the model-wide judge (``run.judge``) that keeps whichever finished model is better on the
calibration windows no fit saw."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from ..atomic import atomic_write_text
from ..lightning.calibration import CalibrationDataModule
from ..lightning.rotation_module import RotationModule
from ..lightning.rotation_settings import RotationSettings
from ..reporting.report import report_markdown
from ..reporting.results import write_json
from .job import run_job
from .options import RunOptions
from .sequential import TrainerFactory
from .setup import check_options

OURS, PLAIN = "denoiserotator", "plain"


def run_with_plain_baseline(module: RotationModule, data: CalibrationDataModule, opts: RunOptions,
                            make_trainer: TrainerFactory | None = None, *,
                            plain_loaded: tuple | None = None, **kw) -> dict:
    """:func:`run_job`, after the plain pruner (:func:`plain_settings`: the same calibration
    windows, held-out split and evaluation) into ``<output_dir>/plain`` when ``run.monitor.plain_baseline``
    or ``run.judge`` asks for it. With the judge, the finished model that is better on the held-out
    calibration windows is the run's result (see :func:`judge`); else the run ends with dense,
    plain and DenoiseRotator side by side (``kw``: run_job's keywords; ``plain_loaded``: the
    (model, tokenizer) the plain pruner prunes when ``kw`` has a loaded model — a second copy,
    since each run prunes its model in place)."""
    if not (opts.monitor.plain_baseline or opts.judge):
        return run_job(module, data, opts, make_trainer, **kw)
    check_options(opts, module.rotation, data.held_out)  # before the plain run, not after it
    plain_dir = Path(opts.output_dir) / "plain"
    print(f"the plain pruner first, as the baseline: {plain_dir}", flush=True)
    plain = type(module).from_settings(plain_settings(module.rotation))
    monitor = replace(opts.monitor, plain_baseline=False, tensorboard=False, picture_layers=[])
    run_job(plain, data, replace(opts, output_dir=str(plain_dir), monitor=monitor, judge=False,
                                 export=replace(opts.export, save=opts.judge and opts.export.save)),
            make_trainer, settings=kw.get("settings"), loaded=plain_loaded)
    print("\nDenoiseRotator:", flush=True)
    results = run_job(module, data, replace(opts, judge=False, monitor=replace(
        opts.monitor, plain_baseline=False, baseline_run=str(plain_dir))), make_trainer, **kw)
    if "calibration" not in results:  # a rank > 0 of a parallel launch
        return results
    plain_results = json.loads((plain_dir / "results.json").read_text(encoding="utf-8"))
    if opts.judge:
        return judge(results, plain_results, Path(opts.output_dir), plain_dir)
    theirs = plain_results["calibration"].get("held_out_ppl")
    ours = results["calibration"].get("held_out_ppl")
    if theirs is not None and ours is not None and ours > theirs:
        print(f"warning: on the held-out calibration windows DenoiseRotator's model is worse than "
              f"the plain pruner's (perplexity {ours:.3f} > {theirs:.3f}): the plain model "
              f"may be the better one; it is in {plain_dir} (run.judge=true keeps it)", flush=True)
    return results


def plain_settings(settings: RotationSettings) -> RotationSettings:
    """The plain pruner of a run: no rotation, no channel permutation and no refit (each of
    those can fit the calibration domain; a judged run's baseline must not), the rest as set."""
    return replace(settings, steps=0, permute=False, refit="none")


def verdict(ours: dict, plain: dict) -> dict:
    """Which finished model the judge keeps: the lower perplexity on the held-out calibration
    windows (DenoiseRotator's on a tie), with both values and the windows judged on. Without
    held-out windows (too little calibration text to split) it cannot judge and keeps the plain
    pruner's model, and says so."""
    held = {OURS: ours["calibration"].get("held_out_ppl"),
            PLAIN: plain["calibration"].get("held_out_ppl")}
    windows = ours["calibration"].get("held_out_windows", [])
    if None in held.values():
        return {"kept": PLAIN, "held_out_ppl": held, "held_out_windows": windows,
                "note": "no calibration window could be held out (too little text): the plain "
                        "pruner's model is kept without a comparison"}
    kept = OURS if held[OURS] <= held[PLAIN] else PLAIN
    return {"kept": kept, "held_out_ppl": held, "held_out_windows": windows}


def judge(ours: dict, plain: dict, run_dir: Path, plain_dir: Path) -> dict:
    """Keep the better finished model. DenoiseRotator's stays where it is when it wins. When the
    plain pruner's wins, its model and results become the run's (``<run_dir>/model``,
    ``results.json``, ``report.md``) and DenoiseRotator's move to ``<run_dir>/rotated``. Either way
    results.json records the verdict under ``judge``; returns the kept run's results."""
    decision = verdict(ours, plain)
    held = decision["held_out_ppl"]
    if decision["kept"] == OURS:
        kept = {**ours, "judge": decision}
        print(f"judge: DenoiseRotator's model is kept (perplexity on the "
              f"{len(decision['held_out_windows'])} held-out calibration windows {held[OURS]:.3f}, "
              f"the plain pruner's {held[PLAIN]:.3f})", flush=True)
        write_json(run_dir / "results.json", kept)
        return kept
    rotated = run_dir / "rotated"
    rotated.mkdir(parents=True, exist_ok=True)
    moved_ours = _move_model(ours, run_dir / "model", rotated / "model")
    write_json(rotated / "results.json", moved_ours)
    kept = {**_move_model(plain, plain_dir / "model", run_dir / "model"),
            "judge": {**decision, "rotated": {"run_dir": str(rotated), "ppl": ours.get("ppl", {}),
                                              "zero_shot": ours.get("zero_shot", {})}}}
    write_json(run_dir / "results.json", kept)
    atomic_write_text(run_dir / "report.md", report_markdown(kept))
    where = f": {kept['export']['path']}" if kept["export"].get("path") else ""
    why = decision.get("note") or (
        f"on the {len(decision['held_out_windows'])} held-out calibration windows its perplexity "
        f"is {held[PLAIN]:.3f}, DenoiseRotator's {held[OURS]:.3f}")
    print(f"judge: the plain pruner's model is kept{where} — {why} (DenoiseRotator's run is in "
          f"{rotated})", flush=True)
    return kept


def _move_model(results: dict, source: Path, target: Path) -> dict:
    """Move a saved model directory (if the run saved one) and return ``results`` pointing at it."""
    export = dict(results.get("export") or {})
    if not export.get("path") or not source.is_dir():
        return results
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)
    return {**results, "export": {**export, "path": str(target)}}
