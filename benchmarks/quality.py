"""Seeded quality protocol on the embedded default model: what each addition buys, mean ± std.

    python benchmarks/quality.py run --worker 0/2 &     # two single-thread workers side by side
    python benchmarks/quality.py run --worker 1/2 &
    python benchmarks/quality.py report                  # tables → docs/benchmarks.md, README.md
    python benchmarks/quality.py check                   # exit 1 if they show other numbers

Every (pruner, setting, calibration seed) is one ``drlightning fit`` of the smollm2 config of that
pruner, with every rotation setting given explicitly (so the table does not move when the configs'
defaults do), zero-shot off, on 1 BLAS thread (recorded). Runs live in
``runs/quality/<pruner>/<setting>/s<seed>``; a finished run is skipped and an interrupted one
resumes, so the command can be re-run at any time. ``report`` compares each setting with the plain
pruner of the same seed: gap closed = (plain − ppl) / (plain − dense), then mean ± standard
deviation over the seeds, beside the mean layer pruning error ‖pruned(X) − dense(X)‖ /
‖dense(X) − X‖ (averaged over layers). Perplexity: the whole embedded evaluation split.

``report`` also keeps one record per finished (pruner, setting, seed) in
``benchmarks/results/quality.json`` and reads them back next time, so runs made on other machines or
in earlier sessions still count after their run directories are gone; a run found under the runs
directory replaces the archived record of the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblock import read_block, write_block  # noqa: E402
from quality_records import (  # noqa: E402
    HELD_OUT,
    Record,
    from_run,
    key,
    label,
    load_archive,
    machine_note,
    machines,
    plain_for,
    select,
)
from quality_tables import layer_table, pruner_tables, readme_table, side_by_side  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(os.environ.get("DRL_QUALITY_RUNS", ROOT / "runs" / "quality"))
"""Where the runs live (``DRL_QUALITY_RUNS`` overrides it, e.g. to report on runs made elsewhere)."""
PAPER = {"objective": "entropy", "rotation_score": "pruner", "permute": False, "guard": False,
         "reference_quirks": False, "best_on": "fitted"}
SETTINGS: dict[str, tuple[str, dict]] = {
    "plain": ("plain pruner", {**PAPER, "steps": 0}),
    "plain+perm": ("plain + permutation", {**PAPER, "steps": 0, "permute": True}),
    "plain+refit": ("plain + row refit (damping 0.01)", {**PAPER, "steps": 0, "refit": "rows",
                                                          "refit_damping": 0.01}),
    "plain+refit0.1": ("plain + row refit (damping 0.1)", {**PAPER, "steps": 0, "refit": "rows",
                                                           "refit_damping": 0.1}),
    "dr": ("DR, paper objective (entropy, float32)", {**PAPER, "steps": 50}),
    "dr-released": ("DR as the authors released it (reference_quirks)",
                    {**PAPER, "steps": 50, "reference_quirks": True}),
    "dr+guard": ("DR + guard", {**PAPER, "steps": 50, "guard": True}),
    "dr+perm": ("DR + permutation", {**PAPER, "steps": 50, "permute": True}),
    "pm": ("DR, pruned-mass objective", {**PAPER, "steps": 50, "objective": "pruned_mass"}),
    "pm+guard": ("DR, pruned mass + guard",
                 {**PAPER, "steps": 50, "objective": "pruned_mass", "guard": True}),
    "pm+perm+guard": ("DR, pruned mass + permutation + guard",
                      {**PAPER, "steps": 50, "objective": "pruned_mass", "permute": True,
                       "guard": True}),
    "pm+perm+guard+held8+judge": ("DR, pruned mass + permutation + guard and the model-wide judge "
                                  "on 8 extra held-out windows (the magnitude configs)",
                                  {**PAPER, "steps": 50, "objective": "pruned_mass", "permute": True,
                                   "guard": True, "data.held_out": 8, "run.judge": True}),
    "pm-rw+guard": ("DR, pruned mass weighted by the measured role errors + guard",
                    {**PAPER, "steps": 50, "objective": "pruned_mass", "guard": True,
                     "role_weights": "measured"}),
    "pm-rw+guard+held8": ("DR, pruned mass weighted by the measured role errors + guard on 8 "
                          "extra held-out windows (its layer error is on those windows)",
                          {**PAPER, "steps": 50, "objective": "pruned_mass", "guard": True,
                           "role_weights": "measured", "data.held_out": 8}),
    "pm-rw+guard+held8+best": ("DR default with each fit's iterate and the guard chosen on 8 extra "
                               "held-out windows (`model.best_on: held_out`)",
                               {**PAPER, "steps": 50, "objective": "pruned_mass", "guard": True,
                                "role_weights": "measured", "data.held_out": 8,
                                "best_on": "held_out"}),
    "pm-rw+guard+mix": ("DR default calibrated on the mix (documentation + fiction; the speeches "
                        "stay held out)",
                        {**PAPER, "steps": 50, "objective": "pruned_mass", "guard": True,
                         "role_weights": "measured", "data.source": "mix"}),
    "plain+admm": ("plain + mask-and-weights alternation (admm)",
                   {**PAPER, "steps": 0, "refit": "admm"}),
    "plain+layer": ("plain + whole-layer refit (8 extra held-out windows stop it)",
                    {**PAPER, "steps": 0, "refit": "layer", "data.held_out": 8}),
    "pm-rw+guard+held8+layer": ("DR default + whole-layer refit (guard and refit on 8 extra "
                                "held-out windows)",
                                {**PAPER, "steps": 50, "objective": "pruned_mass", "guard": True,
                                 "role_weights": "measured", "refit": "layer",
                                 "data.held_out": 8}),
    "pm-rw+guard+refit": ("DR default + row refit (damping 0.01)",
                          {**PAPER, "steps": 50, "objective": "pruned_mass", "guard": True,
                           "role_weights": "measured", "refit": "rows", "refit_damping": 0.01}),
    "shared": ("DR with one shared R1 (standard checkpoint), pruned mass (equal role weights) + "
               "permutation + guard",
               {**PAPER, "steps": 50, "objective": "pruned_mass", "permute": True, "guard": True,
                "r1": "shared", "role_weights": "equal"}),
    "shared-rw": ("DR with one shared R1, pruned mass weighted by the measured role errors of every "
                  "layer + permutation + guard (the shared default)",
                  {**PAPER, "steps": 50, "objective": "pruned_mass", "permute": True, "guard": True,
                   "r1": "shared", "role_weights": "measured"}),
    "shared-rw+held8": ("DR with one shared R1 as `shared-rw`, the model-wide guard and the "
                        "per-layer guard on 8 extra held-out windows",
                        {**PAPER, "steps": 50, "objective": "pruned_mass", "permute": True,
                         "guard": True, "r1": "shared", "role_weights": "measured",
                         "data.held_out": 8}),
    "shared-rw+held8+best": ("DR with one shared R1 as `shared-rw+held8`, its iterate kept on the "
                             "held-out windows (`best_on: held_out`)",
                             {**PAPER, "steps": 50, "objective": "pruned_mass", "permute": True,
                              "guard": True, "r1": "shared", "role_weights": "measured",
                              "data.held_out": 8, "best_on": "held_out"}),
    "shared-200": ("DR with one shared R1 as `shared` (equal role weights), 200 steps",
                   {**PAPER, "steps": 200, "objective": "pruned_mass", "permute": True,
                    "guard": True, "r1": "shared", "role_weights": "equal"}),
}
PRUNERS = {"sparsegpt-2of4": ("sparsegpt", "2:4"), "wanda-2of4": ("wanda", "2:4"),
           "sparsegpt-4of8": ("sparsegpt", "4:8"), "sparsegpt-50pct": ("sparsegpt", "50%"),
           "magnitude-2of4": ("magnitude", "2:4")}
PLAN = [
    # (pruner, settings, seeds), in the order the workers take them: the headline rows first
    # (the refits: issue 32; run them with --only until they have runs on every seed)
    ("sparsegpt-2of4", ["plain", "dr", "dr-released", "pm+perm+guard", "pm-rw+guard"], [0, 1, 2]),
    ("wanda-2of4", ["plain", "dr", "pm+perm+guard", "pm-rw+guard"], [0, 1, 2]),
    ("sparsegpt-2of4", ["plain+perm", "dr+guard", "dr+perm"], [0, 1, 2]),
    ("wanda-2of4", ["plain+perm", "dr-released", "dr+guard", "dr+perm"], [0, 1, 2]),
    ("sparsegpt-4of8", ["plain", "pm+perm+guard", "pm-rw+guard", "pm-rw+guard+held8"], [0, 1, 2]),
    ("sparsegpt-50pct", ["plain", "pm+guard", "pm-rw+guard"], [0, 1, 2]),
    ("magnitude-2of4", ["plain", "dr", "pm+perm+guard"], [0, 1, 2]),
    ("sparsegpt-2of4", ["shared", "shared-rw"], [0, 1, 2]),
    ("wanda-2of4", ["shared", "shared-rw"], [0, 1, 2]),
    ("sparsegpt-50pct", ["shared-rw"], [0, 1, 2]),
    ("sparsegpt-4of8", ["dr"], [0, 1, 2]),
    ("sparsegpt-50pct", ["dr"], [0, 1, 2]),
    ("sparsegpt-2of4", ["plain+refit", "plain+refit0.1", "pm-rw+guard+refit"], [0, 1, 2]),
    ("sparsegpt-2of4", ["pm-rw+guard+held8"], [0, 1, 2]),
    ("wanda-2of4", ["pm-rw+guard+held8"], [0, 1, 2]),
    ("sparsegpt-2of4", ["shared-rw+held8", "shared-rw+held8+best"], [0, 1, 2]),
    ("sparsegpt-2of4", ["pm-rw+guard+held8+best"], [0, 1, 2]),
    ("sparsegpt-50pct", ["pm-rw+guard+held8"], [0, 1, 2]),
    ("wanda-2of4", ["shared-rw+held8"], [0, 1, 2]),
    ("magnitude-2of4", ["pm+perm+guard+held8+judge"], [0, 1, 2]),
    ("sparsegpt-2of4", ["pm-rw+guard+mix", "plain+admm", "plain+layer", "pm-rw+guard+held8+layer"],
     [0, 1, 2]),
]


def run_dir(pruner: str, setting: str, seed: int) -> Path:
    return RUNS / pruner / setting / f"s{seed}"


def jobs() -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    for pruner, settings, seeds in PLAN:
        out += [(pruner, s, seed) for seed in seeds for s in settings if (pruner, s, seed) not in out]
    return out


def command(pruner: str, setting: str, seed: int) -> list[str]:
    overrides = SETTINGS[setting][1]
    args = [sys.executable, "-m", "drlightning.cli", "fit",
            "--config", str(ROOT / "configs" / "smollm2" / f"{pruner}.yaml"),
            "--data.seed", str(seed), "--run.output_dir", str(run_dir(pruner, setting, seed)),
            "--run.eval.zero_shot", "[]", "--run.eval.data", f"[embedded,{HELD_OUT}]",
            "--run.monitor.tensorboard", "false",
            "--run.monitor.progress", "false",
            "--data.held_out", "0", "--run.judge", "false"]  # as before the configs drew them
    for option, value in overrides.items():
        name = option if "." in option else f"model.{option}"  # bare names are model settings
        args += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def run(worker: int, workers: int, only: list[str] | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo = jobs()
    if only:
        todo = [(p, s, int(seed)) for p, s, seed in (job.split(":") for job in only)]
        unknown = [j for j in todo if j[0] not in PRUNERS or j[1] not in SETTINGS]
        if unknown:
            raise SystemExit(f"unknown jobs {unknown}; pruners: {', '.join(PRUNERS)}; "
                             f"settings: {', '.join(SETTINGS)}")
    for i, (pruner, setting, seed) in enumerate(todo):
        out = run_dir(pruner, setting, seed)
        if i % workers != worker or (out / "results.json").is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with (out / "bench.log").open("w") as log:
            subprocess.run(command(pruner, setting, seed), env=env, stdout=log, stderr=log, check=True)
        print(json.dumps({"run": str(out), "minutes":
                          round((time.perf_counter() - start) / 60, 1)}), flush=True)


def collect(archive: dict[tuple, Record]) -> dict[tuple, Record]:
    """Archived records, overridden by every finished run under ``RUNS``: runs made in different
    places or sessions add up instead of replacing each other (a run replaces the record of the same
    seed made with the same arithmetic)."""
    records = dict(archive)
    for pruner in PRUNERS:
        for setting in SETTINGS:
            for path in sorted((RUNS / pruner / setting).glob("s*/results.json")):
                seed = int(path.parent.name[1:])
                r = from_run(pruner, setting, seed, json.loads(path.read_text()))
                records[key(r)] = r
    return records


def summary_rows(records: dict[tuple, Record], pruner: str) -> list[dict]:
    arith = machines(records)
    plain = select(records, pruner, "plain")
    rows = []
    for setting, (name, _) in SETTINGS.items():
        found = select(records, pruner, setting)
        if not found:
            continue
        pairs = [(r, plain_for(plain, r)) for r in found.values()]
        closed = [(p["ppl"] - r["ppl"]) / (p["ppl"] - r["dense_ppl"]) for r, p in pairs if p]
        held = [(r, p) for r, p in pairs if "held_ppl" in r and p and "held_ppl" in p]
        rows.append({"pruner": pruner, "setting": setting, "label": name,
                     "seeds": [label(r, arith) for r in found.values()],
                     "ppl": [r["ppl"] for r in found.values()], "gap_closed": closed,
                     "held_seeds": [label(r, arith) for r, _ in held],
                     "held_ppl": [r["held_ppl"] for r, _ in held],
                     "held_gap_closed": [(p["held_ppl"] - r["held_ppl"])
                                         / (p["held_ppl"] - r["held_dense_ppl"]) for r, p in held],
                     "layer_error": [r["layer_error"] for r in found.values()],
                     "rotated_layers_kept": [r["rotated_kept"] for r in found.values()
                                             if r["rotated_kept"] is not None],
                     "permutations_kept": [r["perms_kept"] for r in found.values()
                                           if r["perms_kept"] is not None],
                     "minutes": statistics.fmean(r["minutes"] for r in found.values()),
                     "rotation_seconds": [r["rotation_seconds"] for r in found.values()
                                          if r.get("rotation_seconds") is not None],
                     "peak_rss_mib": [r["peak_rss_mib"] for r in found.values()
                                      if r.get("peak_rss_mib") is not None],
                     "device": next(iter(found.values()))["device"]})
    return rows


def layer_means(records: dict[tuple, Record], archived: dict[str, dict], pruner: str,
                setting: str) -> dict | None:
    """Per-layer error averaged over the seeds run on the first machine: from the records when all
    of them carry it, else the archived means if they cover exactly the same seeds, else None
    (column left out)."""
    arith = machines(records)
    first = arith[0]  # one machine for every column, so the columns compare
    found = {k: r for k, r in select(records, pruner, setting).items() if k[1] == first}
    if not found:
        return None
    seeds = [label(r, arith) for r in found.values()]
    if all(r["layer_errors"] for r in found.values()):
        per_layer = zip(*(r["layer_errors"] for r in found.values()), strict=True)
        return {"seeds": seeds, "mean": [statistics.fmean(v) for v in per_layer]}
    old = archived.get(f"{pruner}/{setting}")
    return old if old and [str(s) for s in old["seeds"]] == seeds else None


def render(records: dict[tuple, Record], archived_means: dict[str, dict]) -> dict:
    """Everything the report writes, from the records alone: the docs block (``docs``), the
    README's table (``readme``), the summary ``rows`` and the per-layer ``means``."""
    rows = [row for pruner in PRUNERS for row in summary_rows(records, pruner)]
    if not rows:
        raise SystemExit(f"no finished runs under {RUNS} and no records; "
                         "run `python benchmarks/quality.py run` first")
    dense_ppl = next(iter(records.values()))["dense_ppl"]
    lines = [f"SmolLM2-135M-Instruct (embedded, float32), calibration 32 × 512 embedded tokens, "
             f"seeds as listed (mean ± standard deviation over them), 50 rotation steps per layer, "
             f"perplexity on the whole embedded evaluation split (dense {dense_ppl:.3f}) and, for "
             f"runs made since it was added, on the held-out domain `{HELD_OUT}` (U.S. State of the "
             "Union addresses from 1980 on, first 128 windows: text of a domain the calibration "
             "never saw; gap closed there against the same seed's plain pruner). "
             f"{rows[0]['device']}. Command: `python benchmarks/quality.py run` (two workers), then "
             "`python benchmarks/quality.py report`. Gap closed = (plain − ppl) / (plain − dense) "
             "against the plain pruner of the same seed; layer error = ‖pruned(X) − dense(X)‖ / "
             "‖dense(X) − X‖ on the calibration inputs, averaged over the 30 layers." + machine_note(records),
             ""]
    lines += pruner_tables(rows, PRUNERS)
    side = side_by_side(rows)
    if side:
        lines += ["Per-layer vs shared R1 (standard checkpoint): share of per-layer = the shared "
                  "setting's mean gap closed over the per-layer default's; rotation phase = the "
                  "per-layer fits summed, or the shared phase (dense pass, fit, model-wide guard); "
                  "peak RSS of the whole run (mean over the runs that recorded them, n of them; "
                  "1 thread beside one other single-thread job):", "", *side, ""]
    lines += ["Per-layer pruning error, SparseGPT 2:4 (mean over the unmarked seeds):", ""]
    means = {s: layer_means(records, archived_means, "sparsegpt-2of4", s)
             for s in ["plain", "dr", "dr-released", "pm+perm+guard", "pm-rw+guard", "shared"]}
    means = {s: m for s, m in means.items() if m}
    lines += layer_table({SETTINGS[s][0]: m for s, m in means.items()})
    readme = readme_table(rows, PRUNERS, dense_ppl,
                         {s: name for s, (name, _) in SETTINGS.items()}) + [machine_note(records).strip()]
    return {"docs": "\n".join(lines), "readme": "\n".join(readme), "rows": rows, "means": means}


def report(out: Path, json_out: Path, readme: Path) -> None:
    """Write the tables (docs/benchmarks.md, README.md) and the records (``json_out``)."""
    archive, archived_means = load_archive(json_out)
    records = collect(archive)
    made = render(records, archived_means)
    write_block(out, "quality", "Quality (default model, seeded)", made["docs"])
    write_block(readme, "quality-readme", "Results", made["readme"])
    json_out.parent.mkdir(parents=True, exist_ok=True)
    kept_means = {**archived_means, **{f"sparsegpt-2of4/{s}": m for s, m in made["means"].items()}}
    json_out.write_text(json.dumps({"rows": made["rows"], "records": list(records.values()),
                                    "layer_means": kept_means}, indent=1) + "\n", encoding="utf-8")
    print(made["docs"])


def drift(out: Path, json_out: Path, readme: Path) -> list[str]:
    """The generated blocks that differ from what the records give now (README and docs must
    show the numbers of ``json_out``, not hand-copied ones); [] when none."""
    archive, archived_means = load_archive(json_out)
    made = render(archive, archived_means)
    found = []
    for path, name, text in ((out, "quality", made["docs"]), (readme, "quality-readme", made["readme"])):
        if read_block(path, name) != text:
            found.append(f"{path.name}: block {name!r} differs from {json_out.name}; run "
                         "`python benchmarks/quality.py report`")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the unfinished jobs of this worker")
    r.add_argument("--worker", default="0/1", help="k/n: take every n-th job starting at k")
    r.add_argument("--only", nargs="+", metavar="PRUNER:SETTING:SEED",
                   help="run these jobs (in this order) instead of the plan")
    sub.add_parser("list", help="print the jobs and whether they are finished")
    for name, text in (("report", "write the tables from the finished runs and the records"),
                       ("check", "exit 1 if README or docs show other numbers than the records")):
        rep = sub.add_parser(name, help=text)
        rep.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
        rep.add_argument("--readme", type=Path, default=ROOT / "README.md")
        rep.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    args = p.parse_args()
    if args.cmd == "run":
        k, n = (int(x) for x in args.worker.split("/"))
        run(k, n, args.only)
    elif args.cmd == "list":
        for job in jobs():
            done = (run_dir(*job) / "results.json").is_file()
            print(("done " if done else "todo ") + " ".join(map(str, job)))
    elif args.cmd == "check":
        problems = drift(args.out, args.json, args.readme)
        print("\n".join(problems) or "README and docs match the records")
        raise SystemExit(1 if problems else 0)
    else:
        report(args.out, args.json, args.readme)


if __name__ == "__main__":
    main()
