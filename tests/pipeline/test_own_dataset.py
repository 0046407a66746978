"""A user's own folder through the CLI: `data add` → `train-teacher` → `eval` base-to-novel table, and a demo-world
teacher scored on that folder as a cross-dataset target, recorded like a benchmark target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sempt_cli.data.add import split_counts
from sempt_cli.data.user import DATASETS_DIR_ENV, split_path
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.teacher import train_teacher
from tests.data.fabricate import fabricate_image_folder

BIRDS = {"blue_jay": 8, "cardinal": 8, "robin": 8, "wren": 8}


def _sempt(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "sempt_cli", *args], capture_output=True, text=True, env=env,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Entries in a private folder, for this process and the CLI subprocesses alike."""
    monkeypatch.setenv(DATASETS_DIR_ENV, str(tmp_path / "registry"))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "200"}


@pytest.mark.slow
def test_folder_to_base_to_novel_table_through_the_cli(tmp_path: Path, demo_cache: Path,
                                                       env: dict[str, str]) -> None:
    folder = fabricate_image_folder(tmp_path / "birds", BIRDS)
    add = ["data", "add", "birds", str(folder), "--template", "a photo of a {}, a type of bird.",
           "--domain", "bird species", "--shots", "2"]
    assert "Registered birds: 4 classes" in _sempt(add, env).stdout
    split = split_path("birds").read_bytes()
    assert "birds" in _sempt(["data", "list"], env).stdout

    common = ["--cache-dir", str(demo_cache), "--workers", "0"]
    _sempt(["train-teacher", "--method", "promptsrc", "--dataset", "birds", "--shots", "2", "--epochs", "1",
            "--batch-size", "4", "--output-dir", str(tmp_path / "runs"), *common], env)
    [checkpoint] = (tmp_path / "runs" / "teachers" / "birds").glob("*/model.safetensors")
    table = _sempt(["eval", str(checkpoint), "--results-dir", str(tmp_path / "results"), *common], env).stdout
    assert "Base-to-novel · birds" in table and "HM" in table
    [record_path] = (tmp_path / "results" / "base2novel" / "birds").glob("*.json")
    result = json.loads(record_path.read_text())["results"]["birds"]
    assert result["status"] == "ok" and set(result["metrics"]) == {"base", "novel", "hm", "all"}
    assert result["counts"]["base"]["total"] + result["counts"]["novel"]["total"] == result["counts"]["all"]["total"]

    again = _sempt(add, env).stdout  # a second run: the split file is the same, byte for byte
    assert "nothing to do" in again and split_path("birds").read_bytes() == split
    _sempt(["data", "remove", "birds"], env)
    assert not split_path("birds").exists()
    _sempt(add, env)
    assert split_path("birds").read_bytes() == split


@pytest.mark.slow
def test_demo_teacher_scores_a_user_folder_as_a_cross_dataset_target(tmp_path: Path, demo_cache: Path,
                                                                     env: dict[str, str]) -> None:
    folder = fabricate_image_folder(tmp_path / "birds", BIRDS)
    _sempt(["data", "add", "birds", str(folder), "--shots", "1"], env)
    resolved = resolve_with_preset("promptsrc", {
        "data.dataset": "demo", "data.shots": 1, "data.batch_size": 8, "data.workers": 0, "train.epochs": 1,
        "paths.cache_dir": str(demo_cache), "paths.output_dir": str(tmp_path / "runs")}, env={})
    checkpoint = train_teacher("promptsrc", resolved).checkpoint

    results = tmp_path / "results"
    out = _sempt(["eval", str(checkpoint), "--setting", "cross-dataset", "--datasets", "demo,birds",
                  "--results-dir", str(results), "--cache-dir", str(demo_cache), "--workers", "0",
                  "--eval-batch-size", "250", "--format", "json"], env).stdout
    rows = json.loads(out[out.index("{"):])["rows"]
    assert {row["dataset"] for row in rows if row["kind"] == "ours"} == {"demo", "birds"}
    [record_path] = (results / "cross-dataset" / "demo").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["datasets"] == ["demo", "birds"]
    demo, birds = record["results"]["demo"], record["results"]["birds"]
    assert birds["status"] == "ok" and set(birds) == set(demo) and set(birds["metrics"]) == set(demo["metrics"])
    assert birds["num_classes"] == 4
    assert birds["counts"]["accuracy"]["total"] == sum(split_counts(n)[2] for n in BIRDS.values())
