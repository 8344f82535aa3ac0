"""README command 1, timed: `drlightning fit --config configs/smollm2/quick.yaml` from a fresh cache.

    python benchmarks/quick_path.py          # ~5 min on 2 cores; writes docs/benchmarks.md and README

Runs the quick config the way a new user does (a fresh drlightning cache: the embedded GGUF model is
dequantised and the dense model evaluated once, as on a first run), in a temporary run directory.
Records the wall time from the command's start to its end, the machine, and what it printed at the
end (dense, plain, DenoiseRotator, gap closed) in benchmarks/results/quick_path.json; writes the
table into docs/benchmarks.md ("First result: README command 1") and the printed lines into the
README's "The first result" block.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def machine() -> str:
    """CPU model and core count of this machine."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def run(work: Path) -> dict:
    """One timed run of command 1's fit in ``work`` with a fresh cache; returns the record."""
    out = work / "run"
    env = {**os.environ, "DRL_CACHE_DIR": str(work / "cache")}
    cmd = ["drlightning", "fit", "--config", str(ROOT / "configs" / "smollm2" / "quick.yaml"),
           "--run.output_dir", str(out), "--run.monitor.progress", "false"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    tail = lines[next(i for i, line in enumerate(lines) if line.startswith("against the plain")):]
    plain = json.loads((out / "plain" / "results.json").read_text())
    res = json.loads((out / "results.json").read_text())
    return {"seconds": seconds, "machine": machine(), "printed": tail,
            "dense_ppl": res["dense_ppl"], "plain_ppl": plain["ppl"], "ppl": res["ppl"],
            "plain_seconds": plain["seconds"], "dr_seconds": res["seconds"], "versions": res["versions"]}


def blocks(rec: dict) -> tuple[str, str]:
    """The docs table and the README's printed-output block of a record."""
    minutes, seconds = divmod(round(rec["seconds"]), 60)
    name = next(iter(rec["ppl"]))
    dense, plain, dr = rec["dense_ppl"][name], rec["plain_ppl"][name], rec["ppl"][name]
    docs = "\n".join([
        f"`drlightning fit --config configs/smollm2/quick.yaml` from a fresh cache (GGUF dequantised and "
        f"the dense model evaluated once, as on a first run), machine otherwise idle: {rec['machine']}; "
        f"torch {rec['versions'].get('torch', '?')}. Command: `python benchmarks/quick_path.py`.", "",
        "| wall time, command start to end | plain run s | DenoiseRotator run s | dense | plain | "
        "DenoiseRotator | gap closed |", "|---|---|---|---|---|---|---|",
        f"| {minutes} min {seconds} s | {rec['plain_seconds']:.0f} | {rec['dr_seconds']:.0f} | "
        f"{dense:.3f} | {plain:.3f} | {dr:.3f} | {(plain - dr) / (plain - dense):.0%} |"])
    readme = "\n".join([
        f"One run's output on an idle 2-core machine ({minutes} min {seconds} s in all, from a fresh "
        "cache; `python benchmarks/quick_path.py` re-measures it) ends with:", "", "```",
        *(line.replace(str(Path(rec.get("run_dir", ""))), "runs/smollm2/quick") for line in rec["printed"]),
        "```"])
    return docs, readme


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "quick_path.json")
    p.add_argument("--render-only", action="store_true", help="rewrite the blocks from --json")
    args = p.parse_args()
    if args.render_only:
        rec = json.loads(args.json.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="drl-quick-") as tmp:
            rec = run(Path(tmp))
            rec["run_dir"] = str(Path(tmp) / "run")
        args.json.write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
    from docblock import write_block

    docs, readme = blocks(rec)
    write_block(ROOT / "docs" / "benchmarks.md", "quickpath", "First result: README command 1", docs)
    write_block(ROOT / "README.md", "quick-readme", "The first result", readme)
    print(docs, readme, sep="\n\n")


if __name__ == "__main__":
    main()
