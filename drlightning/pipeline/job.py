"""One drlightning job: load → dense evaluation → rotate and prune every layer → evaluation → results.

Two small strategies shape it: where the model lives (:mod:`.placement`: whole, or layer by layer
from its shards) and where the rotations come from (:mod:`.schedules`: learned layer after layer,
all first over the ranks of a torchrun launch, or one shared rotation for the whole model).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..atomic import atomic_write_text, clean_orphans
from ..data import load_eval_text, tokenize_text
from ..eval.checks import check_eval_windows
from ..eval.dense_cache import cache_dir, load_dense, save_dense
from ..eval.perplexity import perplexity
from ..export.card import model_card
from ..layer.walk import held_windows
from ..lightning.calibration import CalibrationDataModule
from ..lightning.rotation_module import RotationModule
from ..lightning.rotation_settings import RotationSettings
from ..models import adapter_for
from ..models.loading import check_token_ids
from ..pruning import NO_PRUNING, parse_pattern
from ..reporting.monitor import RunMonitor
from ..reporting.report import load_run, report_markdown
from ..reporting.results import (
    EVAL_PROTOCOL,
    device_name,
    ensure_writable,
    format_table,
    peak_memory,
    side_by_side,
    versions,
    write_json,
)
from .content import run_content
from .options import RunOptions
from .placement import place_model
from .preflight import preflight
from .run_lock import run_lock
from .schedules import SCHEDULES, schedule_name
from .sequential import LayerLoop, TrainerFactory, rotate_and_prune
from .setup import check_options, fingerprint, resolve_device
from .state import RunClock, RunState
from .trainers import default_trainer_factory

__all__ = ["RunOptions", "quiet_lightning", "run_job"]


def window_split(n: int, held: int, asked: bool) -> dict:
    """Which of the ``n`` calibration windows the fits use and which (the last ``held``) are held
    out to judge; nothing when no hold-out was ``asked`` for (``model.holdout`` or
    ``data.held_out``)."""
    if not asked:
        return {}
    return {"fitted_windows": list(range(n - held)), "held_out_windows": list(range(n - held, n)),
            **({} if held else {"held_out_note": "too few windows to hold any out: the guard "
                                                 "kept the plain pruner's layers"})}


def held_out_perplexity(model, windows: torch.Tensor, held: int, whole: bool) -> float | None:
    """The finished model's perplexity on the held-out calibration windows (no fit saw them):
    the run's own judge of the whole model, comparable with the plain pruner's run of the same
    calibration (None without held-out windows, or layer by layer)."""
    if not held or not whole:
        return None
    return perplexity(model, windows[-held:].reshape(1, -1), windows.shape[1], progress=False)


def run_job(module: RotationModule, data: CalibrationDataModule, opts: RunOptions,
            make_trainer: TrainerFactory | None = None, *,
            loaded: tuple | None = None, config_text: str | None = None,
            settings: dict | None = None) -> dict:
    """Run one job: results.json, config.yaml and the saved model go into ``opts.output_dir``.

    ``module`` carries the rotation settings (``module.rotation``). ``settings`` (e.g. seed and
    trainer precision from the CLI) join the run fingerprint: a run directory holding finished
    layers of a run with other settings is refused; one with the same settings is resumed after
    its last finished layer. ``loaded`` = (model, tokenizer) already in memory (whole-model
    placement only).
    """
    start, run_dir, rotation = time.perf_counter(), Path(opts.output_dir), module.rotation
    ensure_writable(run_dir)
    check_options(opts, rotation, data.held_out)
    preflight(opts, rotation, data, loaded[0].config if loaded else None)  # nothing written
    with run_lock(run_dir):
        return _locked_job(module, data, opts, make_trainer, loaded, config_text, settings, start)


def _locked_job(module: RotationModule, data: CalibrationDataModule, opts: RunOptions,
                make_trainer: TrainerFactory | None, loaded: tuple | None, config_text: str | None,
                settings: dict | None, start: float) -> dict:
    """:func:`run_job` once its checks have passed and it holds the run directory's lock."""
    run_dir, rotation = Path(opts.output_dir), module.rotation
    for folder in (run_dir, run_dir / "state", run_dir / "state" / "rotations"):
        clean_orphans(folder)  # temporary files of a killed earlier attempt
    state = RunState(run_dir, fingerprint(rotation, data, opts, settings))
    state.check()  # the settings, before the model loads: refuses other finished work
    schedule = SCHEDULES[schedule_name(rotation.r1, opts.launch.mode)]()
    device = schedule.device(resolve_device(opts.device))
    place = place_model(opts, device, loaded)
    model, adapter = place.model, adapter_for(place.model.config)
    windows = data.calibration(place.tokenizer, getattr(model.config, "max_position_embeddings", None))
    seqlen = opts.eval.seqlen or data.hparams.seqlen
    eval_tokens = {name: tokenize_text(place.tokenizer, load_eval_text(name)) for name in opts.eval.data}
    check_eval_windows(opts.eval, eval_tokens, seqlen)
    vocab = getattr(model.config, "vocab_size", None)
    check_token_ids(windows, vocab, "the calibration text", place.tokenizer)
    for name, tokens in eval_tokens.items():
        check_token_ids(tokens, vocab, f"run.eval.data {name!r}", place.tokenizer)
    state = state.with_content(run_content(model, windows, place.shard_files()))
    if state.check():  # every check passed: the run directory is ours from here on
        state.claim()
    clock = RunClock(state, start)
    dense = dense_results(place, state, opts, eval_tokens, seqlen) if schedule.is_main else None
    loop, monitor = layer_loop(rotation, make_trainer or default_trainer_factory(opts, run_dir),
                               data.hparams.batch_size, opts, run_dir, clock)
    loop = replace(loop, module_class=type(module), held_out=data.held_out)
    with quiet_lightning():
        plan = schedule.prepare(model, adapter, windows, loop, run_dir, place.layerwise)
        if not schedule.is_main:  # a rank > 0: its layers are trained and saved
            monitor.close()
            schedule.stop()
            return {"rank": plan.rank}
        layer_reports = rotate_and_prune(model, adapter, windows, loop, state, plan, place.layerwise)
    held = held_windows(windows.shape[0], rotation.holdout, data.held_out)
    held_ppl = held_out_perplexity(model, windows, held, place.layerwise is None)
    export, final = place.finish(state, windows, run_dir, eval_tokens, seqlen, plan.shared_q)
    hp = rotation.as_dict()
    results = {
        "model": opts.model, "method": hp["method"], "pattern": str(hp["pattern"]),
        "steps": hp["steps"], "rotation": hp,
        "calibration": {**data.protocol(), "tokens": int(windows.numel()),
                        **window_split(windows.shape[0], held,
                                       rotation.holdout > 0 or data.held_out > 0),
                        **({"held_out_ppl": held_ppl} if held_ppl is not None else {})},
        **final, "dense_ppl": (dense or {}).get("ppl", {}),
        "dense_zero_shot": (dense or {}).get("zero_shot", {}),
        "eval": {"seqlen": seqlen, "max_windows": opts.eval.max_windows,
                 "datasets": opts.eval.data, "protocol": EVAL_PROTOCOL},
        "export": {**export, **plan.export}, "settings": settings or {}, "seconds": clock.total(),
        "seconds_this_run": clock.this_run(),
        "device": device_name(device), "memory": peak_memory(device), "versions": versions(),
        "options": asdict(opts),
        "layers": layer_reports,
    }
    write_outputs(results, run_dir, monitor, opts.monitor.baseline_run)
    if config_text is not None:  # with results.json, so a failed re-run leaves a finished run's own
        atomic_write_text(run_dir / "config.yaml", config_text)
    schedule.stop()
    return results


def layer_loop(rotation: RotationSettings, make_trainer: TrainerFactory, batch_size: int,
               opts: RunOptions, run_dir: Path, clock: RunClock) -> tuple[LayerLoop, RunMonitor]:
    """The layer loop's shared settings, with monitoring (TensorBoard, pictures) and the run's
    clock saved after every finished layer; returns (loop, monitor)."""
    pattern = rotation.pattern
    monitor = RunMonitor(run_dir, opts.monitor.tensorboard, opts.monitor.picture_layers,
                         opts.monitor.picture_role,
                         0.5 if pattern == NO_PRUNING else parse_pattern(pattern).sparsity)

    def layer_done(report: dict) -> None:
        monitor.layer_done(report)
        clock.save()

    loop = LayerLoop(rotation, make_trainer, batch_size, opts.monitor.progress,
                     opts.launch.offload_activations, opts.monitor.unrotated_error,
                     monitor.fit_done, layer_done)
    return loop, monitor


def write_outputs(results: dict, run_dir: Path, monitor: RunMonitor,
                  baseline_run: str | None) -> None:
    """results.json, the saved model's card, report.md (with the plots), and the table printed."""
    plot = monitor.model_done(results)
    monitor.close()
    write_json(run_dir / "results.json", results)
    export = results["export"]
    if export.get("path"):
        atomic_write_text(Path(export["path"]) / "README.md", model_card(results, export["path"]))
    baseline = load_run(baseline_run) if baseline_run else None
    atomic_write_text(run_dir / "report.md", report_markdown(results, baseline, plot))
    print(format_table(results))
    if baseline is not None and side_by_side(results, baseline):
        print(f"\nagainst the plain pruner ({baseline_run}):\n{side_by_side(results, baseline)}")


def dense_results(place, state: RunState, opts: RunOptions, eval_tokens: dict,
                  seqlen: int) -> dict | None:
    """The dense model's evaluation (``run.eval.dense``), cached in the run state for re-runs."""
    if not opts.eval.dense:
        return None
    wanted = {"plan": opts.eval.resolved(seqlen).protocol(),
              "model": {k: v for k, v in (state.fingerprint.get("content") or {}).items()
                        if k in ("weights", "config")}}
    cached = state.load_json("dense_eval.json")
    if cached is not None and cached.get("wanted") == wanted:
        return cached["result"]
    key = place.dense_key(eval_tokens, seqlen) if opts.eval.dense_cache else None
    dense = load_dense(key) if key else None
    if dense is not None:
        print(f"dense evaluation: reused from {cache_dir() / key}.json (an earlier run of the same "
              "weights and evaluation protocol; run.eval.dense_cache=false measures it again)")
    else:
        dense = place.evaluate(eval_tokens, seqlen)
        if key:
            save_dense(key, dense, {"model": opts.model, **wanted})
    state.save_json("dense_eval.json", {"wanted": wanted, "result": dense})
    shown = ", ".join(f"{name} {ppl:.3f}" for name, ppl in (dense.get("ppl") or {}).items())
    if shown:
        print(f"dense perplexity: {shown}", flush=True)
    return dense


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-Trainer info lines (GPU/TPU available, …) once per layer are noise, and so
    is its own deprecation warning about torch's pytree ``LeafSpec`` (not ours to fix)."""
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        quiet.setLevel(level)
