"""Fixed costs of a run on the default model: loading it, and lm-eval's task index.

    python benchmarks/startup.py        # writes <!-- startup:begin --> in docs/benchmarks.md

Measures in this process, with a fresh private cache directory: the first ``load_model()`` of the
embedded GGUF file (parse + dequantise, then the float32 copy is written to the cache), a second
load (from the copy), and lm-eval's TaskManager with its index of every task (what a standard
task needs) and without it (enough for the generated ``drl_continuation``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from docblock import write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="drl-startup-") as cache:
        os.environ["DRL_CACHE_DIR"] = cache
        from lm_eval.tasks import TaskManager

        from drlightning.models import load_model
        from drlightning.reporting.results import device_name

        rows = [("load the embedded model, first time (GGUF → float32, copy kept)", timed(load_model)),
                ("load it again (from the float32 copy)", timed(load_model)),
                ("lm-eval TaskManager with the index of every task",
                 timed(lambda: TaskManager(verbosity="ERROR"))),
                ("lm-eval TaskManager without an index (generated task only)",
                 timed(lambda: TaskManager(verbosity="ERROR", include_defaults=False)))]
    load = os.getloadavg()[0]
    lines = [f"{device_name(torch.device('cpu'))}, load average {load:.1f} when it finished. "
             "Command: `python benchmarks/startup.py`.", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in rows]
    text = "\n".join(lines)
    print(text)
    write_block(args.out, "startup", "Start-up costs: model load and lm-eval's task index", text)


if __name__ == "__main__":
    main()
