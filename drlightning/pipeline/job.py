"""One drlightning job: load → dense perplexity → rotate+prune every layer → perplexity → results."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from ..atomic import atomic_write_text
from ..data import load_eval_text, tokenize_text
from ..eval.api import evaluate_loaded
from ..export import save_model_dir
from ..lightning.calibration import CalibrationDataModule
from ..lightning.rotation_module import RotationModule, check_r1_blocks
from ..models import DEFAULT_MODEL, adapter_for, load_model
from ..models.adapters import ROLES
from ..models.loading import DTYPES
from ..pruning import NO_PRUNING, parse_pattern
from ..reporting.monitor import RunMonitor
from ..reporting.report import load_run, report_markdown
from ..reporting.results import (
    EVAL_PROTOCOL,
    device_name,
    ensure_writable,
    format_table,
    versions,
    write_json,
)
from .layerwise import LayerwiseJob, check_layerwise_options
from .parallel import MODES, Ranks, parallel_rotations
from .sequential import rotate_and_prune
from .setup import boundary_dtype, check_pattern_fits, finalize_rotations, fingerprint, opts_dtype
from .state import RunState

BAD_PRECISIONS = ("bf16-true", "16-true", "bf16", "16", "half", "transformer-engine")


@dataclass
class RunOptions:
    """Run-level settings (the ``run:`` section of a config).

    Args:
        model: "smollm2-135m-instruct" (embedded default), a .gguf file, a local HF directory or a
            hub id.
        gguf_file: GGUF file name inside ``model`` when ``model`` is a directory.
        dtype: dtype the model is loaded in (float32, bfloat16, float16, float64).
        device: "auto", "cpu" or "cuda[:i]" for calibration replay and evaluation.
        output_dir: run directory (config, results.json, TensorBoard logs).
        eval_data: perplexity datasets: "embedded", "wikitext2", "c4", "hf:<id>" or local paths.
        eval_seqlen: perplexity window length (default: the calibration seqlen).
        eval_max_windows: evaluate only the first N windows (None = all).
        eval_batch_size: windows per forward pass during evaluation.
        dense_ppl: also evaluate the dense model first (perplexity and zero-shot).
        zero_shot: lm-eval tasks evaluated 0-shot at the end (and on the dense model), e.g.
            [piqa, hellaswag, arc_easy, arc_challenge, winogrande] or [drl_continuation] (offline,
            generated from ``task_text``); empty = perplexity only.
        task_data_dir: folder of <task>.jsonl files to run the standard tasks offline.
        task_text: text source of the generated ``drl_continuation`` task.
        task_items: number of generated ``drl_continuation`` items.
        task_limit: evaluate only the first N documents of each task.
        picture_layers: layers whose importance picture (before/after rotation) is drawn to
            ``output_dir/pictures`` and TensorBoard.
        picture_role: the linear drawn: q, k, v, o, gate, up or down.
        unrotated_error: also prune an unrotated copy of each layer and report its pruning error
            next to the rotated one (the per-layer gain; costs one extra pruning per layer).
        baseline_run: run directory of a baseline (e.g. the plain pruner, steps 0) for report.md's
            "gap closed" column.
        tensorboard: log each layer's entropy curve to ``output_dir/tensorboard/layer_XX``.
        trust_remote_code: allow remote modelling code of the *input* model (off by default).
        progress: show progress bars.
        save_model: save the final model as a Hugging Face directory in ``output_dir/model``.
        rotation_dtype: storage dtype of the merged boundary rotations: "auto" (float32, float64
            for float64 models), "model" (the model's dtype) or a dtype name; see
            docs/benchmarks.md for the logit error of each choice.
        offload_activations: keep the calibration activations in pinned host memory and move one
            batch at a time to the GPU (large models; no effect on CPU).
        mode: "sequential" (the paper's protocol: layer ℓ's rotations are learned on the outputs
            of the already pruned layers) or "parallel" (all rotations learned from one dense
            calibration pass, spread over the ranks of a torchrun launch; merge and pruning stay
            sequential). See drlightning/pipeline/parallel.py and docs/benchmarks.md for the difference.
        layerwise: load the model layer by layer from its safetensors shards (a local directory or
            hub id): host memory holds one decoder layer, the embeddings and head, not the whole
            model. Perplexity streams the layers; the model is saved shard by shard. Perplexity
            only (no zero-shot).
    """

    model: str = DEFAULT_MODEL
    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    output_dir: str = "runs/latest"
    eval_data: list[str] = field(default_factory=lambda: ["embedded"])
    eval_seqlen: int | None = None
    eval_max_windows: int | None = None
    eval_batch_size: int = 4
    dense_ppl: bool = True
    zero_shot: list[str] = field(default_factory=list)
    task_data_dir: str | None = None
    task_text: str = "embedded"
    task_items: int = 200
    task_limit: int | None = None
    picture_layers: list[int] = field(default_factory=lambda: [0])
    picture_role: str = "o"
    unrotated_error: bool = False
    baseline_run: str | None = None
    tensorboard: bool = True
    trust_remote_code: bool = False
    progress: bool = True
    save_model: bool = True
    rotation_dtype: str = "auto"
    offload_activations: bool = False
    mode: str = "sequential"
    layerwise: bool = False


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_precision(precision) -> None:
    """Refuse precisions that would cast the frozen weights/Hessians of the objective to 16 bits."""
    if str(precision) in BAD_PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r} is not allowed for rotation training "
                         "(it casts frozen weights and Hessians to 16 bits); use 32-true or bf16-mixed")


def default_trainer_factory(opts: RunOptions, run_dir: Path, base: dict | None = None,
                            callbacks: list | None = None) -> Callable[..., Trainer]:
    """A fresh Trainer per layer (rotation training only) with a per-layer logger.

    Merging and pruning run after ``fit`` as plain functions (:mod:`drlightning.layer.step`);
    ``callbacks`` are the user's other callbacks (the CLI leaves out its merge and prune shells,
    which would do that work twice). Under a multi-process launch
    (torchrun) with CUDA each rank trains on its own GPU (``LOCAL_RANK``). Each Trainer clips the
    gradient norm at the module's ``grad_clip``; a template with another ``gradient_clip_val`` (or
    clipping by value) is refused (:meth:`RotationModule.trainer_clipping`).
    """
    base = dict(base or {})
    user = list(callbacks or [])

    def make(index: int, module: RotationModule) -> Trainer:
        kwargs = {"accelerator": "auto", "devices": 1, "precision": "32-true", "logger": False,
                  "enable_checkpointing": False, "enable_model_summary": False,
                  "log_every_n_steps": 10, "enable_progress_bar": opts.progress, **base}
        kwargs["max_steps"] = module.hparams.steps
        kwargs.update(module.trainer_clipping(base))
        kwargs["callbacks"] = [*user]
        check_precision(kwargs["precision"])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if (world > 1 and kwargs["devices"] == 1 and torch.cuda.is_available()
                and str(kwargs["accelerator"]) in ("auto", "gpu", "cuda")):
            kwargs["devices"] = [int(os.environ.get("LOCAL_RANK", "0"))]
        if opts.tensorboard:
            kwargs["logger"] = TensorBoardLogger(str(run_dir), name="tensorboard",
                                                 version=f"layer_{index:02d}")
        return Trainer(**kwargs)

    return make


def run_job(
    module: RotationModule,
    data: CalibrationDataModule,
    opts: RunOptions,
    make_trainer: Callable[[int, RotationModule], Trainer] | None = None,
    *,
    loaded: tuple | None = None,
    dense_ppl: dict[str, float] | None = None,
    config_text: str | None = None,
    settings: dict | None = None,
) -> dict:
    """Run one job: results.json, config.yaml and the saved model go into ``opts.output_dir``.

    ``settings`` (e.g. seed and trainer precision from the CLI) join the run fingerprint: a run
    directory holding finished layers of a run with other settings is refused; one with the same
    settings is resumed after its last finished layer.
    """
    start = time.perf_counter()
    run_dir = Path(opts.output_dir)
    ensure_writable(run_dir)
    if opts.rotation_dtype not in ("auto", "model", *DTYPES):
        raise ValueError(f"run.rotation_dtype={opts.rotation_dtype!r}; allowed: 'auto', 'model', "
                         f"{', '.join(map(repr, DTYPES))}")
    if opts.mode not in MODES:
        raise ValueError(f"run.mode={opts.mode!r}; allowed: {', '.join(map(repr, MODES))}")
    if opts.mode == "parallel" and module.hparams.steps == 0:
        raise ValueError("run.mode='parallel' trains rotations; model.steps=0 (the plain pruner) "
                         "has none — use run.mode='sequential'")
    check_layerwise_options(opts)
    if opts.picture_role not in ROLES:
        raise ValueError(f"run.picture_role={opts.picture_role!r}; allowed: {', '.join(ROLES)}")
    state = RunState(run_dir, fingerprint(module, data, opts, settings))
    state.check_or_claim()
    if config_text is not None:
        atomic_write_text(run_dir / "config.yaml", config_text)
    make_trainer = make_trainer or default_trainer_factory(opts, run_dir)
    ranks = Ranks.from_env() if opts.mode == "parallel" else Ranks()
    device = ranks.start(resolve_device(opts.device)) if opts.mode == "parallel" else \
        resolve_device(opts.device)
    job = LayerwiseJob(opts, device) if opts.layerwise else None
    lw = job.lw if job is not None else None
    model, tokenizer = (lw.model, lw.tokenizer) if lw is not None else loaded or load_model(
        opts.model, gguf_file=opts.gguf_file, dtype=opts.dtype,
        trust_remote_code=opts.trust_remote_code)
    adapter = adapter_for(model.config)
    hp = module.settings()
    check_pattern_fits(model, adapter, hp["pattern"])
    check_r1_blocks(model.config.hidden_size, hp["r1_blocks"])
    if job is None:
        model.to(device)
    max_len = getattr(model.config, "max_position_embeddings", None)
    windows = data.calibration(tokenizer, max_len)
    seqlen = opts.eval_seqlen or data.hparams.seqlen
    eval_tokens = {name: tokenize_text(tokenizer, load_eval_text(name)) for name in opts.eval_data}
    baseline = load_run(opts.baseline_run) if opts.baseline_run else None

    def evaluate() -> dict:
        if job is not None:
            return job.evaluate_dense(eval_tokens, seqlen)
        return evaluate_loaded(model, tokenizer, ppl=opts.eval_data, seqlen=seqlen,
                               max_windows=opts.eval_max_windows, batch_size=opts.eval_batch_size,
                               tasks=opts.zero_shot, task_data_dir=opts.task_data_dir,
                               task_text=opts.task_text, task_items=opts.task_items,
                               task_limit=opts.task_limit, progress=opts.progress,
                               eval_tokens=eval_tokens)

    dense = {"ppl": dense_ppl} if dense_ppl is not None else None
    cached = state.load_json("dense_eval.json")
    wanted = {"ppl": sorted(opts.eval_data), "zero_shot": sorted(opts.zero_shot)}
    if dense is None and opts.dense_ppl and ranks.rank == 0:
        if cached is not None and cached.get("wanted") == wanted:
            dense = cached["result"]
        else:
            dense = evaluate()
            state.save_json("dense_eval.json", {"wanted": wanted, "result": dense})
    pattern = hp["pattern"]
    monitor = RunMonitor(run_dir, opts.tensorboard, opts.picture_layers, opts.picture_role,
                         0.5 if pattern == NO_PRUNING else parse_pattern(pattern).sparsity)
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        layer_step = None
        if opts.mode == "parallel":
            layer_step = parallel_rotations(model, adapter, windows, module, make_trainer, run_dir,
                                            ranks, data.hparams.batch_size, opts.progress,
                                            monitor.fit_done, opts.offload_activations, lw)
            if layer_step is None:  # a rank > 0: its layers are trained and saved
                monitor.close()
                ranks.stop()
                return {"rank": ranks.rank}
        layer_reports = rotate_and_prune(model, adapter, windows, module, make_trainer,
                                         batch_size=data.hparams.batch_size, progress=opts.progress,
                                         state=state, on_layer=monitor.layer_done,
                                         on_fit=monitor.fit_done,
                                         unrotated_error=opts.unrotated_error,
                                         layer_step=layer_step, offload=opts.offload_activations,
                                         layerwise=lw)
    finally:
        quiet.setLevel(level)
    if job is not None:
        export, final = job.finish(state, windows, run_dir, eval_tokens, seqlen)
    else:
        export = finalize_rotations(model, adapter, windows, boundary_dtype(opts, opts_dtype(model)))
        final = evaluate()
    results = {
        "model": opts.model, "method": hp["method"], "pattern": str(hp["pattern"]),
        "steps": hp["steps"], "rotation": hp,
        "calibration": {**data.protocol(), "tokens": int(windows.numel())},
        **final, "dense_ppl": (dense or {}).get("ppl", {}),
        "dense_zero_shot": (dense or {}).get("zero_shot", {}),
        "eval": {"seqlen": seqlen, "max_windows": opts.eval_max_windows,
                 "datasets": opts.eval_data, "protocol": EVAL_PROTOCOL},
        "export": export,
        "settings": settings or {},
        "seconds": time.perf_counter() - start,
        "device": device_name(device), "versions": versions(), "options": asdict(opts),
        "layers": layer_reports,
    }
    if opts.save_model and job is None:
        save_model_dir(model, tokenizer, run_dir / "model", {k: v for k, v in export.items()
                                                              if k.startswith("drl_")})
        results["export"]["path"] = str(run_dir / "model")
    plot = monitor.model_done(results)
    monitor.close()
    write_json(run_dir / "results.json", results)
    atomic_write_text(run_dir / "report.md", report_markdown(results, baseline, plot))
    print(format_table(results))
    ranks.stop()
    return results
