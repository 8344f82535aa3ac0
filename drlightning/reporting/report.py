"""Markdown reports of runs and side-by-side comparisons (``drlightning compare run_a run_b``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

OTHER_CANDIDATES = {"unrotated": "unrotated", "r2_identity": "R2 = identity (shared Q)"}
"""The guard's other candidate: the unrotated layer (per-layer R1) or the layer without its R2
(shared R1, whose Q every layer keeps)."""


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if pct else f"{value:.3f}"


def _rows(res: dict, dense: bool) -> dict[str, tuple[float | None, bool]]:
    """metric label → (value, is accuracy) for a run's pruned (or dense) numbers."""
    ppl = res.get("dense_ppl" if dense else "ppl") or {}
    zs = res.get("dense_zero_shot" if dense else "zero_shot") or {}
    rows = {f"ppl {k}": (v, False) for k, v in ppl.items()}
    for task, row in (zs.get("tasks") or {}).items():
        rows[f"{task} ({row['metric']})"] = (row["value"], True)
    if zs.get("tasks"):
        rows["zero-shot mean"] = (zs["mean"], True)
    return rows


def gap_closed(dense: float, baseline: float, ours: float) -> float | None:
    """Share of the baseline's perplexity gap to dense that ``ours`` closes."""
    gap = baseline - dense
    return (baseline - ours) / gap if gap > 0 else None


def layer_section(layers: list[dict], plot: str | None = None) -> list[str]:
    """Per-layer pruning error lines of report.md: the guard's choice, permutations kept."""
    if not layers:
        return []
    guarded = any("guard" in r for r in layers)
    lines = ["## Layers", ""]
    if plot:
        lines += [f"![per-layer pruning error]({plot})", ""]
    other = next((n for n in OTHER_CANDIDATES if any(f"pruning_error_{n}" in r for r in layers)),
                 "unrotated")
    if guarded:
        kept = sum(r.get("guard") == "rotated" for r in layers)
        lines += [f"Guard: the rotated layer was kept in {kept} of {len(layers)} layers (the "
                  f"{OTHER_CANDIDATES[other]} one pruned with a lower error in the others).", ""]
    head = f"| layer | pruning error | {OTHER_CANDIDATES[other]} | rotated | kept | permutations kept |"
    lines += [head, "|---|---|---|---|---|---|"]
    for r in layers:
        perms = ", ".join(k for k, v in (r.get("permutation") or {}).items() if v.get("kept")) or "-"
        lines.append(f"| {r['layer']} | {_fmt(r.get('pruning_error'))} | "
                     f"{_fmt(r.get(f'pruning_error_{other}'))} | {_fmt(r.get('pruning_error_rotated'))} "
                     f"| {r.get('guard', '-')} | {perms} |")
    mean = sum(r["pruning_error"] for r in layers) / len(layers)
    return [*lines, "", f"Mean layer pruning error: {mean:.4f}.", ""]


def output_section(export: dict | None) -> list[str]:
    """What kind of checkpoint the run saved and how to load it; for shared R1 also its rotation
    phase (objective, model-wide guard) and whether the embeddings were untied."""
    if not export or "path" not in export:
        return []
    lines = ["## Output", ""]
    if export.get("r1") == "shared":
        lines.append(f"Standard checkpoint in `{export['path']}` (the input's own architecture, no "
                     "extra tensors): `AutoModelForCausalLM.from_pretrained(dir)` loads it without "
                     "remote code.")
        if "standard_merge_error" in export:
            lines.append("One residual rotation was absorbed into the embeddings, every layer and "
                         f"lm_head (logits moved by {export['standard_merge_error']:.1e} relative on "
                         "a calibration probe).")
        if export.get("untied_embeddings"):
            lines.append("The input embeddings and lm_head were tied in the input and are saved "
                         "untied (they differ after the rotation).")
        fit = export.get("shared_rotation") or {}
        if "fit_seconds" in fit:
            start, best = fit.get("initial_loss"), fit.get("best_loss")
            fell = (f"{start:.1f} → {best:.1f} summed" if None not in (start, best) else
                    "last iterate of random layer subsets,")
            lines.append(f"Shared rotation phase: objective {fit.get('objective')}, {fell} over "
                         f"{fit.get('layers')} layers ({fit.get('layers_per_step')} per step), "
                         f"role weights {fit.get('role_weights', 'equal')}, "
                         f"{fit['fit_seconds']:.0f} s.")
        guard = fit.get("model_guard")
        if guard:
            lines.append(f"Model-wide guard: summed pruning error {guard['shared']:.3f} with the "
                         f"shared rotation, {guard['identity']:.3f} without; kept: {guard['kept']}.")
    elif "drl_boundaries" in export:
        lines.append(f"Checkpoint with per-layer rotations in `{export['path']}`: load it with "
                     "`trust_remote_code=True` or `drlightning.load_pretrained(dir)`.")
    else:
        lines.append(f"Standard checkpoint in `{export['path']}` (no rotation was kept).")
    return [*lines, ""]


def report_markdown(res: dict, baseline: dict | None = None, plot: str | None = None) -> str:
    """The ``report.md`` of a run: dense vs pruned (vs baseline), the layers and the protocol."""
    title = f"# {res['model']} — {res['method']} {res['pattern']}, {res['steps']} rotation steps\n"
    ours, dense = _rows(res, False), _rows(res, True)
    base = _rows(baseline, False) if baseline else {}
    head = "| metric | dense | pruned |" + (" baseline | gap closed |" if baseline else "")
    lines = [title, head, "|---" * (5 if baseline else 3) + "|"]
    for label, (value, acc) in ours.items():
        d = dense.get(label, (None, acc))[0]
        row = f"| {label} | {_fmt(d, acc)} | {_fmt(value, acc)} |"
        if baseline:
            b = base.get(label, (None, acc))[0]
            closed = gap_closed(d, b, value) if None not in (d, b) and not acc else None
            row += f" {_fmt(b, acc)} | {'-' if closed is None else f'{100 * closed:.1f}%'} |"
        lines.append(row)
    lines += ["", "Accuracies in %, perplexities lower-is-better. "
              + (f"Baseline: {baseline.get('run_dir', 'given run')}. " if baseline else ""), ""]
    lines += output_section(res.get("export"))
    lines += layer_section(res.get("layers") or [], plot)
    lines += ["## Protocol", "", "```json",
              json.dumps({"calibration": res.get("calibration"), "eval": res.get("eval"),
                          "zero_shot": (res.get("zero_shot") or {}).get("protocol"),
                          "rotation": res.get("rotation"), "settings": res.get("settings"),
                          "device": res.get("device"), "versions": res.get("versions")},
                         indent=2, default=str), "```", ""]
    return "\n".join(lines)


RUN_KEYS = ("method", "pattern", "steps")
"""Keys every finished run's results.json has (a LoRA run's: ``lora.r``)."""


def _malformed(res: dict) -> list[str]:
    """The keys of a (LoRA-converted) results.json that a report needs and it lacks or garbles."""
    bad = [k for k in RUN_KEYS if k not in res]
    for key in ("ppl", "dense_ppl"):
        value = res.get(key)
        if value is not None and not (isinstance(value, dict) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value.values())):
            bad.append(f"{key} (dataset → number)")
    for key in ("zero_shot", "dense_zero_shot"):
        zs = res.get(key)
        tasks = zs.get("tasks") if isinstance(zs, dict) else None
        rows_ok = isinstance(tasks, dict) and all(isinstance(r, dict) and {"metric", "value"} <= set(r)
                                                  for r in tasks.values())
        if zs is not None and (not isinstance(zs, dict) or (tasks and not (rows_ok and "mean" in zs))):
            bad.append(f"{key} (tasks with metric and value, and mean)")
    return bad


def load_run(path: str | Path) -> dict:
    """results.json of a run directory (with ``run_dir`` added); a missing, unreadable or
    incomplete one is a one-line error naming the file and what it lacks."""
    from .results import read_json

    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a drlightning run directory (no results.json)")
    res = read_json(file, "a drlightning run's results")
    res["run_dir"] = str(path)
    if "lora" in res and "method" not in res:  # a LoRA recovery run: its final model's numbers
        if not isinstance(res["lora"], dict) or "r" not in res["lora"]:
            raise ValueError(f"{file}: missing lora.r (an unfinished or hand-edited LoRA run?)")
        final = res.get("after") or res.get("after_adapter") or {}
        src = res.get("source_run") or {}
        final, src = (x if isinstance(x, dict) else {} for x in (final, src))
        res.update(method=f"{src.get('method', '?')} {src.get('pattern', '')} + LoRA",
                   pattern=f"r{res['lora']['r']}", steps=res.get("steps"), ppl=final.get("ppl"),
                   zero_shot=final.get("zero_shot"), dense_ppl=src.get("dense_ppl"),
                   dense_zero_shot=src.get("dense_zero_shot"))
    bad = _malformed(res)
    if bad:
        raise ValueError(f"{file}: missing or malformed {', '.join(bad)} (an unfinished or "
                         "hand-edited run?); a finished drlightning run's results.json has them")
    return res


def protocol(res: dict) -> dict:
    """What a run's numbers were measured with: evaluation window length and count, datasets and
    the dense model ("?": not recorded)."""
    ev = res.get("eval") if isinstance(res.get("eval"), dict) else {}
    src = res.get("source_run") if isinstance(res.get("source_run"), dict) else {}
    data = ev.get("datasets") or ev.get("data") or list(res.get("ppl") or {})
    return {"seqlen": ev.get("seqlen", "?"), "max_windows": ev.get("max_windows", "?"),
            "datasets": sorted(map(str, data)),
            "dense model": (src if "lora" in res else res).get("model", "?")}


def describe_protocol(proto: dict) -> str:
    """'seqlen 512, all windows, data [embedded], dense model m' for :func:`protocol`'s dict."""
    windows = proto["max_windows"]
    shown = "all windows" if windows is None else f"first {windows} windows"
    return (f"seqlen {proto['seqlen']}, {shown}, data [{', '.join(proto['datasets'])}], "
            f"dense model {proto['dense model']}")


def differing_fields(runs: list[dict]) -> list[str]:
    """The protocol fields (:func:`protocol`) whose values differ between ``runs``."""
    protos = [protocol(r) for r in runs]
    return [k for k in protos[0] if len({str(p[k]) for p in protos}) > 1]


def compare_table(runs: list[dict]) -> str:
    """Markdown table: one column per run, after one dense column when every run has the same
    dense numbers, else each run's own dense column; runs measured with different protocols are
    marked [A], [B], … and the protocols listed under the table."""
    labels: dict[str, bool] = {}
    for res in runs:
        labels.update({k: acc for k, (_, acc) in _rows(res, False).items()})
    protos = [describe_protocol(protocol(r)) for r in runs]
    marks = {p: f" [{chr(65 + i)}]" for i, p in enumerate(dict.fromkeys(protos))}
    names = [f"{r['method']} {r['pattern']} s{r['steps']}" + (marks[p] if len(marks) > 1 else "")
             for r, p in zip(runs, protos, strict=True)]
    dense = [_rows(r, True) for r in runs]

    def cell(rows: dict, label: str, acc: bool) -> str:
        return _fmt(rows.get(label, (None, acc))[0], acc)

    shared = all(len({cell(d, label, acc) for d in dense}) == 1 for label, acc in labels.items())
    heads = ["dense", *names] if shared else [h for n in names for h in (f"{n} dense", n)]
    lines = ["| metric | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for label, acc in labels.items():
        ours = [cell(_rows(r, False), label, acc) for r in runs]
        cells = ([cell(dense[0], label, acc), *ours] if shared else
                 [c for d, o in zip(dense, ours, strict=True) for c in (cell(d, label, acc), o)])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {n}: {r['run_dir']}" for n, r in zip(names, runs, strict=True)]
    if len(marks) > 1:
        lines += [f"-{mark}: {p}" for p, mark in marks.items()]
    return "\n".join(lines)


def protocol_differences(runs: list[dict]) -> list[str]:
    """'run: seqlen 512, all windows, data [embedded], dense model m' for each run when the runs'
    evaluation protocols differ (window length or count, datasets, dense model); else []."""
    if not differing_fields(runs):
        return []
    return [f"{r['run_dir']}: {describe_protocol(protocol(r))}" for r in runs]


def compare(runs: list[str]) -> str:
    """Print a side-by-side table of the given run directories (a warning first when their numbers
    were measured with different protocols: those numbers are not comparable)."""
    if not runs:
        raise ValueError("compare needs at least one run directory: drlightning compare RUN_DIR "
                         "[RUN_DIR ...]")
    loaded = [load_run(r) for r in runs]
    differ = protocol_differences(loaded)
    if differ:
        print(f"warning: these runs were evaluated on different windows or protocols "
              f"({', '.join(differing_fields(loaded))} differ), so their numbers are not comparable "
              "— " + "; ".join(differ), file=sys.stderr)
    table = compare_table(loaded)
    print(table)
    return table


def eval_table(res: dict) -> str:
    """Plain table of one ``drlightning eval`` result."""
    rows = [f"{res.get('model')}"]
    for label, (value, acc) in _rows(res, False).items():
        rows.append(f"  {label:<32}{_fmt(value, acc):>10}")
    return "\n".join(rows)
