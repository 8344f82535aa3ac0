"""Pre-flight: every check that needs no weights, run before the model is loaded and before the
run directory is claimed — a typo fails in seconds and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.corpora import NAMED
from ..eval.zeroshot import CONTINUATION, local_spec
from ..lightning.calibration import CalibrationDataModule
from ..lightning.rotation_module import RotationModule, check_r1_blocks
from ..models.adapters import HeadLayout, adapter_for
from ..models.header import model_shape
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


def check_local_text(setting: str, source: str) -> None:
    """A local text source must exist and not be empty (hub sources are checked when read)."""
    if source in NAMED or source.startswith("hf:"):
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{setting}={source!r}: no such file or directory (named sources: "
                                f"{', '.join(NAMED)})")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{setting}={source!r} is an empty file")


def preflight(opts: RunOptions, module: RotationModule, data: CalibrationDataModule) -> None:
    """Device, model source and architecture, pattern vs every linear's width, r1_blocks,
    sequence lengths vs the model's context, local text sources and offline task files."""
    check_device(opts.device)
    shape = model_shape(opts.model, opts.gguf_file, opts.trust_remote_code)
    adapter_for(shape)
    layout = HeadLayout.from_config(shape)
    hp = module.settings()
    check_pattern_fits(layout.in_features(), shape.model_type, hp["pattern"])
    check_r1_blocks(layout.hidden, hp["r1_blocks"])
    context = getattr(shape, "max_position_embeddings", None)
    for setting, seqlen in (("data.seqlen", data.hparams.seqlen), ("run.eval.seqlen", opts.eval.seqlen)):
        if context and seqlen and seqlen > context:
            raise ValueError(f"{setting}={seqlen} exceeds the model context of {context} tokens")
    check_local_text("data.source", data.hparams.source)
    for source in opts.eval.data:
        check_local_text("run.eval.data", source)
    if CONTINUATION in opts.eval.zero_shot:
        check_local_text("run.eval.task_text", opts.eval.task_text)
    if opts.eval.task_data_dir is not None:
        for task in opts.eval.zero_shot:
            if task != CONTINUATION:
                local_spec(task, Path(opts.eval.task_data_dir))
