"""Tables of the quality report built from its summary rows (benchmarks/quality.py): the docs'
tables, the README's results table and the per-layer table."""

from __future__ import annotations

import statistics

SIDE_BY_SIDE_PRUNERS = ("sparsegpt-2of4", "wanda-2of4", "sparsegpt-50pct")
PER_LAYER = "pm-rw+guard"
"""The per-layer default every shared row is compared with."""
SIDE_BY_SIDE_SETTINGS = {"plain": "none (plain pruner)", PER_LAYER: "per layer (default)",
                         "shared": "shared, equal role weights",
                         "shared-rw": "shared, measured role weights (shared default)",
                         "shared-200": "shared, equal role weights, 200 steps"}


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± std' of ``values`` times ``scale`` ('-' when empty, std 0 for one value)."""
    if not values:
        return "-"
    m = statistics.fmean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _value(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± std', or the one value alone."""
    return mean_std(values, scale, digits) if len(values) > 1 else f"{values[0] * scale:.{digits}f}"


def held_out(r: dict, unit: str = "") -> tuple[str, str]:
    """(perplexity, gap closed, followed by ``unit``) on the held-out domain with the seeds
    measured there, or '-'."""
    if not r.get("held_ppl"):
        return "-", "-"
    seeds = f" (seeds {','.join(r['held_seeds'])})" if r["held_seeds"] != r["seeds"] else ""
    closed = "-" if r["setting"] == "plain" else _value(r["held_gap_closed"], 100, 1) + unit + seeds
    return _value(r["held_ppl"]) + seeds, closed


def _mean(values: list[float], digits: int = 0) -> str:
    return f"{statistics.fmean(values):.{digits}f} (n={len(values)})" if values else "-"


def side_by_side(rows: list[dict]) -> list[str]:
    """Plain pruner, per-layer R1 and shared R1 for each pruner, with the share of the per-layer
    gap closed that each shared setting reaches, the rotation phase's seconds and the run's peak
    resident memory (both only from runs that recorded them)."""
    lines = ["| pruner | R1 | seeds | perplexity | gap closed % | share of per-layer | "
             "rotation phase s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for pruner in SIDE_BY_SIDE_PRUNERS:
        by_setting = {r["setting"]: r for r in rows if r["pruner"] == pruner}
        base = by_setting.get(PER_LAYER)
        for setting, name in SIDE_BY_SIDE_SETTINGS.items():
            r = by_setting.get(setting)
            if r is None:
                continue
            closed = "-" if setting == "plain" else mean_std(r["gap_closed"], 100, 1)
            share = "-"
            if setting.startswith("shared") and base and base["gap_closed"] and r["gap_closed"]:
                share = f"{statistics.fmean(r['gap_closed']) / statistics.fmean(base['gap_closed']):.2f}"
            lines.append(f"| {pruner} | {name} | {','.join(r['seeds'])} | {mean_std(r['ppl'])} | "
                         f"{closed} | {share} | {_mean(r.get('rotation_seconds', []))} | "
                         f"{_mean(r.get('peak_rss_mib', []))} |")
    return lines if len(lines) > 2 else []


DEFAULT_SETTING = {"magnitude-2of4": "pm+perm+guard+held8+judge",
                   "sparsegpt-2of4": "pm-rw+guard+held8", "wanda-2of4": "pm-rw+guard+held8",
                   "sparsegpt-4of8": "pm-rw+guard+held8", "sparsegpt-50pct": "pm-rw+guard+held8"}
"""Each pruner's default setting in the configs (others: ``PER_LAYER``)."""
README_EXTRA = {"magnitude-2of4": ("pm+perm+guard",)}
"""Measured rows the README shows beside a pruner's default (the magnitude default's judge has
no run at this protocol yet: the same rotations without it)."""
README_SETTINGS = ("plain", "dr", "dr-released", "shared-rw", "shared-rw+held8")
"""The README's rows besides each pruner's default: the plain pruner, the paper's method, the
authors' released code and the standard checkpoint, without and with the held-out windows of the
configs (every row: docs/benchmarks.md)."""


def pruner_tables(rows: list[dict], pruners: dict[str, tuple[str, str]]) -> list[str]:
    """One table per pruner: every setting's perplexity, gap closed, layer error, what the guard
    and the permutations kept, minutes per run."""
    lines: list[str] = []
    for pruner, (method, pattern) in pruners.items():
        sub = [r for r in rows if r["pruner"] == pruner]
        if not sub:
            continue
        lines += [f"**{method} {pattern}**", "",
                  "| setting | seeds | perplexity | gap closed % | held-out domain: perplexity "
                  "| held-out domain: gap closed % | mean layer error "
                  "| rotated layers kept | permutations kept | min/run |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sub:
            kept = r["rotated_layers_kept"]
            kept = f"{statistics.fmean(kept):.1f} / 30" if kept else "-"
            perms = r["permutations_kept"]
            perms = f"{statistics.fmean(perms):.1f} / 90" if perms else "-"
            closed = "-" if r["setting"] == "plain" else mean_std(r["gap_closed"], 100, 1)
            held_ppl, held_closed = held_out(r)
            lines.append(f"| {r['label']} | {','.join(r['seeds'])} | {mean_std(r['ppl'])} | "
                         f"{closed} | {held_ppl} | {held_closed} | "
                         f"{mean_std(r['layer_error'], digits=4)} | {kept} | {perms} | "
                         f"{r['minutes']:.0f} |")
        lines.append("")
    return lines


def readme_table(rows: list[dict], pruners: dict[str, tuple[str, str]], dense_ppl: float,
                 labels: dict[str, str]) -> list[str]:
    """The README's results: per pruner, the plain pruner, the paper's method, the authors' released
    objective, the default (bold; a line saying so where it has no run) and the standard
    checkpoint, where measured. ``labels``: each setting's name."""
    lines = [f"Default model, dense perplexity {dense_ppl:.2f}; mean ± std over the seeds listed; gap "
             "closed = (plain − ppl) / (plain − dense) against the plain pruner of the same seed; "
             "held-out domain = the same on U.S. State of the Union addresses (`speeches`, a "
             "domain the calibration never saw; '–' where not measured yet); "
             "layer error = ‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖ averaged over the 30 layers. "
             "Generated by `python benchmarks/quality.py report` from "
             "`benchmarks/results/quality.json` (every setting: `docs/benchmarks.md`).", "",
             "| pruner | setting | seeds | perplexity | gap closed | held-out domain: gap closed "
             "| mean layer error |", "|---|---|---|---|---|---|---|"]
    for pruner, (method, pattern) in pruners.items():
        default = DEFAULT_SETTING.get(pruner, PER_LAYER)
        shown = README_SETTINGS + README_EXTRA.get(pruner, ()) + (default,)
        mine = [r for r in rows if r["pruner"] == pruner and r["setting"] in shown]
        for r in mine:
            closed = "–" if r["setting"] == "plain" else _value(r["gap_closed"], 100, 1) + "%"
            ppl = _value(r["ppl"])
            name = r["label"]
            held_closed = held_out(r, "%")[1]
            held_closed = "–" if held_closed == "-" else held_closed
            if r["setting"] == default:
                name, ppl, closed = f"**{name} (default)**", f"**{ppl}**", f"**{closed}**"
                held_closed = held_closed if held_closed == "–" else f"**{held_closed}**"
            lines.append(f"| {method} {pattern} | {name} | {', '.join(r['seeds'])} | {ppl} | "
                         f"{closed} | {held_closed} | {statistics.fmean(r['layer_error']):.3f} |")
        if mine and not any(r["setting"] == default for r in mine):
            lines.append(f"| {method} {pattern} | **{labels[default]} (default)** | – | "
                         "not measured at this protocol yet | – | – | – |")
    return lines


def layer_table(means: dict[str, dict]) -> list[str]:
    """Per-layer pruning error, one column per setting (``means``: column label → its means)."""
    if not means:
        return []
    n_layers = len(next(iter(means.values()))["mean"])
    lines = ["| layer | " + " | ".join(means) + " |", "|---" * (len(means) + 1) + "|"]
    for i in range(n_layers):
        lines.append(f"| {i} | " + " | ".join(f"{m['mean'][i]:.4f}" for m in means.values()) + " |")
    return lines
