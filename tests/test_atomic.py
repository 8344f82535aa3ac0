"""Atomic writes: normal (umask-based) permissions, nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import pytest

from drlightning.atomic import atomic_write_text, write_dir_atomically


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_follow_the_umask_like_plain_open_and_mkdir(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.json", "{}")
    assert _mode(tmp_path / "a.json") == file_mode

    def write(d):
        (d / "inner.txt").write_text("x")

    out = write_dir_atomically(tmp_path / "model", write)
    assert _mode(out) == dir_mode
    assert _mode(out / "inner.txt") == file_mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")

    def boom(d):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(tmp_path / "model", boom)
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
