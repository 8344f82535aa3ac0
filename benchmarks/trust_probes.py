"""Can a run directory be trusted after a crash, a damaged file or a second run? Each probe runs
``drlightning fit`` in subprocesses on a tiny 4-layer Llama (built in memory, no download) and
compares the outcome with an undisturbed reference run of the same command.

    python benchmarks/trust_probes.py        # → docs/benchmarks.md, block "trust-probes"

Kill -9 probes kill the run at a point (a finished layer file appears, the saved model's temporary
directory appears), re-run the same command and check that the model and perplexities are
bit-identical to the reference. Damage probes change one file of a finished run and re-run: the
re-run must refuse in one line naming the file (exit 2) and leave results.json as it was.
Concurrency probes start a second run into a directory a first run is writing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.docblock import write_block  # noqa: E402
from tests.tiny import fit_args, save_tiny_dir  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def fit(src: Path, out: Path, **kw) -> list[str]:
    return [sys.executable, "-m", "drlightning.cli", *fit_args(src, out, steps=150, **kw)]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)


def outcome(out: Path) -> tuple[str, str]:
    """(sha256 of the saved weights, the perplexities) of a finished run."""
    weights = out / "model" / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else "-"
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    return sha, json.dumps(res.get("ppl"))


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    return lines[0] if lines else (stderr.strip().splitlines() or ["(nothing)"])[-1]


def kill_when(cmd: list[str], ready: Callable[[], bool]) -> bool:
    """Start ``cmd``, kill -9 it as soon as ``ready()``; True if it was killed mid-run."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    return proc.returncode == -9


def kill_probes(src: Path, work: Path, reference: tuple[str, str]) -> list[str]:
    rows = []
    points = {
        "layer 1's state file written": lambda out: (out / "state" / "layer_01.safetensors").exists(),
        "last layer's state file written": lambda out: (out / "state" / "layer_03.safetensors").exists(),
        "saving the model (its temporary directory exists)":
            lambda out: any(p.name.startswith(".model.") for p in out.glob(".model.*")),
    }
    for what, ready in points.items():
        out = work / f"kill-{len(rows)}"
        killed = kill_when(fit(src, out), lambda out=out, ready=ready: ready(out))
        again = run(fit(src, out))
        same = again.returncode == 0 and outcome(out) == reference
        orphans = [p.name for p in out.glob(".*.tmp")]
        rows.append(f"| kill -9 when {what} | {'yes' if killed else 'no (finished first)'} | "
                    f"exit {again.returncode}; {'bit-identical' if same else 'DIFFERENT'}"
                    f"{'; orphans left: ' + ', '.join(orphans) if orphans else ''} |")
        print(rows[-1], flush=True)
    return rows


def damage_probes(src: Path, work: Path, finished: Path) -> list[str]:
    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[-9] ^= 0x10  # a bit of the last tensor's bytes
        path.write_bytes(bytes(data))

    def foreign(run_dir: Path) -> None:
        other = work / "other"
        if not other.exists():
            run(fit(src, other, nsamples=4))
        shutil.copy(other / "state" / "layer_02.safetensors", run_dir / "state" / "layer_02.safetensors")

    damages = {
        "a layer file with one flipped bit": lambda d: flip(d / "state" / "layer_02.safetensors"),
        "a layer file truncated": lambda d: (d / "state" / "layer_02.safetensors").write_bytes(
            (d / "state" / "layer_02.safetensors").read_bytes()[:5000]),
        "a layer file copied over the next": lambda d: shutil.copy(
            d / "state" / "layer_01.safetensors", d / "state" / "layer_02.safetensors"),
        "a layer file of another run": foreign,
        "fingerprint.json not JSON": lambda d: (d / "state" / "fingerprint.json").write_text("{"),
    }
    rows = []
    for what, damage in [*damages.items(), ("the input weights replaced in place", None)]:
        out, model = work / f"damage-{len(rows)}", src
        if damage is None:  # a run of its own copy of the model, then other weights put in its place
            model = work / "replaced"
            shutil.copytree(src, model)
            run(fit(model, out))
            shutil.copy(save_tiny_dir(work / "seed1", "llama", seed=1, num_hidden_layers=4)
                        / "model.safetensors", model / "model.safetensors")
        else:
            shutil.copytree(finished, out)
            damage(out)
        before = (out / "results.json").read_bytes()
        again = run(fit(model, out))
        kept = (out / "results.json").read_bytes() == before
        msg = error_line(again.stderr).replace(str(out), "<run>").replace("|", "\\|")
        rows.append(f"| {what} | exit {again.returncode}; results.json "
                    f"{'unchanged' if kept else 'CHANGED'} | {msg[:240]} |")
        print(rows[-1], flush=True)
    return rows


def concurrency_probes(src: Path, work: Path, reference: tuple[str, str]) -> list[str]:
    out = work / "shared-dir"
    first = subprocess.Popen(fit(src, out), env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    while not (out / "state" / "fingerprint.json").exists() and first.poll() is None:
        time.sleep(0.01)
    second = run(fit(src, out, nsamples=4))
    first.wait()
    same = first.returncode == 0 and outcome(out) == reference
    msg = error_line(second.stderr).replace(str(out), "<run>").replace("|", "\\|")
    rows = [f"| a second run (other settings) into a directory being written | second: exit "
            f"{second.returncode}; first: {'bit-identical' if same else 'DIFFERENT'} | {msg[:200]} |"]
    a, b = work / "par-a", work / "par-b"
    procs = [subprocess.Popen(fit(src, d), env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for d in (a, b)]
    codes = [p.wait() for p in procs]
    both = codes == [0, 0] and outcome(a) == reference == outcome(b)
    rows.append(f"| two runs at once into two directories (one shared cache) | exit {codes}; "
                f"{'both bit-identical' if both else 'DIFFERENT'} | - |")
    for row in rows:
        print(row, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="drl-trust-") as tmp:
        work = Path(tmp)
        ENV["DRL_CACHE_DIR"] = str(work / "cache")
        src = save_tiny_dir(work / "tiny", "llama", num_hidden_layers=4)
        ref_dir = work / "reference"
        done = run(fit(src, ref_dir))
        if done.returncode:
            raise SystemExit(f"the reference run failed:\n{done.stderr[-2000:]}")
        reference = outcome(ref_dir)
        head = ["| probe | outcome | message |", "|---|---|---|"]
        rows = (kill_probes(src, work, reference) + damage_probes(src, work, ref_dir)
                + concurrency_probes(src, work, reference))
    text = "\n".join([
        f"`python benchmarks/trust_probes.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, 1 BLAS thread per run, {time.perf_counter() - start:.0f} s in all "
        "(a tiny 4-layer Llama, 150 rotation steps per layer; every re-run is the same command as "
        "the reference run, whose saved weights and perplexities it must match bit for bit).", "",
        *head, *rows])
    write_block(args.out, "trust-probes", "Crashes, damaged files and concurrent runs", text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
