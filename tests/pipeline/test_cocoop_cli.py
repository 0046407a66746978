"""CoCoOp from the command line on the demo world: `train-teacher --method cocoop`, `eval`, `distill --baseline
cocoop` (SemPT on by default) and `eval` again, through the same presets and records as every other method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sempt_cli.cli.app import app

pytestmark = pytest.mark.slow  # trains on the demo world


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _evaluated(run: Path, results: Path, common: list[str]) -> dict[str, float]:
    """`sempt eval` of a run's checkpoint; the metrics of the record it writes."""
    before = set(results.rglob("*.json"))
    output = _invoke(["eval", str(run / "model.safetensors"), "--results-dir", str(results), *common])
    [record] = set(results.rglob("*.json")) - before
    assert "CoCoOp" in output
    return json.loads(record.read_text())["results"]["demo"]["metrics"]


def test_cocoop_trains_and_evaluates_with_and_without_sempt(demo_cache: Path, tmp_path: Path) -> None:
    common = ["--workers", "0", "--eval-batch-size", "250", "--cache-dir", str(demo_cache)]
    train = ["--dataset", "demo", "--pretrained", "none", "--shots", "1", "--allow-any-shots", "--epochs", "1",
             "--output-dir", str(tmp_path / "runs"), *common]
    runs, results = tmp_path / "runs" / "teachers" / "demo", tmp_path / "results"
    _invoke(["train-teacher", "--method", "cocoop", *train])
    [run] = runs.glob("cocoop-base2novel-*")
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["settings_sources"]["train.lr"] == "preset cocoop/base2novel"
    sidecar = json.loads((run / "model.json").read_text())
    assert sidecar["metadata"]["backbone"] == "sempt-demo-student"  # the demo's ViT-B/16 stand-in
    assert set(sidecar["tensors"]) == {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                                       "meta_net.linear2.weight", "meta_net.linear2.bias"}
    assert _evaluated(run, results, common) == pytest.approx(trained["metrics"])

    _invoke(["distill", "--baseline", "cocoop", *train])  # SemPT on by default
    [wrapped] = runs.glob("cocoop-sempt-base2novel-*")
    sidecar = json.loads((wrapped / "model.json").read_text())
    assert sidecar["metadata"]["variant"] == "w/ SemPT"
    assert {"ctx", "meta_net.linear1.weight", "sempt.fusion.fc1.weight"} <= set(sidecar["tensors"])
    trained = json.loads((wrapped / "metrics.json").read_text())
    assert set(trained["metrics"]) == {"base", "novel", "hm", "all"}
    assert _evaluated(wrapped, results, common) == pytest.approx(trained["metrics"])
