"""Shared test settings: drlightning's cache is private to the test session; bit-for-bit release
checks (``@pytest.mark.exact``) run only with ``pytest --exact``."""

from __future__ import annotations

import pytest


def pytest_addoption(parser) -> None:
    parser.addoption("--exact", action="store_true", default=False,
                     help="also run the bit-for-bit release checks (per-machine recordings)")


def pytest_collection_modifyitems(config, items) -> None:
    if config.getoption("--exact"):
        return
    skip = pytest.mark.skip(reason="bit-for-bit release check: run with --exact")
    for item in items:
        if "exact" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _session_gguf_cache(tmp_path_factory):
    """One converted copy of the embedded GGUF model for the whole session (it is keyed by the
    file, so sharing it cannot change a result; each test that needs a fresh one sets its own)."""
    path = tmp_path_factory.mktemp("gguf_cache")
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch, _session_gguf_cache):
    """Each test gets its own cache directory (its own dense-evaluation cache, never the user's),
    whose ``gguf/`` is the session's."""
    root = tmp_path_factory.mktemp("drl_cache")
    (root / "gguf").symlink_to(_session_gguf_cache, target_is_directory=True)
    monkeypatch.setenv("DRL_CACHE_DIR", str(root))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """``tiny_dir(arch="llama", **overrides)``: a saved tiny model directory (tests/tiny.py), made
    once per session for each set of arguments. Read-only: copy it before changing it."""
    from .tiny import save_tiny_dir

    made: dict = {}

    def make(arch: str = "llama", **overrides):
        key = (arch, tuple(sorted(overrides.items())))
        if key not in made:
            made[key] = save_tiny_dir(tmp_path_factory.mktemp(f"tiny-{arch}") / "model", arch,
                                      **overrides)
        return made[key]

    return make


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_dir):
    """``finished_run(arch="llama", **fit_args options)``: a finished ``drlightning fit`` run
    directory on a tiny model, made once per session for each set of arguments (its own dense
    evaluation cache). Read-only: copy it before changing it."""
    from drlightning.cli import DRLightningCLI

    from .tiny import fit_args

    made: dict = {}

    def make(arch: str = "llama", **options):
        key = (arch, tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in made:
            out = tmp_path_factory.mktemp(f"run-{arch}")
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("DRL_CACHE_DIR", str(out / "cache"))
                DRLightningCLI(args=fit_args(tiny_dir(arch), out / "run", **options))
            made[key] = out / "run"
        return made[key]

    return make
