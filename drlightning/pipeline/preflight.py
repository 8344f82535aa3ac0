"""Pre-flight: every check that needs no weights, run before the model is loaded and before the
run directory is claimed — a typo fails in seconds and leaves nothing behind."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path

import torch

from ..data.calibration import knobs, windows_needed
from ..data.corpora import NAMED, local_files, text_bytes
from ..data.hub import cache_dirs, is_cached, offline_reason, source_dataset
from ..data.mix import mix_sources
from ..eval.task_index import known_to_lm_eval, task_dataset, task_files
from ..eval.zeroshot import CONTINUATION, local_spec
from ..lightning.calibration import CalibrationDataModule
from ..lightning.rotation_settings import RotationSettings, check_r1_blocks
from ..models.adapters import HeadLayout, adapter_for
from ..models.header import model_shape
from ..models.loading import check_model_limits
from .options import RunOptions
from .setup import check_pattern_fits


def check_device(name: str) -> None:
    """``run.device`` must name a device this machine has."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"run.device={name!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:<i>'") from None
    if device.type == "cuda":
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no GPU visible"
        if not torch.cuda.is_available():
            raise ValueError(f"run.device={name!r} but CUDA is not available here ({build}); use "
                             "'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"run.device={name!r} but only {torch.cuda.device_count()} GPU(s) "
                             "are visible")


def check_local_text(setting: str, source: str) -> int | None:
    """A local text source must exist and hold UTF-8 text. Returns a bound on its tokens: one
    per byte of text plus one per file (``None`` for embedded, Hub and Parquet sources)."""
    if source in NAMED or source.startswith(("hf:", "mix:")) or source_dataset(source):
        if source.startswith("mix:"):
            mix_sources(source)  # a bad name fails here, before anything loads
        return None
    counts = [text_bytes(f) for f in local_files(source, setting)]
    if None not in counts and sum(counts) == 0:
        raise ValueError(f"{setting}={source!r} is an empty file" if len(counts) == 1 else
                         f"{setting}={source!r}: every text file in it is empty")
    return None if None in counts else sum(counts) + len(counts)  # + one BOS token per file


def check_enough_text(source: str, most: int | None, nsamples: int, seqlen: int,
                      held_out: int = 0) -> None:
    """Cheap check before tokenising (the exact count follows it): ``most`` tokens at most."""
    if most is None or not isinstance(nsamples, int) or not isinstance(seqlen, int):
        return
    if most < (nsamples + held_out) * seqlen:
        raise ValueError(f"too little calibration text: data.source={source!r} holds at most "
                         f"{most} tokens (one per byte of text, plus one per file); "
                         f"{windows_needed(nsamples, seqlen, held_out)} are needed; "
                         f"lower {knobs(held_out)} or give more text")


def check_hub(opts: RunOptions, source: str) -> None:
    """Hub datasets and lm-eval tasks must be known, and reachable or already cached."""
    local = opts.eval.task_data_dir is not None
    tasks = [t for t in opts.eval.zero_shot if t != CONTINUATION and not local]
    for task in tasks:
        if not known_to_lm_eval(task):
            close = difflib.get_close_matches(task, list(task_files()), n=1)
            raise ValueError(f"run.eval.zero_shot: unknown lm-eval task {task!r}"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
    task_sets = {t: task_dataset(t) for t in tasks}
    needs = [(f"data.source={source!r}", source_dataset(source))]
    needs += [(f"run.eval.data {s!r}", source_dataset(s)) for s in opts.eval.data]
    needs += [(f"run.eval.zero_shot {t!r}", dataset) for t, dataset in task_sets.items()]
    needs = [(what, dataset) for what, dataset in needs if dataset]
    unknown = [t for t, dataset in task_sets.items() if dataset is None]
    if not needs and not unknown:
        return
    reason = offline_reason()
    missing = [f"{what} (Hub dataset {dataset})" for what, dataset in needs if not is_cached(dataset)]
    missing += [f"run.eval.zero_shot {t!r} (a group or generated task: its datasets were not checked)"
                for t in unknown]
    if reason is None or not missing:
        return
    if len(missing) == len(unknown):
        warnings.warn(f"the Hugging Face Hub is not available ({reason}); {'; '.join(missing)}",
                      stacklevel=2)
    else:
        raise ValueError(f"the Hugging Face Hub is not available ({reason}) and these need it "
                         f"but are not in the local cache ({cache_dirs()[0]}): "
                         f"{'; '.join(missing)}. Use local text files or 'embedded', and "
                         "run.eval.task_data_dir for the standard zero-shot tasks")


def check_calibration_text(data: CalibrationDataModule) -> None:
    """A local calibration source exists, holds UTF-8 text and is not obviously too short."""
    cal = data.hparams
    check_enough_text(data.source_label or cal.source, check_local_text("data.source", cal.source),
                      cal.nsamples, cal.seqlen, data.held_out)


def preflight(opts: RunOptions, rotation: RotationSettings, data: CalibrationDataModule,
              shape=None) -> None:
    """Device, model source and architecture, pattern vs every linear's width, r1_blocks,
    sequence lengths vs the model's context, local text sources (exist, UTF-8, enough bytes),
    offline task files, and Hub datasets/tasks known and reachable or cached. ``shape``: the
    config of a model already in memory (else read from ``run.model`` without its weights)."""
    check_device(opts.device)
    shape = shape or model_shape(opts.model, opts.gguf_file, opts.trust_remote_code)
    check_model_limits(shape)
    adapter_for(shape)
    layout = HeadLayout.from_config(shape)
    check_pattern_fits(layout.in_features(), shape.model_type, rotation.pattern)
    check_r1_blocks(layout.hidden, rotation.r1_blocks)
    context = getattr(shape, "max_position_embeddings", None)
    cal = data.hparams
    for setting, seqlen in (("data.seqlen", cal.seqlen), ("run.eval.seqlen", opts.eval.seqlen)):
        if context and seqlen and seqlen > context:
            raise ValueError(f"{setting}={seqlen} exceeds the model context of {context} tokens")
    check_calibration_text(data)
    for source in opts.eval.data:
        check_local_text("run.eval.data", source)
    if CONTINUATION in opts.eval.zero_shot:
        check_local_text("run.eval.task_text", opts.eval.task_text)
    if opts.eval.task_data_dir is not None:
        for task in opts.eval.zero_shot:
            if task != CONTINUATION:
                local_spec(task, Path(opts.eval.task_data_dir))
    check_hub(opts, cal.source)
