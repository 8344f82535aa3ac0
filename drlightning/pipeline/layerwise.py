"""The parts of a run that differ when the model is loaded layer by layer (``run.layerwise``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..eval.api import protocol_windows
from ..eval.layerwise import layerwise_perplexity
from ..export.sharded import save_layerwise_dir
from ..models.shards import LayerwiseModel, ShardedCheckpoint
from .setup import boundary_dtype, merge_tolerance


def check_layerwise_options(opts) -> None:
    """Refuse settings that need the whole model in memory."""
    if not opts.layerwise:
        return
    if opts.zero_shot:
        raise ValueError(f"run.zero_shot={opts.zero_shot!r} needs the whole model in memory, which "
                         "run.layerwise=true avoids; leave zero_shot empty and run `drlightning "
                         "eval` on the saved model where it fits")
    if not opts.save_model:
        raise ValueError("run.layerwise=true writes the model shard by shard and evaluates the "
                         "saved shards; run.save_model must be true")


class LayerwiseJob:
    """Loading, evaluation and export of a run whose decoder layers stay on disk until needed."""

    def __init__(self, opts, device: torch.device) -> None:
        self.opts = opts
        self.lw = LayerwiseModel(opts.model, dtype=opts.dtype, device=device,
                                 gguf_file=opts.gguf_file,
                                 trust_remote_code=opts.trust_remote_code)

    def perplexity(self, checkpoint: ShardedCheckpoint, eval_tokens: dict, seqlen: int) -> dict:
        opts = self.opts
        windows = {name: protocol_windows(name, opts.eval_max_windows) for name in eval_tokens}
        return {"ppl": layerwise_perplexity(self.lw, checkpoint, eval_tokens, seqlen, windows,
                                            opts.eval_batch_size, opts.progress,
                                            opts.offload_activations)}

    def evaluate_dense(self, eval_tokens: dict, seqlen: int) -> dict:
        """Perplexity of the input model, its layers streamed from its own shards."""
        return self.perplexity(self.lw.checkpoint, eval_tokens, seqlen)

    def finish(self, state, windows: torch.Tensor, run_dir: Path, eval_tokens: dict,
               seqlen: int) -> tuple[dict, dict]:
        """Export the finished layers shard by shard, then evaluate the saved shards."""
        rdt = boundary_dtype(self.opts, self.lw.dtype)
        path = Path(run_dir) / "model"
        export = save_layerwise_dir(self.lw, state, path, rdt, windows[:1],
                                    merge_tolerance(self.lw.dtype, rdt), self.opts.progress)
        final = self.perplexity(ShardedCheckpoint(path), eval_tokens, seqlen)
        return {**export, "path": str(path)}, final
