"""Acceptance on the demo world with the shipped demo CLIPs and the official-method presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from sempt_cli.pipeline.evaluation import evaluate_zeroshot
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.teacher import train_teacher
from sempt_cli.settings import load_settings


@pytest.mark.slow
def test_promptsrc_teacher_beats_zero_shot_on_base_classes(demo_cache: Path, tmp_path: Path) -> None:
    paths = {"paths.cache_dir": str(demo_cache), "paths.output_dir": str(tmp_path), "data.workers": 0}
    zs_settings = load_settings({"data.dataset": "demo", "eval.results_dir": str(tmp_path / "records"), **paths},
                                env={}).settings
    baseline = evaluate_zeroshot(zs_settings).results["demo"].metrics
    resolved = resolve_with_preset("promptsrc", {"data.dataset": "demo", **paths}, env={})
    assert resolved.sources["train.epochs"].startswith("preset promptsrc")
    trained = train_teacher("promptsrc", resolved)
    assert trained.metrics["base"] > baseline["base"]
    assert trained.metrics["hm"] > 0.9 * baseline["hm"]  # prompt learning must not wreck the novel classes
