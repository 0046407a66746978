"""Test-wide settings. OpenMP threads that spin while waiting make small torch ops 10–20× slower when the
machine is shared (CI runners, parallel jobs); passive waiting changes no result."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True, scope="session")
def _no_registered_datasets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Datasets the developer registered with `sempt data add` must not leak into tests (nor tests into them):
    every test, and every CLI it starts, sees an empty entries folder unless it sets its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEMPT_DATASETS_DIR", str(tmp_path_factory.mktemp("registered-datasets")))
        yield


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo world per test session (generation takes ~10 s)."""
    from sempt_cli.data.demo import ensure_demo_world

    cache = tmp_path_factory.mktemp("sempt-cache")
    ensure_demo_world(cache)
    return cache
