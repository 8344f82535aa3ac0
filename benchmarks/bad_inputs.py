"""Every bad input we tried, as a user would type it: the message ``drlightning`` prints, its exit
status, and how long it took to fail (wall time of the whole command, Python start-up included).

    python benchmarks/bad_inputs.py            # → docs/bad_inputs.md

Each case runs ``python -m drlightning.cli …`` in a fresh temporary directory on the embedded
default model (or a file made for the case) and checks that the run directory stays empty.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT = ["fit", "--config", str(ROOT / "configs" / "smollm2" / "sparsegpt-2of4.yaml")]
sys.path.insert(0, str(ROOT))

from benchmarks.bad_models import build, finished_copy, models, tiny_fit  # noqa: E402

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
    (tmp / "unclosed.yaml").write_text("model: [unclosed\n")
    (tmp / "tabs.yaml").write_text("model:\n\tsteps: 3\n")
    (tmp / "list.yaml").write_text("- model\n- data\n")
    fit = [*FIT, "--run.output_dir", str(tmp / "run")]
    return [*settings_cases(fit), *model_cases(tmp), *run_dir_cases(tmp), *original_cases(tmp, fit)]


def settings_cases(fit: list[str]) -> list[tuple]:
    """Impossible values of settings that are checked before anything loads."""
    return [
        ("infinite learning rate", "model.lr=inf", [*fit, "--model.lr", "inf"]),
        ("NaN gradient clip", "model.grad_clip=nan", [*fit, "--model.grad_clip", "nan"]),
        ("zero evaluation batch size", "run.eval.batch_size=0", [*fit, "--run.eval.batch_size", "0"]),
        ("zero evaluation windows", "run.eval.max_windows=0", [*fit, "--run.eval.max_windows", "0"]),
        ("evaluation window of one token", "run.eval.seqlen=1", [*fit, "--run.eval.seqlen", "1"]),
        ("zero generated task items", "run.eval.task_items=0", [*fit, "--run.eval.task_items", "0"]),
        ("zero task documents", "run.eval.task_limit=0", [*fit, "--run.eval.task_limit", "0"]),
        ("zero calibration batch size", "batch_size=0", [*fit, "--data.batch_size", "0"]),
        ("calibration window of one token", "seqlen=1", [*fit, "--data.seqlen", "1"]),
        ("malformed YAML config", "not valid YAML at line 2",
         [*fit, "--config", str(Path(fit[fit.index("--run.output_dir") + 1]).parent / "unclosed.yaml")]),
        ("tab-indented YAML config", "found character",
         [*fit, "--config", str(Path(fit[fit.index("--run.output_dir") + 1]).parent / "tabs.yaml")]),
        ("config whose top level is a list", "not a mapping",
         [*fit, "--config", str(Path(fit[fit.index("--run.output_dir") + 1]).parent / "list.yaml")]),
        ("accelerator this machine lacks", "trainer.accelerator", [*fit, "--trainer.accelerator", "cuda"]),
        ("two training processes", "trainer.devices='2'", [*fit, "--trainer.devices", "2"]),
        ("two nodes", "trainer.num_nodes=2", [*fit, "--trainer.num_nodes", "2"]),
    ]


def model_cases(tmp: Path) -> list[tuple]:
    """Input models that are damaged or do not fit their tokenizer (tiny ones, made once)."""
    m = models()
    out = ["--run.output_dir", str(tmp / "run")]
    cases = [
        ("checkpoint missing a tensor", "missing", tiny_fit(m["missing"], *out)),
        ("checkpoint with an unexpected tensor", "unexpected", tiny_fit(m["unexpected"], *out)),
        ("truncated model.safetensors", "model.safetensors", tiny_fit(m["truncated"], *out)),
        ("model.safetensors with a damaged header", "model.safetensors", tiny_fit(m["header"], *out)),
        ("context length beyond any model's", "max_position_embeddings", tiny_fit(m["context"], *out)),
        ("tokenizer larger than the vocabulary", "vocab_size", tiny_fit(m["vocab"], *out)),
        ("NaN weights", "NaN or Inf", tiny_fit(m["nan"], *out)),
        ("config.json not JSON", "config.json", tiny_fit(m["badjson"], *out)),
        ("evaluation window beyond the context", "context",
         ["eval", "--model", str(m["good"]), "--eval.seqlen", "100000"]),
    ]
    return [(*case, build) for case in cases]


def run_dir_cases(tmp: Path) -> list[tuple]:
    """A finished run (tiny model) re-run or read after something went wrong with it; each case
    has a set-up that makes its copy of the run (the command must leave that copy as it was)."""
    m, run = models(), tmp / "finished"

    def damaged(change):
        return lambda: change(finished_copy(run))

    def flip(d: Path) -> None:
        path = d / "state" / "layer_01.safetensors"
        data = bytearray(path.read_bytes())
        data[-5] ^= 1
        path.write_bytes(bytes(data))

    again = tiny_fit(m["good"], "--run.output_dir", str(run))
    return [
        ("re-run over finished layers with other settings", "other settings",
         tiny_fit(m["good"], "--run.output_dir", str(run), "--model.steps", "3"), damaged(lambda d: d)),
        ("re-run after the input weights were replaced in place", "content.weights",
         tiny_fit(m["replaced"], "--run.output_dir", str(run)),
         lambda: finished_copy(run, "finished-replaced")),
        ("a layer file with a flipped bit", "is damaged", again, damaged(flip)),
        ("a layer file truncated", "is truncated", again, damaged(lambda d: (
            d / "state" / "layer_01.safetensors").write_bytes(
                (d / "state" / "layer_01.safetensors").read_bytes()[:3000]))),
        ("a layer file copied over another", "holds layer 0, not layer 1", again, damaged(
            lambda d: shutil.copy(d / "state" / "layer_00.safetensors",
                                  d / "state" / "layer_01.safetensors"))),
        ("the run's fingerprint.json damaged", "fingerprint.json", again, damaged(
            lambda d: (d / "state" / "fingerprint.json").write_text("{"))),
        ("compare a run whose results.json is not JSON", "results.json", ["compare", str(run)],
         damaged(lambda d: (d / "results.json").write_text("{"))),
        ("compare a run whose results.json is empty", "results.json", ["compare", str(run)],
         damaged(lambda d: (d / "results.json").write_text("{}"))),
        ("eval of a run with results.json not JSON", "results.json", ["eval", str(run)],
         damaged(lambda d: (d / "results.json").write_text("[1,"))),
    ]


def original_cases(tmp: Path, fit: list[str]) -> list[tuple]:
    """The first cases, on the embedded default model and its config."""
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
        ("zero learning rate", "lr=0.0 must be a finite", [*fit, "--model.lr", "0"]),
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


def run_dir(argv: list[str]) -> Path | None:
    """The run directory a case's command would write (or read, for compare and eval)."""
    if "--run.output_dir" in argv:
        return Path(argv[argv.index("--run.output_dir") + 1])
    if argv[:1] in (["compare"], ["eval"]) and len(argv) > 1 and not argv[1].startswith("-"):
        return Path(argv[1])
    return None


def snapshot(run: Path | None) -> dict[str, tuple[int, int]]:
    """Every file under ``run`` with its size and modification time ({} if there is none)."""
    if run is None or not run.is_dir():
        return {}
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*"))}


def changed(before: dict, after: dict) -> list[str]:
    """What a command added, changed or removed in its run directory."""
    return sorted({k for k in after if before.get(k) != after[k]} | (set(before) - set(after)))


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
    for what, expected, argv, *setup in cases(Path(tempfile.mkdtemp(prefix="drl-bad-"))):
        run = run_dir(argv)
        for make in setup:
            make()
        before = snapshot(run)
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
        left = changed(before, snapshot(run))
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
        "what the failed command wrote into (or changed in) its run directory. Load average (1 min) when it "
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
