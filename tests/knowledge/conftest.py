"""Fixtures for knowledge construction: a fake OpenAI-compatible server per test and settings pointing at it."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sempt_cli.settings import Settings, load_settings
from tests.knowledge.fake_llm import FakeLLM

SECRET = "sk-test-NEVER-WRITE-ME-4242"
"""The API key the tests use; no file written by a test may contain it."""


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def make_settings(tmp_path: Path, fake_llm: FakeLLM) -> Callable[..., Settings]:
    """Settings for the demo world's 40 classes against `fake_llm`, fast retries, small timeouts."""

    def make(**extra: Any) -> Settings:
        values = {
            "data.dataset": "demo", "paths.cache_dir": str(tmp_path / "cache"), "llm.base_url": fake_llm.base_url,
            "llm.api_key": SECRET, "llm.max_concurrency": 2, "llm.timeout": 5, "llm.retries": 3,
            "llm.backoff": 0.05, "llm.reasks": 2, "llm.classes_per_request": 10,
        }
        values.update({key.replace("__", "."): value for key, value in extra.items()})
        return load_settings(values, env={}).settings

    return make


@pytest.fixture
def quiet() -> Console:
    """A console whose output tests can read (`quiet.file.getvalue()`)."""
    return Console(file=io.StringIO(), width=200)


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]
