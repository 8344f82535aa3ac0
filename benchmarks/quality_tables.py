"""Tables of the quality report built from its summary rows (benchmarks/quality.py)."""

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
