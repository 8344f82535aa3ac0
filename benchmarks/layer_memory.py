"""GPU memory of one decoder layer per model size: an accounting from the shapes, plus the measured
rotation-step working set (benchmarks/results/rotation_step.json, written by rotation_step.py).

    python benchmarks/layer_memory.py            # writes <!-- layermem --> in docs/benchmarks.md

Per phase of one layer (sizes in GiB; bf16 model weights, float32 objective, 128 × 2048 calibration
tokens, batch 8): the rotation phase holds the layer, its float32 frozen copy, the objective's
matrices (M_attn, M_mlp: hidden² each; M_o head blocks) and the step's working set; the pruning
phase holds the layer and the largest group's Hessian math (down_proj: I × I float32 ×3 for H, its
Cholesky factor and inverse); calibration activations (inputs and outputs of the layer) stay on the
GPU unless ``run.launch.offload_activations`` keeps them in host memory (then one batch is on the GPU).
Measured step memory exists for the sizes rotation_step.py ran; others are scaled by the layer's
parameter count from the largest measured size (marked "est.").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from docblock import write_block  # noqa: E402
from rotation_step import SIZES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def layer_params(lay) -> int:
    d, hd, inter = lay.hidden, lay.head_dim, lay.intermediate
    return (2 * lay.n_heads * hd * d + 2 * lay.n_kv_heads * hd * d + 3 * inter * d)


def measured_step(results: dict, size: str, variant: str) -> float | None:
    for row in results.get("cpu", []) + results.get("gpu", []):
        if row["size"] == size and row["variant"] == variant and row.get("memory_gib") is not None:
            return row["memory_gib"]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=128 * 2048)
    p.add_argument("--batch-tokens", type=int, default=8 * 2048)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "rotation_step.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    large = args.json.parent / "large_step.json"  # written by large_layer_step.py
    if large.is_file():
        big = json.loads(large.read_text())
        results["cpu"] = results.get("cpu", []) + [
            {"size": big["size"], "variant": r["variant"], "memory_gib": r["memory_gib"]}
            for r in big["rows"] if r.get("run")]
    ref_size = max((s for s in SIZES if measured_step(results, s, "k=1") is not None),
                   key=lambda s: layer_params(SIZES[s]), default=None)
    lines = [f"Accounting from the shapes (`python benchmarks/layer_memory.py`; calibration {args.tokens} "
             f"tokens, batches of {args.batch_tokens}); step memory measured by rotation_step.py "
             "or large_layer_step.py on CPU (resident-set growth), scaled by parameter count "
             "where marked est.", "",
             "| layer size | layer bf16 | frozen f32 + M | step (k=1 / low_memory) | rotation phase "
             "(k=1 / low_memory) | pruning phase | activations on GPU / offloaded |",
             "|---|---|---|---|---|---|---|"]
    for size, lay in SIZES.items():
        n, d = layer_params(lay), lay.hidden
        weights = 2 * n / GIB
        frozen = (4 * n + 4 * (2 * d * d + lay.n_heads * lay.head_dim ** 2)) / GIB
        steps = []
        for variant in ("k=1", "k=1, low_memory"):
            value, tag = measured_step(results, size, variant), ""
            if value is None and ref_size is not None:
                base = measured_step(results, ref_size, variant)
                value = None if base is None else base * n / layer_params(SIZES[ref_size])
                tag = " est."
            steps.append((value, tag))
        prune = weights + 3 * 4 * lay.intermediate ** 2 / GIB + 4 * d * lay.intermediate / GIB
        act = 2 * 2 * args.tokens * d / GIB
        act_off = 2 * 2 * args.batch_tokens * d / GIB
        fmt = " / ".join("?" if v is None else f"{v:.2f}{t}" for v, t in steps)
        rot = " / ".join("?" if v is None else f"{weights + frozen + v:.1f}" for v, _ in steps)
        lines.append(f"| {size} | {weights:.2f} | {frozen:.2f} | {fmt} | {rot} | {prune:.1f} | "
                     f"{act:.1f} / {act_off:.2f} |")
    text = "\n".join(lines)
    print(text)
    write_block(args.out, "layermem", "GPU memory per layer", text)


if __name__ == "__main__":
    main()
