"""Atomic writes: normal (umask-based) permissions, nothing left behind on failure, and the
temporaries of a killed writer removed later."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from drlightning.atomic import atomic_write_text, atomic_write_with, clean_orphans, write_dir_atomically

from .tiny import checkout_env


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


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_carry_their_writers_pid(tmp_path):
    seen = []
    atomic_write_with(tmp_path / "a.json", lambda tmp: seen.append(tmp.name) or tmp.write_text("{}"))
    write_dir_atomically(tmp_path / "model", lambda tmp: seen.append(tmp.name))
    assert seen[0].startswith(f".a.json.{os.getpid()}.") and seen[0].endswith(".tmp")
    assert seen[1].startswith(f".model.{os.getpid()}.") and seen[1].endswith(".tmp")


def test_orphans_of_dead_writers_go_and_those_of_live_writers_stay(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / "model").mkdir()
    orphans = [tmp_path / f".model.{dead}.k2j4h6g8.tmp",
               tmp_path / f".layer_00.safetensors.{dead}.a_1b2c3d.tmp",
               tmp_path / ".model.old"]  # the last: a finished swap whose clean-up was killed
    orphans[0].mkdir()
    (orphans[0] / "model.safetensors").write_bytes(b"x" * 100)
    orphans[1].write_bytes(b"half")
    orphans[2].mkdir()
    kept = [tmp_path / f".model.{live}.q1w2e3r4.tmp", tmp_path / f".a.json.{live}.zz11yy22.tmp",
            tmp_path / ".other.old",  # its target is missing: the only copy, kept
            tmp_path / ".cfg.k2j4h6g8.tmp",  # no writer's pid: never guessed at
            tmp_path / "model", tmp_path / "results.json"]
    kept[0].mkdir()
    kept[2].mkdir()
    for path in (kept[1], kept[3], kept[5]):
        path.write_text("x")
    assert sorted(clean_orphans(tmp_path)) == sorted(orphans)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert clean_orphans(tmp_path) == [] and clean_orphans(tmp_path / "missing") == []


def test_a_save_killed_midway_leaves_an_orphan_the_next_save_removes(tmp_path):
    script = ("import os, signal, sys\nfrom pathlib import Path\n"
              "from drlightning.atomic import write_dir_atomically\n"
              "def write(tmp):\n    (tmp / 'model.safetensors').write_bytes(b'x' * 1000)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "write_dir_atomically(Path(sys.argv[1]) / 'model', write)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=checkout_env())
    assert proc.returncode == -signal.SIGKILL
    (orphan,) = tmp_path.iterdir()
    assert orphan.name.startswith(".model.") and (orphan / "model.safetensors").is_file()
    write_dir_atomically(tmp_path / "model", lambda tmp: (tmp / "config.json").write_text("{}"))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
