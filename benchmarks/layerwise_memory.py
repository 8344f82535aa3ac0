"""Host memory of a whole run: the model loaded whole vs layer by layer (``run.launch.layerwise``).

    python benchmarks/layerwise_memory.py            # writes <!-- layerwise --> in docs/benchmarks.md

Each model is saved as sharded safetensors (``synthetic-1b``: random Llama-architecture weights,
d 2048, I 5632, 32/8 heads, 16 layers, SmolLM2's tokenizer; ``smollm2``: the embedded model
converted from its GGUF file). Both modes run the same short job (SparseGPT 2:4, few rotation
steps, dense + final perplexity, saved model) in a fresh process each; the peak resident memory
(ru_maxrss of that process) and the perplexities are recorded. Layer-by-layer results must equal
the whole-model ones exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from docblock import write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
SYNTHETIC = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                 tie_word_embeddings=False)
PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def build(name: str, path: Path) -> int:
    """Save model ``name`` to ``path`` (sharded safetensors); returns its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from drlightning.models import load_model

    model, tok = load_model()
    if name == "synthetic-1b":
        config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, **SYNTHETIC)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path, max_shard_size="500MB")
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run(model_dir: Path, out: Path, layerwise: bool, steps: int) -> dict:
    args = ["-m", "drlightning.cli", "fit", "--model.method", "sparsegpt", "--model.pattern", "2:4",
            "--model.steps", str(steps), "--data.nsamples", "8", "--data.seqlen", "256",
            "--run.model", str(model_dir), "--run.output_dir", str(out), "--run.monitor.progress", "false",
            "--run.monitor.tensorboard", "false", "--run.eval.max_windows", "4",
            "--run.launch.layerwise", str(layerwise).lower()]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, sys.executable, *args], check=True,
                          capture_output=True, text=True)
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    res = json.loads((out / "results.json").read_text())
    return {"layerwise": layerwise, "peak_gib": peak_kib * 1024 / GIB,
            "seconds": time.perf_counter() - start, "ppl": res["ppl"]["embedded"],
            "dense_ppl": res["dense_ppl"]["embedded"]}


def table(rows: list[dict]) -> str:
    lines = ["| model | parameters | loading | peak host memory (GiB) | dense ppl | pruned ppl | "
             "wall (s) |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.0f} M | "
                     f"{'layer by layer' if r['layerwise'] else 'whole model'} | "
                     f"{r['peak_gib']:.2f} | {r['dense_ppl']:.3f} | {r['ppl']:.3f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["smollm2", "synthetic-1b"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "layerwise.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / name
            params = build(name, model_dir)
            for layerwise in (False, True):
                row = {"model": name, "params": params,
                       **run(model_dir, Path(tmp) / f"run-{layerwise}", layerwise, args.steps)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    for a, b in zip(rows[::2], rows[1::2], strict=True):
        if (a["ppl"], a["dense_ppl"]) != (b["ppl"], b["dense_ppl"]):
            raise SystemExit(f"{a['model']}: layer-by-layer results differ from whole-model ones")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "steps": args.steps,
                                     "threads": os.environ.get("OMP_NUM_THREADS")}, indent=2) + "\n")
    text = (f"`python benchmarks/layerwise_memory.py` (CPU, {args.steps} rotation steps, "
            "8 × 256 calibration tokens, 4 evaluation windows; peak = ru_maxrss of the run's "
            "process).\n\n" + table(rows))
    write_block(args.out, "layerwise", "Layer-by-layer loading: host memory", text)


if __name__ == "__main__":
    main()
