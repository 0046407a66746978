"""Acceptance on the demo world with the shipped demo CLIPs and the official-method presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from sempt_cli.pipeline.demo import zero_shot
from sempt_cli.pipeline.teacher import resolve_with_preset, train_teacher


@pytest.mark.slow
def test_promptsrc_teacher_beats_zero_shot_on_base_classes(demo_cache: Path, tmp_path: Path) -> None:
    paths = {"paths.cache_dir": str(demo_cache), "paths.output_dir": str(tmp_path), "data.workers": 0}
    baseline = zero_shot("sempt-demo-teacher", {"data.dataset": "demo", **paths})
    resolved = resolve_with_preset("promptsrc", {"data.dataset": "demo", **paths}, env={})
    assert resolved.sources["train.epochs"].startswith("preset promptsrc")
    trained = train_teacher("promptsrc", resolved)
    assert trained.metrics["base"] > baseline["base"]
    assert trained.metrics["hm"] > 0.9 * baseline["hm"]  # prompt learning must not wreck the novel classes
