"""The README's Python API example runs as written, on the real embedded model (slow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"),
                                    flags=re.S) if "drlightning.prune(" in b]
    assert len(blocks) == 1, "the README has one drlightning.prune example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert re.search(r"dense \d+\.\d+, plain \d+\.\d+, DenoiseRotator \d+\.\d+: -?\d+% of the gap", out)
    dense, plain, dr = namespace["dense"], namespace["p"], namespace["d"]
    assert dense < dr < plain  # the rotations help the plain Wanda 2:4 pruner on the real model
    assert list(tmp_path.iterdir()) == []  # no run directory
