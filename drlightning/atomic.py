"""Atomic file and directory writes: write a temporary sibling, then rename it into place.

A crash or a full disk never leaves a half-written file at the target path (any previous file
stays), and the temporary file or directory is removed on error.

Files and directories get the permissions a plain ``open``/``mkdir`` would give them (0666 / 0777
less the umask), not the private 0600 / 0700 of :mod:`tempfile` or of writers that create their
own file (safetensors, ``save_pretrained``), so outputs can be shared and served.

A temporary's name holds its writer's process id (``.{name}.{pid}.XXXXXXXX.tmp``): one left by a
writer killed mid-save (``kill -9``, out of memory) is found and removed by :func:`clean_orphans`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")
"""A temporary of :func:`atomic_write_with` or :func:`write_dir_atomically`."""
_OLD = re.compile(r"^\.(?P<name>.+)\.old$")
"""The previous directory moved aside by :func:`write_dir_atomically`."""


def _umask() -> int:
    try:  # Linux ≥ 4.7: read it without changing it (os.umask is process-wide, racy in threads)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def set_plain_modes(path: Path) -> None:
    """Give ``path`` (a file, or a directory and everything in it) the modes a plain ``open`` /
    ``mkdir`` would: 0666 / 0777 less the umask. Links are left alone."""
    mask = _umask()
    path = Path(path)
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


def atomic_write_with(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary sibling file of ``path``, fsync it, ``os.replace`` it
    into ``path``; the temporary file is removed if anything fails (e.g. torch.save, save_file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        set_plain_modes(tmp)  # after the write: a writer may have replaced the file (0600)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_with`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write_with(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_with`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write_with(path, write)


def write_dir_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling directory, then rename it into ``path``.

    A failed write (disk full, crash) leaves any previous ``path`` untouched and removes ``tmp``.
    Orphans of earlier killed writers next to ``path`` are removed first (:func:`clean_orphans`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    try:
        write(tmp)
        set_plain_modes(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine; one of another user counts as alive)."""
    if pid <= 0:
        return True  # not a writer's id: never treat it as dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphan(entry: Path) -> bool:
    temp = _TEMP.match(entry.name)
    if temp:
        return not pid_alive(int(temp["pid"]))
    old = _OLD.match(entry.name)
    return bool(old) and entry.is_dir() and (entry.parent / old["name"]).exists()


def clean_orphans(directory: Path) -> list[Path]:
    """Remove, in ``directory`` (not below it), the temporary files and directories of atomic
    writes whose writer process is gone, and ``.{name}.old`` directories whose ``name`` exists
    (a finished directory swap whose clean-up was killed). Returns what was removed.

    Temporaries of a live process (this one included) are kept; so are names without a writer's
    pid. Process ids are local: do not share a directory between machines' concurrent writers.
    """
    directory = Path(directory)
    try:
        entries = sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    removed = []
    for entry in entries:
        if not _orphan(entry):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        except OSError:
            continue  # not ours to remove (permissions): leave it
        removed.append(entry)
    return removed
