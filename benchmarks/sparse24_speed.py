"""2:4 inference speed (paper Table 4): one decoder layer, and whole-model decode tokens/s.

    python benchmarks/sparse24_speed.py                 # GPU: LLaMA-3-8B layer + default model decode
    python benchmarks/sparse24_speed.py --smoke         # CPU: harness check on a small layer

Variants: dense; 2:4 (every linear ``torch.sparse.to_sparse_semi_structured``; also what a
``model.r1: shared`` output runs: its rotations live inside the weights); 2:4 + rotations as
two d×d matmuls per layer (entry Q, exit Qᵀ — the unmerged form); 2:4 + our merged boundary (one
d×d matmul per layer, ``Q_{l+1}ᵀ Q_l``, in the model's dtype and in float32 — the saved
default). Forward only, ``torch.inference_mode``, CUDA-event timed,
median of ``--iters``. Without CUDA the benchmark skips with a message (``--smoke`` runs the same
harness on CPU with masked dense weights, to check the code, and writes nothing).
Then whole-model decode tokens/s of ``--model`` (``benchmarks/decode_speed.py``; ``--no-decode``
skips it). Writes between ``<!-- sparse24:begin -->`` and ``<!-- sparse24:end -->`` in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from drlightning.pruning import nm_mask
from drlightning.reporting.results import device_name
from drlightning.rotation import random_orthogonal

sys.path.insert(0, str(Path(__file__).parent))
from docblock import write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_layer(hidden: int, inter: int, heads: int, kv: int, dtype: torch.dtype, device):
    """A random LLaMA decoder layer and its rotary embedding module."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                      num_key_value_heads=kv, num_hidden_layers=1, attn_implementation="sdpa")
    layer = LlamaDecoderLayer(cfg, layer_idx=0).to(device=device, dtype=dtype).eval()
    return layer, LlamaRotaryEmbedding(cfg).to(device)


def sparsify(layer: torch.nn.Module, semi_structured: bool) -> None:
    """Magnitude 2:4 masks on every linear inside ``layer``; on CUDA store them as semi-structured
    tensors."""
    from torch.sparse import to_sparse_semi_structured

    for module in list(layer.modules()):
        if isinstance(module, torch.nn.Linear):
            w = module.weight.detach()
            w = w.masked_fill(nm_mask(w.abs().float(), 2, 4), 0)
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(w) if semi_structured else w,
                                               requires_grad=False)


def timed(fn, iters: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="small CPU run of the harness only")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="model whose config the decode benchmark uses (default: the embedded one)")
    p.add_argument("--decode-batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--no-decode", action="store_true", help="time the single layer only")
    p.add_argument("--sparse-backend", choices=["auto", "cutlass"], default="auto",
                   help="auto: torch's choice (cuSPARSELt when available); cutlass: force CUTLASS")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    if args.smoke:
        device, dtype, dims, semi = torch.device("cpu"), torch.float32, (256, 512, 4, 2), False
        args.batch, args.seqlen, args.iters = 2, 64, 2
    elif not torch.cuda.is_available():
        print("CUDA is not available: the 2:4 inference benchmark needs an NVIDIA GPU with compute "
              "capability ≥ 8.0 (semi-structured sparse kernels); skipped. Use --smoke to check the "
              "harness on CPU.")
        return
    else:
        device, dtype, dims, semi = torch.device("cuda"), torch.bfloat16, (4096, 14336, 32, 8), True
    torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = args.sparse_backend == "cutlass"
    hidden = dims[0]
    torch.manual_seed(0)
    dense, rope = make_layer(*dims, dtype, device)
    sparse, _ = make_layer(*dims, dtype, device)
    sparse.load_state_dict(dense.state_dict())
    sparsify(sparse, semi)
    q_in, q_out = (random_orthogonal(hidden, generator=torch.Generator().manual_seed(i))
                   .to(device, dtype) for i in (1, 2))
    boundary = q_out.T @ q_in
    boundary32 = boundary.float()
    x = torch.randn(args.batch, args.seqlen, hidden, device=device, dtype=dtype)
    pos = rope(x, torch.arange(args.seqlen, device=device)[None])

    def run(layer, pre=None, post=None):
        def fn():
            h = (x.to(pre.dtype) @ pre).to(x.dtype) if pre is not None else x
            out = layer(h, position_embeddings=pos)
            out = out[0] if isinstance(out, tuple) else out
            return out @ post if post is not None else out
        return fn

    with torch.inference_mode():
        rows = [("dense", timed(run(dense), args.iters, device)),
                ("2:4 (plain pruner, or DR with a shared R1: a standard checkpoint)",
                 timed(run(sparse), args.iters, device)),
                ("2:4 + rotations (entry Q, exit Qᵀ)", timed(run(sparse, q_in, q_in.T), args.iters,
                                                              device)),
                ("2:4 + merged boundary (one d×d)", timed(run(sparse, boundary), args.iters, device)),
                ("2:4 + merged boundary in float32 (saved default)",
                 timed(run(sparse, boundary32), args.iters, device))]
    backend = type(sparse.self_attn.q_proj.weight).__name__ if semi else "masked dense tensors"
    del dense, sparse
    base = rows[0][1]
    lines = [f"One LLaMA decoder layer (d {dims[0]}, I {dims[1]}, {dims[2]}/{dims[3]} heads), "
             f"{args.batch} × {args.seqlen} tokens, {str(dtype).removeprefix('torch.')}, forward "
             f"only, median of {args.iters}; {device_name(device)}, torch {torch.__version__}, 2:4 "
             f"weights as {backend}. Command: `python benchmarks/sparse24_speed.py"
             f"{' --sparse-backend cutlass' if args.sparse_backend == 'cutlass' else ''}`.", "",
             "| variant | ms | speed-up vs dense |", "|---|---|---|"]
    lines += [f"| {name} | {1000 * t:.2f} | {base / t:.2f}× |" for name, t in rows]
    print("\n".join(lines), flush=True)
    if not args.smoke:  # the layer table is kept even if the decode part fails or runs too long
        write_block(args.out, "sparse24", "2:4 inference speed (GPU)", "\n".join(lines))
    if args.no_decode:
        return
    from decode_speed import decode_table

    batches, new, repeats = (([1], 4, 1) if args.smoke else
                             (args.decode_batches, args.new_tokens, 3))
    lines += ["", decode_table(args.model, device, dtype, semi, batches, 32, new, repeats)]
    print(lines[-1])
    if not args.smoke:
        write_block(args.out, "sparse24", "2:4 inference speed (GPU)", "\n".join(lines))


if __name__ == "__main__":
    main()
