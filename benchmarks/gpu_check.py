"""End to end on a GPU: a random-weight model of LLaMA-3-8B shape through the whole pipeline.

    python benchmarks/gpu_check.py --size llama3-8b --json $OUT/gpu_check.json --publish
    python benchmarks/gpu_check.py --size tiny            # the same on a CPU in seconds (tested)

The model (random bf16 weights, one safetensors shard per decoder layer, a small byte-level
tokenizer) is written first; then the pipeline's Python entry point (``run_job``: no jsonargparse,
datasets or lm-eval needed, so it runs on a bare GPU image) prunes it twice, each in a fresh
process so that its peak host memory is its own: layer by layer from the shards
(``run.launch.layerwise``) and with the whole model on the device — bf16 weights (``bf16-mixed``
rotation training on CUDA), SparseGPT 2:4, the default rotation settings, a few steps, a small
embedded calibration set and 2 evaluation windows. Last, each saved model is loaded
(``drlightning.load_pretrained``) and generates a few tokens. Reported per phase: wall time (the
rotate-and-prune loop split into rotation fits, pruning and the rest), peak GPU memory (allocated)
and peak host memory (RSS), and whether the saved model loads and generates finite logits.
``--publish`` writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))  # tests/tiny.py: the small byte-level tokenizer



def checkout_imports() -> None:
    """Make ``drlightning.callbacks`` importable from a plain checkout on ``sys.path`` (a bare GPU
    image with no install: the installed package maps ``callbacks/`` there)."""
    try:
        import drlightning.callbacks  # noqa: F401
    except ImportError:
        folder = ROOT / "callbacks"
        spec = importlib.util.spec_from_file_location("drlightning.callbacks", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["drlightning.callbacks"] = module
        spec.loader.exec_module(module)


SIZES = {
    "llama3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                  "max_position_embeddings": 8192, "rope_theta": 500000.0},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
             "max_position_embeddings": 512},
}
LAYER_SHAPES = {"self_attn.q_proj.weight": ("q", "d"), "self_attn.k_proj.weight": ("kv", "d"),
                "self_attn.v_proj.weight": ("kv", "d"), "self_attn.o_proj.weight": ("d", "q"),
                "mlp.gate_proj.weight": ("i", "d"), "mlp.up_proj.weight": ("i", "d"),
                "mlp.down_proj.weight": ("d", "i"), "input_layernorm.weight": ("d",),
                "post_attention_layernorm.weight": ("d",)}


def write_model(path: Path, shape: dict, device: torch.device) -> float:
    """Config, tokenizer and random bf16 shards (one per decoder layer); returns seconds."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from tests.tiny import tiny_tokenizer

    start = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    LlamaConfig(**shape, tie_word_embeddings=False, dtype="bfloat16").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    d, hd = shape["hidden_size"], shape["hidden_size"] // shape["num_attention_heads"]
    dims = {"d": d, "q": d, "kv": hd * shape["num_key_value_heads"], "i": shape["intermediate_size"]}
    gen = torch.Generator(device).manual_seed(0)

    def rand(*size: int, scale: float = 0.02) -> torch.Tensor:
        t = torch.randn(*size, generator=gen, device=device, dtype=torch.float32) * scale
        return t.to(torch.bfloat16).cpu()

    n = shape["num_hidden_layers"]
    shards = [{"model.embed_tokens.weight": rand(shape["vocab_size"], d)}]
    for i in range(n):
        shards.append({f"model.layers.{i}.{name}": (1 + rand(d, scale=0.1)) if len(dim) == 1
                       else rand(*(dims[k] for k in dim)) for name, dim in LAYER_SHAPES.items()})
    shards.append({"model.norm.weight": 1 + rand(d, scale=0.1),
                   "lm_head.weight": rand(shape["vocab_size"], d)})
    weight_map = {}
    for k, tensors in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return time.perf_counter() - start


def fit(model_dir: Path, out: Path, layerwise: bool, steps: int, nsamples: int, seqlen: int) -> dict:
    """One pipeline run (in this process); returns its phases, memory and perplexities."""
    from drlightning.lightning.calibration import CalibrationDataModule
    from drlightning.lightning.rotation_module import RotationModule
    from drlightning.pipeline.job import run_job
    from drlightning.pipeline.options import (
        EvalOptions,
        LaunchOptions,
        MonitorOptions,
        RunOptions,
    )
    from drlightning.pipeline.trainers import default_trainer_factory

    cuda = torch.cuda.is_available()
    opts = RunOptions(model=str(model_dir), dtype="bfloat16", output_dir=str(out),
                      eval=EvalOptions(max_windows=2, dense_cache=False),
                      monitor=MonitorOptions(tensorboard=False, progress=False),
                      launch=LaunchOptions(layerwise=layerwise))
    make = default_trainer_factory(opts, out, {"precision": "bf16-mixed" if cuda else "32-true"})
    start = time.perf_counter()
    res = run_job(RotationModule(method="sparsegpt", pattern="2:4", steps=steps),
                  CalibrationDataModule(nsamples=nsamples, seqlen=seqlen, batch_size=4), opts, make)
    total = time.perf_counter() - start
    layers = res["layers"]
    loop = sum(r["seconds"] for r in layers)
    fits = sum(r.get("fit_seconds", 0.0) for r in layers)
    prunes = sum(r.get("prune_seconds", 0.0) for r in layers)
    return {"layerwise": layerwise, "seconds": total, "layer_loop": loop, "rotation_fits": fits,
            "pruning": prunes, "outside_loop": total - loop, "memory": res["memory"],
            "dense_ppl": res["dense_ppl"], "ppl": res["ppl"], "device": res["device"],
            "layers": len(layers), "model_dir": res["export"]["path"]}


def generate(model_dir: str, new_tokens: int = 8) -> dict:
    """Load a saved model (strictly, no remote code) and generate ``new_tokens`` greedy tokens."""
    import drlightning

    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = drlightning.load_pretrained(model_dir, dtype="bfloat16", device=device,
                                             with_tokenizer=True)
    ids = tok("The object of this", return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        finite = bool(torch.isfinite(model(ids).logits).all())
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=tok.eos_token_id)
    return {"seconds": time.perf_counter() - start, "new_tokens": int(out.shape[1] - ids.shape[1]),
            "finite_logits": finite, "peak_gpu_mib": (torch.cuda.max_memory_allocated() / 2**20
                                                      if device == "cuda" else None)}


def child(args: argparse.Namespace, phase: str, **kw) -> dict:
    """Run one phase in a fresh process (its own peak memory); returns its JSON result."""
    cmd = [sys.executable, __file__, "--phase", phase, "--work", str(args.work),
           "--steps", str(args.steps), "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)]
    cmd += [f"--{k}={v}" for k, v in kw.items()]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(record: dict) -> str:
    """The docs block: one row per pipeline run, and the load-and-generate check."""
    lines = [f"Random-weight {record['size']} model ({record['shape']['num_hidden_layers']} layers, "
             f"bf16), SparseGPT 2:4, default rotation settings, {record['steps']} steps, "
             f"{record['nsamples']} × {record['seqlen']} embedded calibration tokens, 2 evaluation "
             f"windows; {record['device']}, torch {record['torch']}, transformers "
             f"{record['transformers']}. Writing the shards: {record['write_seconds']:.0f} s. Command: "
             f"`python benchmarks/gpu_check.py --size {record['size']} --publish`.", "",
             "| placement | total s | layer loop s | rotation fits s | pruning s | outside the loop s "
             "| peak GPU GiB | peak host GiB | saved model loads and generates |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in record["runs"]:
        mem, gen = run["memory"], run["generate"]
        gpu = f"{mem['peak_gpu_mib'] / 1024:.1f}" if "peak_gpu_mib" in mem else "-"
        ok = (f"yes ({gen['new_tokens']} tokens, {gen['seconds']:.0f} s)"
              if gen["finite_logits"] and gen["new_tokens"] > 0 else "NO")
        lines.append(f"| {'layer by layer' if run['layerwise'] else 'whole model'} | "
                     f"{run['seconds']:.0f} | {run['layer_loop']:.0f} | {run['rotation_fits']:.0f} | "
                     f"{run['pruning']:.0f} | {run['outside_loop']:.0f} | {gpu} | "
                     f"{mem['peak_rss_mib'] / 1024:.1f} | {ok} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="llama3-8b")
    p.add_argument("--layers", type=int, help="decoder layers (default: the size's own)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    p.add_argument("--publish", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--phase", choices=["all", "fit", "generate"], default="all", help=argparse.SUPPRESS)
    p.add_argument("--layerwise", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    checkout_imports()
    args.work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    if args.phase == "fit":
        out = args.work / ("layerwise" if args.layerwise else "whole")
        print(json.dumps(fit(args.work / "model", out, bool(args.layerwise), args.steps,
                             args.nsamples, args.seqlen)))
        return
    if args.phase == "generate":
        print(json.dumps(generate(args.model)))
        return
    import transformers

    shape = {**SIZES[args.size], **({"num_hidden_layers": args.layers} if args.layers else {})}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    record = {"size": args.size, "shape": shape, "steps": args.steps, "nsamples": args.nsamples,
              "seqlen": args.seqlen, "torch": torch.__version__,
              "transformers": transformers.__version__,
              "write_seconds": write_model(args.work / "model", shape, device), "runs": []}
    for layerwise in (1, 0):
        run = child(args, "fit", layerwise=layerwise)
        run["generate"] = child(args, "generate", model=run["model_dir"])
        record["runs"].append(run)
        print(json.dumps(run), flush=True)
    record["device"] = record["runs"][0]["device"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    text = table(record)
    if args.publish:
        from docblock import write_block

        write_block(ROOT / "docs" / "benchmarks.md", "gpucheck", "End to end on a GPU", text)
    print(text)


if __name__ == "__main__":
    main()
