"""One run at a time per run directory: an exclusive lock held for the whole run.

A second ``drlightning fit`` (or ``prune(output_dir=…)``) into a directory another process is
writing would mix the two runs' layers in ``state/``; it is refused in one line naming the holder.
The lock is ``<run dir>/.lock`` (``fcntl.flock``: released by the kernel when the holder dies, so
a run killed with ``kill -9`` never leaves a stale lock; a run that ends removes the file).
Re-entrant within one process (the plain baseline and the judge run inside the run that holds
the lock). The ranks > 0 of a torchrun launch
share their rank 0's lock and do not take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lock"
_held: dict[Path, tuple[int, int]] = {}
"""Locks this process holds: resolved run dir → (file descriptor, nesting depth)."""


def launch_rank() -> int:
    """This process's rank in a torchrun launch (0 outside one)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    return (f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}: "
            f"{info.get('command', '?')}")


def _acquire(run_dir: Path) -> int:
    """An open descriptor of ``run_dir/.lock`` with the exclusive lock held, or a one-line
    ValueError naming the holder."""
    path = run_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(f"run directory {run_dir} is in use by another drlightning run "
                             f"({_describe(path)}); wait for it to finish, or use another "
                             "output directory") from None
        try:  # the file we locked must still be the one at the path (not unlinked meanwhile)
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if needed) for the ``with`` block."""
    run_dir = Path(run_dir)
    if launch_rank() > 0:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
    else:
        fd = _acquire(run_dir)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        _held[key] = (fd, 1)
    try:
        yield
    finally:
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
        else:
            del _held[key]
            with contextlib.suppress(OSError):  # removed while still held: a process that
                os.unlink(run_dir / LOCK_NAME)  # opened it meanwhile sees it gone and retries
            os.close(fd)  # closing the descriptor releases the lock
