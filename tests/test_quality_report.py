"""benchmarks/quality.py report: archived per-seed records and new runs add up; a new run replaces
the archived record of its seed; gap closed uses the plain pruner of the same seed."""

import importlib.util
import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)

DENSE = 10.0


def fake_results(ppl: float, errors: list[float], guard: list[str] | None = None,
                 dense: float = DENSE) -> dict:
    layers = [{"pruning_error": e, **({"guard": g} if guard else {})}
              for e, g in zip(errors, guard or [None] * len(errors), strict=True)]
    return {"ppl": {"embedded": ppl}, "dense_ppl": {"embedded": dense}, "layers": layers,
            "seconds": 600.0, "device": "cpu (test)"}


def write_run(runs: Path, pruner: str, setting: str, seed: int, results: dict) -> None:
    path = runs / pruner / setting / f"s{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))


def test_report_merges_archive_and_runs(tmp_path, monkeypatch):
    runs, doc, out = tmp_path / "runs", tmp_path / "bench.md", tmp_path / "quality.json"
    monkeypatch.setattr(quality, "RUNS", runs)
    p = "sparsegpt-2of4"
    # first session: plain and dr+guard, seeds 0-1
    for seed, (plain, dr) in enumerate([(20.0, 16.0), (22.0, 18.0)]):
        write_run(runs, p, "plain", seed, fake_results(plain, [0.3, 0.4]))
        write_run(runs, p, "dr+guard", seed, fake_results(dr, [0.2, 0.3], ["rotated", "identity"]))
    quality.report(doc, out, tmp_path / "README.md")
    # second session: the old run directories are gone; seed 2 runs, and seed 1 of dr+guard again
    runs = tmp_path / "runs2"
    monkeypatch.setattr(quality, "RUNS", runs)
    write_run(runs, p, "plain", 2, fake_results(30.0, [0.5, 0.5]))
    write_run(runs, p, "dr+guard", 2, fake_results(20.0, [0.25, 0.35], ["rotated", "rotated"]))
    write_run(runs, p, "dr+guard", 1, fake_results(14.0, [0.1, 0.1], ["rotated", "rotated"]))
    quality.report(doc, out, tmp_path / "README.md")
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["plain"]["seeds"] == ["0", "1", "2"] and rows["dr+guard"]["seeds"] == ["0", "1", "2"]
    closed = rows["dr+guard"]["gap_closed"]
    assert closed == pytest.approx([(20 - 16) / (20 - DENSE), (22 - 14) / (22 - DENSE),
                                    (30 - 20) / (30 - DENSE)])
    assert rows["dr+guard"]["rotated_layers_kept"] == [1, 2, 2]
    text = doc.read_text()
    assert f"{statistics.fmean(closed) * 100:.1f} ± {statistics.stdev(closed) * 100:.1f}" in text
    # per-layer table: plain's three seeds all carry their per-layer errors
    assert "| 0 | 0.3667 |" in text


def test_report_without_runs_or_archive_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "RUNS", tmp_path / "none")
    with pytest.raises(SystemExit, match="no finished runs"):
        quality.report(tmp_path / "bench.md", tmp_path / "quality.json", tmp_path / "README.md")


def test_runs_from_another_arithmetic_pair_with_their_own_plain_run(tmp_path, monkeypatch):
    """A machine whose rounding differs (other dense perplexity) keeps its own records; its runs
    are compared with its own plain run of the seed when there is one, else with the first one's."""
    runs, doc, out = tmp_path / "runs", tmp_path / "bench.md", tmp_path / "quality.json"
    monkeypatch.setattr(quality, "RUNS", runs)
    p = "wanda-2of4"
    write_run(runs, p, "plain", 1, fake_results(20.0, [0.3]))
    quality.report(doc, out, tmp_path / "README.md")
    runs = tmp_path / "runs2"
    monkeypatch.setattr(quality, "RUNS", runs)
    other = DENSE + 1e-4
    write_run(runs, p, "plain", 1, fake_results(24.0, [0.3], dense=other))
    write_run(runs, p, "dr", 1, fake_results(18.0, [0.2], dense=other))
    write_run(runs, p, "dr", 2, fake_results(18.0, [0.2], dense=other))  # no plain of seed 2
    quality.report(doc, out, tmp_path / "README.md")
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["plain"]["seeds"] == ["1", "1b"] and rows["plain"]["ppl"] == [20.0, 24.0]
    assert rows["dr"]["seeds"] == ["1b", "2b"]
    assert rows["dr"]["gap_closed"] == pytest.approx([(24 - 18) / (24 - other)])
    assert "'b' 10.00010" in doc.read_text()


def test_side_by_side_compares_shared_with_the_per_layer_default(tmp_path, monkeypatch):
    runs, doc, out = tmp_path / "runs", tmp_path / "bench.md", tmp_path / "quality.json"
    monkeypatch.setattr(quality, "RUNS", runs)
    p = "wanda-2of4"
    for seed in (0, 1):
        write_run(runs, p, "plain", seed, {**fake_results(30.0, [0.5]), "memory": {"peak_rss_mib": 100}})
        per_layer = fake_results(14.0, [0.2])  # closes 80% of the gap
        per_layer["layers"][0]["fit_seconds"] = 40.0 + seed
        write_run(runs, p, "pm-rw+guard", seed, {**per_layer, "memory": {"peak_rss_mib": 200}})
        shared = fake_results(22.0, [0.3])  # closes 40%
        shared["export"] = {"shared_rotation": {"fit_seconds": 10.0,
                                                "model_guard": {"kept": "shared", "seconds": 5.0}}}
        write_run(runs, p, "shared", seed, {**shared, "memory": {"peak_rss_mib": 300}})
    quality.report(doc, out, tmp_path / "README.md")
    table = doc.read_text()
    assert "| wanda-2of4 | per layer (default) | 0,1 | 14.00 ± 0.00 | 80.0 ± 0.0 | - | 40 (n=2) " \
           "| 200 (n=2) |" in table  # 40.5 s rounds to 40
    assert "| wanda-2of4 | shared, equal role weights | 0,1 | 22.00 ± 0.00 | 40.0 ± 0.0 | 0.50 " \
           "| 15 (n=2) | 300 (n=2) |" in table
    assert "| wanda-2of4 | none (plain pruner) | 0,1 | 30.00 ± 0.00 | - | - | - | 100 (n=2) |" in table
    records = json.loads(out.read_text())["records"]
    assert sorted(r["rotation_seconds"] or 0 for r in records) == [0, 0, 15.0, 15.0, 40.0, 41.0]


def test_readme_and_docs_show_the_numbers_of_the_records():
    """No hand-copied quality number: README's and docs' tables are what the records give."""
    assert quality.drift(ROOT / "docs" / "benchmarks.md", ROOT / "benchmarks" / "results" / "quality.json",
                         ROOT / "README.md") == []


def test_a_hand_edited_number_is_drift(tmp_path):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"\*\*(\d+\.\d) ± (\d+\.\d)%\*\*", text)  # a default's gap closed
    assert shown, "the README's results table shows no default row"
    edited = f"**{float(shown.group(1)) + 2:.1f} ± {shown.group(2)}%**"
    readme.write_text(text.replace(shown.group(0), edited, 1), encoding="utf-8")
    found = quality.drift(ROOT / "docs" / "benchmarks.md",
                          ROOT / "benchmarks" / "results" / "quality.json", readme)
    assert len(found) == 1 and "quality-readme" in found[0]


def test_readme_marks_the_default_and_says_when_it_has_no_run(tmp_path, monkeypatch):
    """The default's cells are bold on both domains; a pruner whose configs' default has no run
    says so instead of calling another row the default."""
    runs, doc, out, readme = (tmp_path / "runs", tmp_path / "bench.md", tmp_path / "quality.json",
                              tmp_path / "README.md")
    monkeypatch.setattr(quality, "RUNS", runs)
    readme.write_text("<!-- quality-readme:begin -->\n<!-- quality-readme:end -->\n")
    both = {"embedded": DENSE, "speeches": 20.0}
    write_run(runs, "wanda-2of4", "plain", 0,
              {**fake_results(30.0, [0.5]), "ppl": {"embedded": 30.0, "speeches": 120.0},
               "dense_ppl": both})
    write_run(runs, "wanda-2of4", "pm-rw+guard+held8", 0,
              {**fake_results(14.0, [0.2]), "ppl": {"embedded": 14.0, "speeches": 40.0},
               "dense_ppl": both})
    write_run(runs, "magnitude-2of4", "plain", 0, fake_results(900.0, [0.6]))
    write_run(runs, "magnitude-2of4", "pm+perm+guard", 0, fake_results(800.0, [0.5]))
    quality.report(doc, out, readme)
    text = readme.read_text()
    assert "| **14.00** | **80.0%** | **80.0%** | 0.200 |" in text  # (30-14)/20, (120-40)/100
    assert "| magnitude 2:4 | DR, pruned mass + permutation + guard | 0 | 800.00 | 11.2% |" in text
    default = quality.SETTINGS["pm+perm+guard+held8+judge"][0]
    assert f"| magnitude 2:4 | **{default} (default)** | – | not measured at this protocol yet |" \
        in text
