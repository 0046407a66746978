"""Shared fixtures: one data root holding all 15 fabricated benchmarks, built once per session.

Fabricated trees hold tens of thousands of tiny files (the ImageNet family needs its 1000 class folders),
which is slow on a busy disk. `scratch` and `benchmark_root` therefore live in RAM (`/dev/shm`) when it is
available and are deleted when done; elsewhere they fall back to pytest's temporary folders.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabricate import BENCHMARKS, fabricate_dataset

DEFAULT_PER_CLASS = (3, 2, 1)
_RAM = Path("/dev/shm")


def _ram_available() -> bool:
    return _RAM.is_dir() and os.access(_RAM, os.W_OK)


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty folder for one test (in RAM when possible), removed afterwards."""
    if not _ram_available():
        yield tmp_path_factory.mktemp("scratch")
        return
    folder = Path(tempfile.mkdtemp(prefix="sempt-data-test-", dir=_RAM))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def benchmark_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Read-only data root with every benchmark at DEFAULT_PER_CLASS images per class (do not modify)."""
    if _ram_available():
        root = Path(tempfile.mkdtemp(prefix="sempt-data-root-", dir=_RAM))
    else:
        root = tmp_path_factory.mktemp("data_root")
    try:
        for name in BENCHMARKS:
            fabricate_dataset(name, root, DEFAULT_PER_CLASS)
        yield root
    finally:
        if root.is_relative_to(_RAM):
            shutil.rmtree(root, ignore_errors=True)
