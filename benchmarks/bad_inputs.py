"""Every bad input we tried, as a user would type it: the message ``drlightning`` prints, its exit
status, and how long it took to fail (wall time of the whole command, Python start-up included).

    python benchmarks/bad_inputs.py            # → docs/bad_inputs.md

Each case runs ``python -m drlightning.cli …`` in a fresh temporary directory on the embedded
default model (or a file made for the case) and checks that the run directory stays empty.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT = ["fit", "--config", str(ROOT / "configs" / "smollm2" / "sparsegpt-2of4.yaml")]


OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(Path(tempfile.gettempdir()) / "drl-no-hf-cache")}
"""The Hub cases run as on a machine without Hub access and with an empty Hugging Face cache."""


def cases(tmp: Path) -> list[tuple[str, str, list[str]]]:
    """(what is wrong, a piece of the expected message, command-line arguments) per bad input."""
    (tmp / "empty.txt").write_text("")
    (tmp / "latin1.txt").write_bytes("café crème brûlée ".encode("latin-1") * 200)
    (tmp / "gpt2").mkdir()
    (tmp / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp / "gemma2").mkdir()
    (tmp / "gemma2" / "config.json").write_text('{"model_type": "gemma2"}')
    (tmp / "typo.yaml").write_text("model:\n  stepz: 3\n")
    (tmp / "old.yaml").write_text("run:\n  zero_shot: []\n  mode: parallel\n")
    (tmp / "a-file").write_text("x")
    (tmp / "short.txt").write_text("Far too short to calibrate on.")
    (tmp / "bad.txt.gz").write_bytes(b"plain bytes, not gzip")
    fit = [*FIT, "--run.output_dir", str(tmp / "run")]
    return [
        ("model path does not exist", "model path not found", [*fit, "--run.model", "./nope/"]),
        ("GGUF file does not exist", "GGUF file not found", [*fit, "--run.model", "missing.gguf"]),
        ("unsupported architecture", "model_type='gpt2'", [*fit, "--run.model", str(tmp / "gpt2")]),
        ("norms after attention and MLP (Gemma 2)", "after attention",
         [*fit, "--run.model", str(tmp / "gemma2")]),
        ("N:M does not tile the width (3:5 on 576)", "divisible by M=5", [*fit, "--model.pattern", "3:5"]),
        ("N >= M", "0 < N < M", [*fit, "--model.pattern", "4:4"]),
        ("sparsity out of range", "'100%' is out of range", [*fit, "--model.pattern", "100%"]),
        ("unknown pruning method", "unknown method 'obs'", [*fit, "--model.method", "obs"]),
        ("negative steps", "steps=-1", [*fit, "--model.steps", "-1"]),
        ("zero learning rate", "lr=0.0", [*fit, "--model.lr", "0"]),
        ("unknown objective", "objective='mse'", [*fit, "--model.objective", "mse"]),
        ("unknown refit", "refit='svd'", [*fit, "--model.refit", "svd"]),
        ("layer refit without held-out windows", "refit='layer' stops early",
         [*fit, "--model.refit", "layer", "--data.held_out", "0"]),
        ("zero layer-refit steps", "refit_steps=0", [*fit, "--model.refit", "layer",
                                                     "--model.refit_steps", "0"]),
        ("zero refit damping", "refit_damping=0.0", [*fit, "--model.refit", "rows",
                                                       "--model.refit_damping", "0"]),
        ("iterate kept on held-out windows without any", "best_on='held_out' keeps",
         [*fit, "--model.best_on", "held_out", "--data.held_out", "0"]),
        ("unknown best_on", "best_on='last'", [*fit, "--model.best_on", "last"]),
        ("judge without held-out windows", "hold none out",
         [*fit, "--run.judge", "true", "--data.held_out", "0"]),
        ("two ways of holding windows out", "choose one",
         [*fit, "--data.held_out", "4", "--model.holdout", "0.25"]),
        ("negative extra held-out windows", "held_out=-1", [*fit, "--data.held_out", "-1"]),
        ("a mix of one source", "a mix names two or more", [*fit, "--data.source", "mix:embedded"]),
        ("r1_blocks does not divide the hidden size", "r1_blocks=7", [*fit, "--model.r1_blocks", "7"]),
        ("calibration seqlen beyond the context", "data.seqlen=10000", [*fit, "--data.seqlen", "10000"]),
        ("evaluation seqlen beyond the context", "run.eval.seqlen=9000", [*fit, "--run.eval.seqlen", "9000"]),
        ("zero calibration samples", "nsamples=0", [*fit, "--data.nsamples", "0"]),
        ("calibration file missing", "no such file", [*fit, "--data.source", str(tmp / "nope.txt")]),
        ("calibration file empty", "is an empty file", [*fit, "--data.source", str(tmp / "empty.txt")]),
        (
            "calibration file not UTF-8",
            "not valid UTF-8 at byte 3",
            [*fit, "--data.source", str(tmp / "latin1.txt")],
        ),
        (
            "calibration file too short",
            "too little calibration text",
            [*fit, "--data.source", str(tmp / "short.txt")],
        ),
        (
            "calibration file not gzip",
            "not a valid gzip file",
            [*fit, "--data.source", str(tmp / "bad.txt.gz")],
        ),
        ("Hub calibration data while offline", "Hub is not available", [*fit, "--data.source", "c4"]),
        ("Hub zero-shot task while offline", "baber/piqa", [*fit, "--run.eval.zero_shot", "[piqa]"]),
        ("unknown zero-shot task", "did you mean 'piqa'", [*fit, "--run.eval.zero_shot", "[piqaa]"]),
        ("evaluation file missing", "run.eval.data=", [*fit, "--run.eval.data", f"[{tmp / 'nope.jsonl'}]"]),
        (
            "offline task file missing",
            "offline task 'piqa' needs",
            [*fit, "--run.eval.zero_shot", "[piqa]", "--run.eval.task_data_dir", str(tmp)],
        ),
        ("CUDA device on a machine without one", "CUDA is not available", [*fit, "--run.device", "cuda"]),
        ("unknown device", "run.device='tpu'", [*fit, "--run.device", "tpu"]),
        ("16-bit weights precision", "bf16-true", [*fit, "--trainer.precision", "bf16-true"]),
        (
            "conflicting gradient clipping",
            "gradient_clip_val=0.5",
            [*fit, "--trainer.gradient_clip_val", "0.5"],
        ),
        ("unknown rotation dtype", "rotation_dtype='int8'", [*fit, "--run.export.rotation_dtype", "int8"]),
        ("unknown launch mode", "mode='both'", [*fit, "--run.launch.mode", "both"]),
        (
            "parallel mode with no rotation",
            "model.steps=0",
            [*fit, "--run.launch.mode", "parallel", "--model.steps", "0"],
        ),
        ("layer-by-layer with zero-shot", "layerwise=true", [*fit, "--run.launch.layerwise", "true"]),
        ("unknown picture role", "picture_role='z'", [*fit, "--run.monitor.picture_role", "z"]),
        (
            "output directory is a file",
            "is not writable",
            [*FIT, "--run.output_dir", str(tmp / "a-file" / "run")],
        ),
        ("unknown flag (typo)", "did you mean 'model.steps'", [*fit, "--model.stepz", "3"]),
        (
            "unknown key in a config file",
            "did you mean 'model.steps'",
            [*fit, "--config", str(tmp / "typo.yaml")],
        ),
        (
            "flat run keys of an older config",
            "run.zero_shot → run.eval.zero_shot",
            [*fit, "--config", str(tmp / "old.yaml")],
        ),
        ("config file missing", "File does not exist", ["fit", "--config", str(tmp / "nope.yaml")]),
        ("compare without runs", "at least one run directory", ["compare"]),
        ("compare a directory that is no run", "not a drlightning run directory", ["compare", str(tmp)]),
        (
            "LoRA of a directory that is no run",
            "neither a run directory",
            [
                "lora",
                "fit",
                "--config",
                str(ROOT / "configs" / "smollm2" / "lora.yaml"),
                "--model.model",
                str(tmp),
            ],
        ),
        (
            "LoRA validation after max_steps",
            "val_check_interval=50 > trainer.max_steps=20",
            [
                "lora",
                "fit",
                "--config",
                str(ROOT / "configs" / "smollm2" / "lora.yaml"),
                "--trainer.max_steps",
                "20",
            ],
        ),
    ]


def message(stderr: str) -> str:
    """The first ``error:`` line (the one-line message), else the last non-empty line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no message)"])[0 if errors else -1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bad_inputs.md")
    args = p.parse_args()
    rows, load = [], os.getloadavg()[0]
    env = {
        **os.environ,
        **OFFLINE,
        "OMP_NUM_THREADS": "1",  # this checkout's code, whatever is installed
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for what, expected, argv in cases(Path(tempfile.mkdtemp(prefix="drl-bad-"))):
        with tempfile.TemporaryDirectory(prefix="drl-case-") as cwd:
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "drlightning.cli", *argv],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            seconds = time.perf_counter() - start
        run = Path(argv[argv.index("--run.output_dir") + 1]) if "--run.output_dir" in argv else None
        left = sorted(str(q.relative_to(run)) for q in run.rglob("*")) if run and run.is_dir() else []
        text = message(proc.stderr)
        if expected not in text:
            print(f"warning: {what}: expected {expected!r} in the message", file=sys.stderr)
        text = text.replace("|", "\\|")
        rows.append(
            f"| {what} | {proc.returncode} | {seconds:.1f} | {', '.join(left) if left else '-'} | {text} |"
        )
        print(rows[-1], flush=True)
    head = [
        "# Bad inputs and what drlightning says",
        "",
        "Generated by `python benchmarks/bad_inputs.py` (1 BLAS thread; time = the whole "
        "command, Python start-up and imports included: `python -m drlightning.cli --help` "
        "alone takes about 11 s on this 2-core machine, so nearly all of it). Exit status 2 = a "
        'user error reported in one line (`--debug` shows the traceback). "Left behind" lists '
        "what the failed command wrote into its run directory. Load average (1 min) when it "
        f"started: {load:.1f} (other jobs on the machine slow every case).",
        "",
        "| bad input | exit | seconds | left behind | message |",
        "|---|---|---|---|---|",
    ]
    foot = [
        "",
        "The Hub cases run with `HF_HUB_OFFLINE=1` and an empty Hugging Face cache, as on a "
        "machine without Hub access. `tests/test_bad_input_table.py` runs every row of this table "
        "(in one process) and checks its exit status, its message and that nothing is left behind.",
    ]
    args.out.write_text("\n".join(head + rows + foot) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
