"""Helpers for the CLI's user errors: exit status 2, one ``error:`` line, no traceback, and the
run directory left exactly as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from drlightning.cli import main


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def fails_cleanly(capsys, args: list[str], *expected: str) -> tuple[str, str]:
    """Run ``drlightning args`` in-process; it must exit with 2 and print one ``error:`` line
    (holding every ``expected`` piece) and no traceback. Returns that line and the stdout."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])
    return lines[0], out
