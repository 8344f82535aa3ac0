"""LoRA recovery on the default model: dense → SparseGPT 2:4 + DR → + LoRA (adapters, merged).

    drlightning fit --config configs/smollm2/sparsegpt-2of4.yaml      # the pruned run (once)
    python benchmarks/lora_recovery.py                               # LoRA fit + table

Runs ``drlightning fit --config configs/smollm2/lora.yaml`` (extra CLI overrides after ``--``),
then writes the run's numbers between ``<!-- lora:begin -->`` and ``<!-- lora:end -->`` in
docs/benchmarks.md and to benchmarks/results/lora_recovery.json. ``--skip-fit`` only re-reads
an existing LoRA run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from drlightning.cli import main as cli

sys.path.insert(0, str(Path(__file__).parent))
from docblock import write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cell(stage: dict | None, key: str, task: str | None = None) -> str:
    if not stage:
        return "-"
    if task:
        row = ((stage.get("zero_shot") or {}).get("tasks") or {}).get(task)
        return "-" if row is None else f"{100 * row['value']:.1f}"
    value = (stage.get("ppl") or {}).get(key)
    return "-" if value is None else f"{value:.3f}"


def table(res: dict, seconds: float, command: str) -> str:
    """Markdown block of one LoRA run."""
    src = res.get("source_run") or {}
    dense = {"ppl": src.get("dense_ppl"), "zero_shot": src.get("dense_zero_shot")}
    stages = [("dense", dense), ("SparseGPT 2:4 + DR", res.get("before")),
              ("+ LoRA adapters (M ⊙ BA)" if res["lora"].get("mask_updates") else "+ LoRA adapters",
               res.get("after_adapter")), ("+ LoRA merged (2:4 kept)", res.get("after"))]
    tasks = list(((res.get("after") or res.get("after_adapter") or {}).get("zero_shot") or {})
                 .get("tasks") or {})
    head = "| model | ppl embedded | " + "".join(f"{t} acc % | " for t in tasks)
    lines = [head.rstrip(), "|---" * (2 + len(tasks)) + "|"]
    for label, stage in stages:
        cells = [_cell(stage, "embedded")] + [_cell(stage, "", t) for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lo, data, sp = res["lora"], res.get("data") or {}, res.get("sparsity") or {}
    note = (f"LoRA r {lo['r']}, alpha {lo['alpha']}, dropout {lo['dropout']}, AdamW lr {lo['lr']}, "
            f"wd {lo['weight_decay']}, warm-up {lo['warmup_steps']}, {res['steps']} steps of "
            f"{data.get('batch_size')} × {data.get('seqlen')} tokens from the embedded calibration "
            f"text (best of the val/loss checkpoints on {data.get('val_windows')} held-out windows: "
            f"{Path(res.get('best_checkpoint') or '-').name}); {res.get('device')}, "
            f"{seconds / 60:.0f} min in all. Merged model: {100 * sp.get('pruned_fraction', 0):.2f}% "
            f"zeros, {sp.get('nonzero_at_pruned_positions')} non-zeros at pruned positions. "
            f"Perplexity: embedded evaluation text, {res['eval']['seqlen']}-token windows. "
            f"Command: `{command}`.")
    return note + "\n\n" + "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/smollm2/lora.yaml")
    p.add_argument("--skip-fit", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "lora_recovery.json")
    p.add_argument("overrides", nargs="*", help="extra `drlightning fit` arguments (after --)")
    args = p.parse_args()
    start = time.perf_counter()
    if not args.skip_fit:
        cli(["fit", "--config", args.config, *args.overrides])
    cfg = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    out_dir = next((args.overrides[i + 1] for i, a in enumerate(args.overrides[:-1])
                    if a == "--export.output_dir"), cfg["export"]["output_dir"])
    res = json.loads((Path(out_dir) / "results.json").read_text(encoding="utf-8"))
    seconds = res.get("seconds", 0.0) if args.skip_fit else time.perf_counter() - start
    command = "python benchmarks/lora_recovery.py" + (" -- " + " ".join(args.overrides)
                                                       if args.overrides else "")
    text = table(res, seconds, command)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
    write_block(args.out, "lora", "LoRA recovery", text)


if __name__ == "__main__":
    main()
