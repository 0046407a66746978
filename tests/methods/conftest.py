"""Shared fixtures of the method tests: a fixed seed per test, the demo student CLIP and a ViT-B/16 (random weights,
one per module, so a test module may freeze or wrap them as it likes; ViT-B/16 where the official shapes matter)."""

from __future__ import annotations

import pytest
import torch

from sempt_cli.models import DEMO_STUDENT, LoadedClip, load_clip


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def demo_student() -> LoadedClip:
    """4 vision / 3 text blocks, 48-pixel images: the demo's ViT-B/16 stand-in."""
    torch.manual_seed(3)
    return load_clip(DEMO_STUDENT, None)


@pytest.fixture(scope="module")
def b16() -> LoadedClip:
    """The OpenAI ViT-B/16 architecture, randomly initialised: the shapes the official configs assume."""
    torch.manual_seed(1)
    return load_clip("ViT-B-16-quickgelu", None)
