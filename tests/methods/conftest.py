"""Shared fixtures of the method tests: a fixed seed per test and the demo student CLIP (random weights, one per
module, so a test module may freeze or wrap it as it likes)."""

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
