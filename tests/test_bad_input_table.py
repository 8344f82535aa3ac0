"""Every row of docs/bad_inputs.md: the command exits 2 with its one-line message, no traceback,
and leaves its run directory as it was (the case table is benchmarks/bad_inputs.py, run here
in-process)."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest

from drlightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "benchmarks" / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad_inputs)

WHAT = [case[0] for case in bad_inputs.cases(Path(tempfile.mkdtemp(prefix="drl-bad-ids-")))]


@pytest.mark.parametrize("what", WHAT)
def test_bad_input_gets_one_line_and_leaves_nothing(what, tmp_path, monkeypatch, capsys):
    for name, value in bad_inputs.OFFLINE.items():
        monkeypatch.setenv(name, str(tmp_path / "hf") if name == "HF_HOME" else value)
    monkeypatch.chdir(tmp_path)
    case = {c[0]: c[1:] for c in bad_inputs.cases(tmp_path)}
    expected, argv, *setup = case[what]
    run = bad_inputs.run_dir(argv)
    for make in setup:
        make()
    before = bad_inputs.snapshot(run)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], lines
    assert bad_inputs.changed(before, bad_inputs.snapshot(run)) == []


def test_the_table_has_at_least_80_cases():
    assert len(WHAT) >= 80 and len(set(WHAT)) == len(WHAT)
