"""MaPLe from the command line on the demo world: `train-teacher --method maple`, `eval`, `distill --baseline maple`
(SemPT on by default), `eval` — the same commands and preset mechanism as every other method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from sempt_cli.cli.app import app

pytestmark = pytest.mark.slow  # trains twice on the demo world


def _sempt(args: list[str]) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def test_maple_trains_evaluates_and_runs_with_sempt(demo_cache: Path, tmp_path: Path) -> None:
    common = ["--dataset", "demo", "--cache-dir", str(demo_cache), "--workers", "0", "--output-dir",
              str(tmp_path / "runs"), "--shots", "2", "--epochs", "2"]
    evaluate = ["--results-dir", str(tmp_path / "results"), "--cache-dir", str(demo_cache), "--workers", "0"]
    teachers = tmp_path / "runs" / "teachers" / "demo"

    _sempt(["train-teacher", "--method", "maple", *common])
    [run] = teachers.glob("maple-base2novel-*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"base", "novel", "hm", "all"}
    sources = metrics["settings_sources"]
    assert sources["prompts.text_depth"] == sources["prompts.vision_depth"] == "preset maple/base2novel"
    assert sources["model.backbone"] == "preset maple/base2novel"  # the demo's ViT-B/16 stand-in
    keys = set(load_file(run / "model.safetensors"))
    deep = {f"prompt_learner.compound_prompts_text.{i}" for i in (0, 1)} | {
        f"prompt_learner.compound_prompt_projections.{i}.{part}" for i in (0, 1) for part in ("weight", "bias")}
    assert keys == {"prompt_learner.ctx", "prompt_learner.proj.weight", "prompt_learner.proj.bias", *deep}  # depth 3
    table = _sempt(["eval", str(run / "model.safetensors"), *evaluate])
    assert "MaPLe" in table

    _sempt(["distill", "--baseline", "maple", *common])
    [wrapped] = teachers.glob("maple-sempt-base2novel-*")
    tensors = set(load_file(wrapped / "model.safetensors"))
    assert keys | {"sempt.fusion.fc1.weight"} <= tensors
    table = _sempt(["eval", str(wrapped / "model.safetensors"), *evaluate])
    assert "MaPLe w/ SemPT" in table
