"""benchmarks/gpu_check.py runs end to end (on the CPU with the tiny size): both placements prune
the written model, give the same perplexity, and the saved models load and generate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .tiny import checkout_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_script_runs_both_placements_and_generates(tmp_path):
    record = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--size", "tiny",
                    "--steps", "2", "--nsamples", "4", "--seqlen", "32", "--work", str(tmp_path / "w"),
                    "--json", str(record)], check=True, cwd=tmp_path, capture_output=True, text=True,
                   env=checkout_env())
    rec = json.loads(record.read_text())
    runs = {run["layerwise"]: run for run in rec["runs"]}
    assert set(runs) == {True, False} and all(run["layers"] == 2 for run in runs.values())
    assert runs[True]["ppl"] == runs[False]["ppl"]  # layer by layer = whole model, bit for bit
    for run in runs.values():
        assert run["generate"] == {**run["generate"], "new_tokens": 8, "finite_logits": True}
        assert run["rotation_fits"] > 0 and run["layer_loop"] <= run["seconds"]
        assert (Path(run["model_dir"]) / "config.json").is_file()
