"""Shared test settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_dense_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own cross-run dense-evaluation cache (never the user's)."""
    monkeypatch.setenv("DRL_CACHE_DIR", str(tmp_path_factory.mktemp("dense_cache")))
