"""Where the model lives during a run: whole in memory, or layer by layer from its shards.

Both give the loops the model (``layerwise`` is None for the whole model), evaluate it, and finish
the run: merge the boundary rotations, evaluate, save.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..data import load_eval_text
from ..eval.api import evaluate_loaded, protocol_windows
from ..eval.dense_cache import bytes_digest, dense_key
from ..eval.layerwise import layerwise_perplexity
from ..eval.zeroshot import CONTINUATION
from ..export import save_model_dir
from ..export.finish import boundary_dtype, finalize_rotations, merge_tolerance, model_dtype, to_standard
from ..export.sharded import save_layerwise_dir
from ..models import adapter_for, load_model
from ..models.shards import LayerwiseModel, ShardedCheckpoint
from .content import config_digest
from .options import RunOptions


def evaluate_saved(evaluate: Callable[[], dict], path: Path) -> dict:
    """``evaluate()`` of a model already saved at ``path``; a failure says where the model is and
    how to evaluate it again (the rotation and pruning work is not lost)."""
    try:
        return evaluate()
    except Exception as err:
        raise RuntimeError(f"the final evaluation failed ({type(err).__name__}: {err}); the pruned "
                           f"model is saved in {path} — evaluate it again with `drlightning eval "
                           f"--model {path}`") from err


class WholeModel:
    """The whole model on ``device`` (``loaded``: a (model, tokenizer) pair loaded by the caller)."""

    layerwise = None

    def __init__(self, opts: RunOptions, device: torch.device, loaded: tuple | None = None) -> None:
        self.opts = opts
        self.model, self.tokenizer = loaded or load_model(
            opts.model, gguf_file=opts.gguf_file, dtype=opts.dtype,
            trust_remote_code=opts.trust_remote_code)
        self.model.to(device)

    def evaluate(self, eval_tokens: dict, seqlen: int) -> dict:
        """Perplexity on every evaluation dataset and the zero-shot tasks."""
        return evaluate_loaded(self.model, self.tokenizer, self.opts.eval.resolved(seqlen),
                               eval_tokens, self.opts.monitor.progress)

    def shard_files(self) -> None:
        """The weights are in memory (their digest is taken from there)."""
        return None

    def dense_key(self, eval_tokens: dict, seqlen: int) -> str | None:
        """The key of the (still dense) model's evaluation in the cross-run cache."""
        ev = self.opts.eval
        settings = {k: v for k, v in asdict(ev).items() if k not in ("dense", "dense_cache")}
        texts = {}
        if CONTINUATION in ev.zero_shot:
            texts["task_text"] = bytes_digest([("text", load_eval_text(ev.task_text).encode())])
        if ev.task_data_dir:
            texts["task_data"] = bytes_digest((f.name, f.read_bytes())
                                              for f in sorted(Path(ev.task_data_dir).glob("*.jsonl")))
        param = next(self.model.parameters())
        protocol = {"config": config_digest(self.model.config), "dtype": str(param.dtype),
                    "device": param.device.type, "seqlen": seqlen, "eval": settings,
                    "zero_shot_batch_size": ev.batch_size, **texts}  # lm-eval's since the plan
        return dense_key(self.model, eval_tokens, protocol)

    def finish(self, state, windows: torch.Tensor, run_dir: Path, eval_tokens: dict,
               seqlen: int, shared: torch.Tensor | None = None) -> tuple[dict, dict]:
        """Merge the boundary rotations (or absorb the ``shared`` one), evaluate, save; returns
        (export fields, final results)."""
        adapter = adapter_for(self.model.config)
        standard = {} if shared is None else to_standard(self.model, adapter, shared, windows[:1])
        rotation_dtype = boundary_dtype(self.opts.export.rotation_dtype, model_dtype(self.model))
        export = {**finalize_rotations(self.model, adapter, windows[:1], rotation_dtype), **standard}
        if not self.opts.export.save:
            return export, self.evaluate(eval_tokens, seqlen)
        path = Path(run_dir) / "model"
        save_model_dir(self.model, self.tokenizer, path,
                       {k: v for k, v in export.items() if k.startswith("drl_")})
        export["path"] = str(path)
        return export, evaluate_saved(lambda: self.evaluate(eval_tokens, seqlen), path)


class LayerByLayer:
    """Decoder layers stay on disk (``meta`` in memory) until their turn (``run.launch.layerwise``)."""

    def __init__(self, opts: RunOptions, device: torch.device, loaded: tuple | None = None) -> None:
        if loaded is not None:
            raise ValueError("run.launch.layerwise=true loads the model from its shards itself; "
                             "do not pass a loaded model")
        self.opts = opts
        self.layerwise = LayerwiseModel(opts.model, dtype=opts.dtype, device=device,
                                        gguf_file=opts.gguf_file,
                                        trust_remote_code=opts.trust_remote_code)
        self.model, self.tokenizer = self.layerwise.model, self.layerwise.tokenizer

    def _perplexity(self, checkpoint: ShardedCheckpoint, eval_tokens: dict, seqlen: int) -> dict:
        ev = self.opts.eval
        windows = {name: protocol_windows(name, ev.max_windows) for name in eval_tokens}
        return {"ppl": layerwise_perplexity(self.layerwise, checkpoint, eval_tokens, seqlen,
                                            windows, ev.batch_size, self.opts.monitor.progress,
                                            self.opts.launch.offload_activations)}

    def evaluate(self, eval_tokens: dict, seqlen: int) -> dict:
        """Perplexity of the input model, its layers streamed from its own shards."""
        return self._perplexity(self.layerwise.checkpoint, eval_tokens, seqlen)

    def shard_files(self) -> list[Path]:
        """The checkpoint's weight files (the decoder layers are not in memory to digest)."""
        checkpoint = self.layerwise.checkpoint
        return [checkpoint.dir / name for name in checkpoint.files]

    def dense_key(self, eval_tokens: dict, seqlen: int) -> None:
        """No cross-run cache: the weights are not in memory to be digested."""
        return None

    def finish(self, state, windows: torch.Tensor, run_dir: Path, eval_tokens: dict,
               seqlen: int, shared: torch.Tensor | None = None) -> tuple[dict, dict]:
        """Export the finished layers shard by shard (absorbing the ``shared`` rotation, if
        any), then evaluate the saved shards."""
        rdt = boundary_dtype(self.opts.export.rotation_dtype, self.layerwise.dtype)
        path = Path(run_dir) / "model"
        export = save_layerwise_dir(self.layerwise, state, path, rdt, windows[:1],
                                    merge_tolerance(self.layerwise.dtype, rdt),
                                    self.opts.monitor.progress, shared)
        final = evaluate_saved(lambda: self._perplexity(ShardedCheckpoint(path), eval_tokens, seqlen),
                               path)
        return {**export, "path": str(path)}, final


def place_model(opts: RunOptions, device: torch.device,
                loaded: tuple | None = None) -> WholeModel | LayerByLayer:
    """The placement ``run.launch.layerwise`` asks for."""
    return (LayerByLayer if opts.launch.layerwise else WholeModel)(opts, device, loaded)
