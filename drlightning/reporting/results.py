"""Run directories, provenance and the printed result table."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path

import torch

from ..atomic import atomic_write_text

EVAL_PROTOCOL = {
    "perplexity": "non-overlapping windows of eval.seqlen tokens over the evaluation text joined "
                  "with '\\n\\n' and tokenised once; exp(mean token NLL) (WikiText-2 protocol)",
    "calibration": "nsamples random windows of seqlen tokens; random.seed(seed); documents longer "
                   "than seqlen; random start (SparseGPT/Wanda/DenoiseRotator protocol)",
}
PACKAGES = ("drlightning", "torch", "lightning", "transformers", "datasets", "lm_eval", "gguf")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the numbers."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated GPU memory."""
    import resource

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def device_name(device: torch.device) -> str:
    """A human-readable name of the compute device."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def ensure_writable(path: Path) -> None:
    """Create ``path`` and prove a file can be written there, or raise a clear error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # one per process: torchrun ranks probe at once
        atomic_write_text(probe, "ok\n")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output_dir {str(path)!r} is not writable ({err}); "
                              "choose another run.output_dir") from err


def read_json(path: Path, what: str = "a JSON object") -> dict:
    """The JSON object in ``path``; a file that is not JSON, or not an object, is a one-line
    ValueError naming the file and the line (``what``: what the file should hold)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start}); "
                         f"expected {what}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: "
                         f"{err.msg}); expected {what}") from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(data), "a number")
        raise ValueError(f"{path}: holds {kind}, not a JSON object; expected {what}")
    return data


def write_json(path: Path, data: dict) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def side_by_side(results: dict, baseline: dict) -> str:
    """Dense, the baseline (the plain pruner) and this run's perplexity per dataset, and the share
    of the baseline's gap to dense that this run closes."""
    rows = [f"{'dataset':<16}{'dense':>10}{'plain':>10}{'DenoiseRotator':>16}{'gap closed':>12}"]
    for name, ppl in results["ppl"].items():
        dense = (results.get("dense_ppl") or {}).get(name)
        plain = (baseline.get("ppl") or {}).get(name)
        if dense is None or plain is None:
            continue
        closed = f"{(plain - ppl) / (plain - dense):.0%}" if plain > dense else "-"
        rows.append(f"{name:<16}{dense:10.3f}{plain:10.3f}{ppl:16.3f}{closed:>12}")
    return "\n".join(rows) if len(rows) > 1 else ""


def format_table(results: dict) -> str:
    """A small plain-text table of dense vs pruned perplexity."""
    title = (f"{results['model']} | {results['method']} {results['pattern']} | "
             f"steps {results['steps']}")
    rows = [title, f"{'dataset':<16}{'dense ppl':>12}{'pruned ppl':>12}"]
    for name, ppl in results["ppl"].items():
        dense = results.get("dense_ppl", {}).get(name)
        dense_s = f"{dense:12.3f}" if dense is not None else f"{'-':>12}"
        rows.append(f"{name:<16}{dense_s}{ppl:12.3f}")
    tasks = (results.get("zero_shot") or {}).get("tasks") or {}
    dense_tasks = (results.get("dense_zero_shot") or {}).get("tasks") or {}
    if tasks:
        rows.append(f"{'task (acc %)':<16}{'dense':>12}{'pruned':>12}")
    for name, row in tasks.items():
        dense = dense_tasks.get(name, {}).get("value")
        dense_s = f"{100 * dense:12.2f}" if dense is not None else f"{'-':>12}"
        rows.append(f"{name[:16]:<16}{dense_s}{100 * row['value']:12.2f}")
    this = results.get("seconds_this_run", results["seconds"])
    resumed = f" ({this:.1f} s in this attempt, resumed)" if results["seconds"] - this > 0.5 else ""
    rows.append(f"wall time {results['seconds']:.1f} s{resumed}")
    return "\n".join(rows)
