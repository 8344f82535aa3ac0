"""Per-seed records of the quality protocol (benchmarks/quality.py): read from a run or from the
archive in ``benchmarks/results/quality.json``, told apart by the float arithmetic they ran with, and
paired with the plain pruner's run they are compared with."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

Record = dict
"""One finished (pruner, setting, seed): ppl, dense_ppl, layer_errors (per layer, or None when only
the mean was archived), layer_error, rotated_kept, perms_kept (None when not applicable), minutes,
device, rotation_seconds and peak_rss_mib of the whole run (absent from records archived before
they were kept), held_ppl and held_dense_ppl: the same on the held-out domain ``HELD_OUT`` (absent
from runs evaluated in-domain only)."""

HELD_OUT = "speeches"
"""The evaluation domain the calibration never saw (U.S. State of the Union addresses, 1980 on)."""


def from_run(pruner: str, setting: str, seed: int, r: dict) -> Record:
    """The record of one run's ``results.json``."""
    layers = r["layers"]
    errors = [layer["pruning_error"] for layer in layers]
    guarded = any("guard" in layer for layer in layers)
    permuted = any(layer.get("permutation") for layer in layers)
    return {"pruner": pruner, "setting": setting, "seed": seed, "ppl": r["ppl"]["embedded"],
            "dense_ppl": r["dense_ppl"]["embedded"], "layer_errors": errors,
            "layer_error": statistics.fmean(errors),
            "rotated_kept": sum(layer.get("guard") == "rotated" for layer in layers) if guarded else None,
            "perms_kept": sum(space.get("kept", False) for layer in layers
                              for space in (layer.get("permutation") or {}).values()) if permuted else None,
            "minutes": r["seconds"] / 60, "device": r["device"],
            "rotation_seconds": rotation_seconds(r),
            "peak_rss_mib": r.get("memory", {}).get("peak_rss_mib"),
            **({"held_ppl": r["ppl"][HELD_OUT], "held_dense_ppl": r["dense_ppl"][HELD_OUT]}
               if HELD_OUT in r["ppl"] else {})}


def rotation_seconds(r: dict) -> float | None:
    """Seconds of the rotation phase: the per-layer fits summed (each with its Hessians and role
    weights), or the shared phase (dense pass, role weights, full-batch fit and the model-wide
    guard's pass, where recorded); None for runs that rotate nothing."""
    shared = r.get("export", {}).get("shared_rotation")
    if shared is not None:
        return shared["fit_seconds"] + shared.get("model_guard", {}).get("seconds", 0.0)
    fits = [layer["fit_seconds"] for layer in r["layers"] if "fit_seconds" in layer]
    return sum(fits) if fits else None


def load_archive(path: Path) -> tuple[dict[tuple, Record], dict[str, dict]]:
    """The per-seed records and archived per-layer means kept in the results JSON (empty if none)."""
    if not path.is_file():
        return {}, {}
    data = json.loads(path.read_text())
    records = {key(r): r for r in data.get("records", [])}
    return records, data.get("layer_means", {})


def arithmetic(r: Record) -> str:
    """The float arithmetic a run had, told by its dense perplexity (the same model, text and
    protocol: it differs in the 5th to 7th decimal only when the machine or BLAS rounds
    differently; two machines of one session pair differed in the 7th alone, with plain SparseGPT
    2:4 results 2% apart)."""
    return f"{r['dense_ppl']:.7f}"


def key(r: Record) -> tuple:
    return r["pruner"], r["setting"], r["seed"], arithmetic(r)


def machines(records: dict[tuple, Record]) -> list[str]:
    """The arithmetics in order of first appearance (the archive's first)."""
    return list(dict.fromkeys(arithmetic(r) for r in records.values()))


MACHINE_LETTERS = "abcdefghijklmnopqrstuvwxyz"
"""The letter of the i-th arithmetic (index 0, the first machine's, stays unmarked)."""


def label(r: Record, arith: list[str]) -> str:
    """The seed, with a letter (b, c, …) when the run had the second, third, … arithmetic."""
    i = arith.index(arithmetic(r))
    return f"{r['seed']}" + ("" if i == 0 else MACHINE_LETTERS[i])


def select(records: dict[tuple, Record], pruner: str, setting: str) -> dict[tuple, Record]:
    """(seed, arithmetic) → record of one row."""
    return {(k[2], k[3]): r for k, r in sorted(records.items()) if k[0] == pruner and k[1] == setting}


def plain_for(plain: dict[tuple, Record], r: Record) -> Record | None:
    """The plain run to compare with: same seed and arithmetic, else the same seed."""
    same = plain.get((r["seed"], arithmetic(r)))
    return same or next((p for (seed, _), p in plain.items() if seed == r["seed"]), None)


def machine_note(records: dict[tuple, Record]) -> str:
    arith = machines(records)
    if len(arith) < 2:
        return ""
    others = ", ".join(f"'{MACHINE_LETTERS[i]}' {a}" for i, a in enumerate(arith) if i)
    return (f" A seed with a letter ran on another machine of the same kind whose float rounding "
            f"differs (dense perplexity {arith[0]} unmarked; {others}); its gap closed is taken "
            "against the plain pruner of the same seed on the same machine where there is one, "
            "else against the unmarked one.")
