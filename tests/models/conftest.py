"""Shared backbones for the model tests: random-initialised real architectures (no weights, no network)."""

from __future__ import annotations

import pytest
import torch

from sempt_cli.models import DEMO_STUDENT, DEMO_TEACHER, LoadedClip, load_clip


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def b16() -> LoadedClip:
    """ViT-B/16 with QuickGELU, randomly initialised (~1 s per forward of 2 images on 2 CPU cores)."""
    torch.manual_seed(1)
    return load_clip("ViT-B-16-quickgelu", None)


@pytest.fixture(scope="session")
def teacher() -> LoadedClip:
    torch.manual_seed(2)
    return load_clip(DEMO_TEACHER, None)


@pytest.fixture(scope="session")
def student() -> LoadedClip:
    torch.manual_seed(3)
    return load_clip(DEMO_STUDENT, None)


@pytest.fixture(params=[DEMO_TEACHER, DEMO_STUDENT])
def tiny(request: pytest.FixtureRequest, teacher: LoadedClip, student: LoadedClip) -> LoadedClip:
    return teacher if request.param == DEMO_TEACHER else student
