"""Never worse than the plain pruner? Every pruner × pattern at short settings, on two domains.

    python benchmarks/short_settings.py run --worker 0/2 &     # two single-thread workers
    python benchmarks/short_settings.py run --worker 1/2 &
    python benchmarks/short_settings.py report                 # table → docs/benchmarks.md

Short settings: each smollm2 config with 8 × 256 calibration tokens and 20 rotation steps per layer
(as a user trying things quickly would run it), 16 evaluation windows of each domain — the
embedded split (the calibration's own domain, Python's documentation) and ``speeches`` (U.S. State
of the Union addresses, a domain the calibration never saw). Per (pruner, pattern): ``plain``
(0 steps, no permutation), ``default`` (the config's rotation settings, without its extra
held-out windows and judge), ``holdout`` (the config with
``model.holdout: 0.25``: the guard judges on 2 calibration windows no fit saw) and
``plain-holdout`` (the plain pruner fitted without those 2 windows, to compare both final models
on them). 1 BLAS thread per
run. Runs live in ``runs/short/<config>/<setting>`` (a finished one is skipped); ``report`` keeps
their numbers in ``benchmarks/results/short_settings.json``, so they count after the runs are gone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblock import write_block  # noqa: E402
from quick_path import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(os.environ.get("DRL_SHORT_RUNS", ROOT / "runs" / "short"))
RECORDS = ROOT / "benchmarks" / "results" / "short_settings.json"
CONFIGS = [f"{m}-{p}" for p in ("2of4", "4of8", "50pct") for m in ("magnitude", "wanda", "sparsegpt")]
SETTINGS = {"plain": ["--model.steps", "0", "--model.permute", "false"],
            "judged": ["--model.steps", "20", "--model.holdout", "0.25", "--run.judge", "true"],
            "default": ["--model.steps", "20"],
            "holdout": ["--model.steps", "20", "--model.holdout", "0.25"],
            "plain-holdout": ["--model.steps", "0", "--model.permute", "false",
                              "--model.holdout", "0.25"],
            "plain-refit": ["--model.steps", "0", "--model.permute", "false", "--model.refit", "rows"],
            "default-refit": ["--model.steps", "20", "--model.refit", "rows"],
            "plain-mix": ["--model.steps", "0", "--model.permute", "false", "--data.source", "mix"],
            "default-mix": ["--model.steps", "20", "--data.source", "mix"],
            "default-extra2": ["--model.steps", "20", "--data.held_out", "2"],
            "judged-extra2": ["--model.steps", "20", "--data.held_out", "2", "--run.judge", "true"],
            "default-extra2-best": ["--model.steps", "20", "--data.held_out", "2",
                                    "--model.best_on", "held_out"],
            "plain-layerfit": ["--model.steps", "0", "--model.permute", "false", "--model.refit",
                               "layer", "--data.held_out", "2"],
            "default-layerfit": ["--model.steps", "20", "--model.refit", "layer",
                                 "--data.held_out", "2"],
            "plain-admm": ["--model.steps", "0", "--model.permute", "false", "--model.refit", "admm"],
            "default-admm": ["--model.steps", "20", "--model.refit", "admm"]}
"""In the order the workers take them (every config's plain run first, then the judged ones)."""
PINNED = ["--data.held_out", "0", "--run.judge", "false", "--model.best_on", "fitted"]
"""Before each setting's own arguments: the configs' extra held-out windows, the judge and the
held-out choice of each fit's iterate off, so ``default`` stays the setting these rows measured
(settings that want them set them again)."""
SHORT = ["--data.nsamples", "8", "--data.seqlen", "256", "--run.eval.max_windows", "16",
         "--run.eval.zero_shot", "[]", "--run.eval.data", "[embedded,speeches]",
         "--run.export.save", "false", "--run.monitor.tensorboard", "false",
         "--run.monitor.progress", "false"]


def jobs(settings: list[str] | None = None, configs: list[str] | None = None) -> list[tuple[str, str]]:
    return [(c, s) for s in settings or SETTINGS for c in configs or CONFIGS]


def run(worker: int, workers: int, settings: list[str] | None = None,
        configs: list[str] | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",  # this checkout's code
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for i, (config, setting) in enumerate(jobs(settings, configs)):
        out = RUNS / config / setting
        if i % workers != worker or (out / "results.json").is_file():
            continue
        config_file = ROOT / "configs" / "smollm2" / f"{config}.yaml"
        cmd = [sys.executable, "-m", "drlightning.cli", "fit", "--config", str(config_file),
               *PINNED, *SETTINGS[setting], *SHORT, "--run.output_dir", str(out)]
        print(f"[{worker}] {config} {setting}", flush=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)


def record(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    kept = [layer.get("guard") for layer in res["layers"] if "guard" in layer]
    return {"ppl": res["ppl"], "dense_ppl": res["dense_ppl"], "minutes": res["seconds"] / 60,
            "held_out_ppl": res["calibration"].get("held_out_ppl"),
            "judge": res.get("judge"),
            "rotated_kept": sum(k != "unrotated" for k in kept) if kept else None,
            "layers": len(res["layers"]), "device": res["device"], "machine": machine()}


def _cell(rec: dict | None, domain: str, plain: float) -> str:
    if rec is None:
        return "–"
    return f"{rec['ppl'][domain]:.2f} ({rec['ppl'][domain] / plain:.2f})"


def _kept(rec: dict | None) -> str:
    if rec is None or rec["rotated_kept"] is None:
        return "–"
    return f"{rec['rotated_kept']}/{rec['layers']}"


def _verdict(rec: dict | None) -> str:
    """What the judge kept, with both models' perplexity on the held-out calibration windows."""
    judge = (rec or {}).get("judge")
    if not judge:
        return "–"
    held = judge["held_out_ppl"]
    return (f"{'plain' if judge['kept'] == 'plain' else 'DR'} "
            f"({held['plain']:.1f} vs {held['denoiserotator']:.1f})")


def table(records: dict) -> str:
    rows = ["| config | domain | dense | plain | default (÷ plain) | judged (÷ plain) | judge kept "
            "(held-out windows: plain vs DR) | rotated layers kept (default) |",
            "|---|---|---|---|---|---|---|---|"]
    for config in CONFIGS:
        recs = {s: records.get(f"{config}/{s}") for s in SETTINGS}
        if recs["plain"] is None:
            continue
        for domain in recs["plain"]["ppl"]:
            plain = recs["plain"]["ppl"][domain]
            first = domain == "embedded"
            rows.append(f"| {config} | {domain} | {recs['plain']['dense_ppl'][domain]:.2f} | "
                        f"{plain:.2f} | {_cell(recs['default'], domain, plain)} | "
                        f"{_cell(recs['judged'], domain, plain)} | "
                        f"{_verdict(recs['judged']) if first else ''} | "
                        f"{_kept(recs['default']) if first else ''} |")
    return "\n".join(rows)


OTHERS = {"holdout": "default, `model.holdout: 0.25` (guard on 2 of the 8 windows)",
          "plain-holdout": "plain, fitted without those 2 windows",
          "default-extra2": "default, `data.held_out: 2` (guard on 2 extra windows)",
          "judged-extra2": "default, `data.held_out: 2` + `run.judge: true`",
          "default-extra2-best": "default, `data.held_out: 2`, each fit's iterate kept on them "
                                 "(`model.best_on: held_out`)",
          "plain-layerfit": "plain + layer refit (`model.refit: layer`, `data.held_out: 2`)",
          "default-layerfit": "default + layer refit (`data.held_out: 2`)",
          "plain-admm": "plain + mask-and-weights alternation (`model.refit: admm`)",
          "default-admm": "default + mask-and-weights alternation",
          "plain-refit": "plain + row refit (`model.refit: rows`)",
          "default-refit": "default + row refit",
          "plain-mix": "plain, calibrated on `mix` (documentation + fiction)",
          "default-mix": "default, calibrated on `mix`"}


def others_table(records: dict) -> str:
    """The other settings, where run: each domain's perplexity and its ratio to plain."""
    rows = ["| config | setting | embedded (÷ plain) | speeches (÷ plain) |", "|---|---|---|---|"]
    for config in CONFIGS:
        plain = records.get(f"{config}/plain")
        for setting, name in OTHERS.items():
            rec = records.get(f"{config}/{setting}")
            if rec is None or plain is None:
                continue
            cells = " | ".join(_cell(rec, d, plain["ppl"][d]) for d in plain["ppl"])
            rows.append(f"| {config} | {name} | {cells} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def report() -> None:
    records = json.loads(RECORDS.read_text()) if RECORDS.is_file() else {}
    for config, setting in jobs():
        out = RUNS / config / setting
        if (out / "results.json").is_file():
            records[f"{config}/{setting}"] = record(out)
    RECORDS.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    some = next(iter(records.values()), None)
    head = ("Every pruner × pattern at short settings (8 × 256 calibration tokens, 20 steps, 16 "
            "evaluation windows per domain; `embedded` is the calibration's own domain, "
            "`speeches` one it never saw), 1 BLAS thread per run"
            + (f", {some['machine']}" if some else "") + ". Command: "
            "`python benchmarks/short_settings.py run --worker 0/2 & … 1/2; python "
            "benchmarks/short_settings.py report`. Ratios above 1: worse than the plain pruner. "
            "`plain`: steps 0, no permutation; `default`: the config's rotation settings "
            "(without the configs' extra held-out windows and judge), 20 steps; "
            "`judged`: the default with `model.holdout: 0.25` and `run.judge: true` — the plain "
            "pruner and DenoiseRotator both fitted on 6 windows, the model with the lower "
            "perplexity on the other 2 kept.")
    text = head + "\n\n" + table(records)
    others = others_table(records)
    if others:
        text += "\n\nOther settings (ratios to the plain pruner of the same config):\n\n" + others
    write_block(ROOT / "docs" / "benchmarks.md", "shortsettings",
                "Short settings: never worse than the plain pruner?", text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--worker", default="0/1")
    r.add_argument("--settings", nargs="+", choices=list(SETTINGS), help="only these settings")
    r.add_argument("--configs", nargs="+", choices=CONFIGS, help="only these configs")
    sub.add_parser("report")
    args = p.parse_args()
    if args.cmd == "run":
        worker, workers = (int(x) for x in args.worker.split("/"))
        run(worker, workers, args.settings, args.configs)
    else:
        report()


if __name__ == "__main__":
    main()
