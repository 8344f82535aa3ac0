"""Whole-model decode tokens/s: dense vs 2:4 vs 2:4 + per-layer boundary rotations.

Called by ``benchmarks/sparse24_speed.py`` (not run on its own). The model is built from the
named model's config (default: the embedded SmolLM2-135M-Instruct; a local directory with a
config.json or a hub id also work) with random weights: decode speed depends on the shapes and
the sparsity pattern, not on the weights' values, so no checkpoint needs to be read. Variants:

- dense: the input model;
- 2:4, standard checkpoint: every decoder linear 2:4 (magnitude masks) stored with
  ``torch.sparse.to_sparse_semi_structured`` — what the plain pruner and a ``model.r1: shared``
  output run (their rotations live inside the weights; embeddings and lm_head stay dense);
- 2:4 + per-layer R1: the same weights in drlightning's saved-model class (``trust_remote_code``
  output), one d×d boundary matrix per layer boundary, stored in float32 (the default
  ``run.export.rotation_dtype: auto``) or in the model's dtype (``model``).

Each variant runs ``generate`` (greedy, exactly ``new_tokens`` new tokens after a random
``prompt``-token prompt, default dynamic KV cache) and reports tokens/s = batch × new tokens / s,
median of ``repeats`` after one warm-up (fewer for a variant slower than 30 s per variant and
batch size; the warm-up alone when even that is over).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from drlightning.export.modeling_drlightning import build_classes
from drlightning.rotation import random_orthogonal


def model_config(source: str):
    """The transformers config of ``source`` (embedded default, local directory or hub id)."""
    from transformers import AutoConfig

    from drlightning.models.loading import resolve_source

    location, gguf = resolve_source(source)
    kwargs = {"gguf_file": gguf} if gguf else {}
    return AutoConfig.from_pretrained(location, **kwargs)


def decoder_linears(model: nn.Module) -> list[nn.Linear]:
    """The linears inside the decoder layers (not the embeddings or lm_head)."""
    return [m for m in model.model.layers.modules() if isinstance(m, nn.Linear)]


def sparsify_decoder(model: nn.Module, semi_structured: bool) -> None:
    """Magnitude 2:4 masks on every decoder linear (embeddings and lm_head stay dense)."""
    from sparse24_speed import sparsify

    sparsify(model.model.layers, semi_structured)


def build_variants(config, device: torch.device, dtype: torch.dtype,
                   semi_structured: bool) -> dict[str, Callable[[], nn.Module]]:
    """name → builder of that variant's model (built lazily, one on the device at a time)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    dense_state = AutoModelForCausalLM.from_config(config).to(dtype).state_dict()

    def dense() -> nn.Module:
        model = AutoModelForCausalLM.from_config(config).to(dtype)
        model.load_state_dict(dense_state)
        return model.to(device).eval()

    def sparse() -> nn.Module:
        model = dense()
        sparsify_decoder(model, semi_structured)
        return model

    def rotated(rotation_dtype: str) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            cfg_cls, model_cls = build_classes(config.model_type)
            fields = {k: v for k, v in config.to_dict().items() if k != "model_type"}
            n = config.num_hidden_layers
            cfg = cfg_cls(**fields, drl_boundaries=list(range(n + 1)),
                          drl_rotation_dtype=rotation_dtype)
            model = model_cls(cfg).to(dtype)
            model.load_state_dict(dense_state, strict=False)
            for b in range(n + 1):
                q = random_orthogonal(config.hidden_size, generator=torch.Generator().manual_seed(b))
                model.drl_rotations.matrix(b).copy_(q)
            model = model.to(device).eval()
            sparsify_decoder(model, semi_structured)
            return model
        return build

    out = {"dense": dense,
           "2:4, standard checkpoint (plain pruner, or DR with a shared R1)": sparse,
           "2:4 + per-layer R1, float32 boundaries (default export)": rotated("float32")}
    model_dtype = str(dtype).removeprefix("torch.")
    if model_dtype != "float32":
        out[f"2:4 + per-layer R1, {model_dtype} boundaries"] = rotated(model_dtype)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _one_token_seconds(model: nn.Module, ids: torch.Tensor, device: torch.device) -> float:
    """Seconds of one forward pass over one token per sequence (no cache), after one warm-up."""
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        model(ids[:, :1])
        _sync(device)
    return time.perf_counter() - start


def tokens_per_second(model: nn.Module, batch: int, prompt: int, new_tokens: int, repeats: int,
                      device: torch.device, budget_s: float = 30.0) -> float:
    """Median decode tokens/s of greedy ``generate`` with exactly ``new_tokens`` new tokens; stops
    repeating once ``budget_s`` seconds are spent (then the warm-up run may be the only one)."""
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, prompt), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  attention_mask=torch.ones_like(ids), pad_token_id=0)
    times = []
    with torch.inference_mode():
        probe = _one_token_seconds(model, ids, device)
        if probe * new_tokens > budget_s:
            raise RuntimeError(f"too slow to time: one decode-sized forward took {probe:.2f} s")
        for _ in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            _sync(device)
            times.append(time.perf_counter() - start)
            if out.shape[1] != prompt + new_tokens:
                raise RuntimeError(f"generate returned {out.shape[1] - prompt} new tokens, "
                                   f"expected {new_tokens}")
            if sum(times) > budget_s:  # a very slow variant: stop at what was measured
                break
    timed = times[1:] or times  # drop the warm-up unless it is all there is
    return batch * new_tokens / statistics.median(timed)


def decode_table(source: str, device: torch.device, dtype: torch.dtype, semi_structured: bool,
                 batches: list[int], prompt: int, new_tokens: int, repeats: int) -> str:
    """Markdown table of decode tokens/s per variant and batch size (a failing variant says why)."""
    config = model_config(source)
    variants = build_variants(config, device, dtype, semi_structured)
    cols = " | ".join(f"batch {b} tok/s | vs dense" for b in batches)
    lines = [f"| variant | {cols} |", "|---" * (1 + 2 * len(batches)) + "|"]
    dense_rate: dict[int, float] = {}
    for name, build in variants.items():
        cells = []
        try:
            model = build()
            for b in batches:
                rate = tokens_per_second(model, b, prompt, new_tokens, repeats, device)
                dense_rate.setdefault(b, rate)
                cells += [f"{rate:.0f}", f"{rate / dense_rate[b]:.2f}×"]
            del model
        except Exception as err:  # noqa: BLE001 - report the failure in the table, keep going
            cells = [f"failed: {type(err).__name__}: {str(err)[:120]}"] + [""] * (2 * len(batches) - 1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(name, cells, flush=True)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    head = (f"Whole-model decode: {source} ({config.num_hidden_layers} layers, d "
            f"{config.hidden_size}, I {config.intermediate_size}) built from its config with random "
            f"weights, {str(dtype).removeprefix('torch.')}; greedy `generate`, {prompt}-token "
            f"prompt, {new_tokens} new tokens, dynamic KV cache, median of {repeats} after a "
            "warm-up.")
    return "\n".join([head, "", *lines])
