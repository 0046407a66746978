"""Shared fixtures: the demo CLIPs with their shipped weights, one official teacher file and its import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from sempt_cli.interop.convert import ImportResult, import_teacher
from sempt_cli.models import DEMO_STUDENT, DEMO_TEACHER, LoadedClip
from sempt_cli.models.demo_clip import load_demo_clip
from tests.interop.fakes import save_dassl, teacher_state

DEMO = {"model.backbone": DEMO_TEACHER, "model.pretrained": "demo", "data.dataset": "demo"}
"""Settings for importing onto the demo teacher (the demo world is never guessed from folder names)."""

TEACHER_DEPTHS = (5, 4)
"""Vision / text depth of the shared official teacher: the demo teacher has 6 vision and 4 text blocks."""


def run_paths(root: Path) -> dict[str, Any]:
    return {"paths.output_dir": str(root / "runs"), "paths.cache_dir": str(root / "cache")}


@pytest.fixture(scope="session")
def demo_teacher() -> LoadedClip:
    return load_demo_clip(DEMO_TEACHER, torch.device("cpu"))


@pytest.fixture(scope="session")
def demo_student() -> LoadedClip:
    return load_demo_clip(DEMO_STUDENT, torch.device("cpu"))


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="session")
def official_teacher(root: Path, demo_teacher: LoadedClip) -> tuple[Path, dict[str, Tensor]]:
    """A PromptSRC checkpoint of the demo teacher as the official code writes it, and its state dict."""
    state = teacher_state(demo_teacher, *TEACHER_DEPTHS)
    return save_dassl(root / "teacher_model" / "Demo" / "VLPromptLearner" / "model-best.pth.tar", state), state


@pytest.fixture(scope="session")
def imported_teacher(root: Path, official_teacher: tuple[Path, dict[str, Tensor]],
                     demo_teacher: LoadedClip) -> ImportResult:
    return import_teacher(official_teacher[0], overrides={**DEMO, **run_paths(root)}, env={}, clip=demo_teacher)
