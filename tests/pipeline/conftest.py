"""Shared fixtures: one demo world per test session (generation takes ~10 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sempt_cli.data.demo import ensure_demo_world


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("sempt-cache")
    ensure_demo_world(cache)
    return cache
