"""Training logs: metrics.jsonl and TensorBoard events hold the same values, read back with tensorboard's own
reader, and a run interrupted and resumed logs every step exactly once, with the uninterrupted run's values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sempt_cli.engine.trainer import EpochSelection
from sempt_cli.engine.trainlog import JSONL_FILE, TENSORBOARD_DIR, read_jsonl
from tests.engine.test_trainer import _trainer
from tests.engine.toy import make_samples

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory):
    return make_samples(tmp_path_factory.mktemp("toy-log"))


def _fit(samples, run_dir: Path, stop_after: int | None = None, tensorboard: bool = True) -> None:
    trainer = _trainer(samples, run_dir, epochs=3, select="official-best", console=QUIET,
                       selection=EpochSelection(lambda: 50.0, "toy accuracy"))
    trainer.settings.train.tensorboard = tensorboard
    trainer.fit(stop_after_steps=stop_after)


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _steps(run_dir: Path) -> list[dict]:
    return [line for line in read_jsonl(run_dir / JSONL_FILE) if line["kind"] == "step"]


def test_tensorboard_events_and_jsonl_hold_the_same_values(samples, tmp_path: Path) -> None:
    _fit(samples, tmp_path)
    steps = _steps(tmp_path)
    assert [line["step"] for line in steps] == list(range(1, 13))  # 18 images, batch 4 → 4 steps × 3 epochs
    scalars = _scalars(tmp_path)
    assert scalars["train/lr"] == [(line["step"], pytest.approx(line["lr"])) for line in steps]
    for name in steps[0]["losses"]:
        assert scalars[f"train/{name}"] == [(line["step"], pytest.approx(line["losses"][name])) for line in steps]
    epochs = [line for line in read_jsonl(tmp_path / JSONL_FILE) if line["kind"] == "epoch"]
    assert [line["epoch"] for line in epochs] == [1, 2, 3]
    assert all(line["images_per_s"] > 0 and 0 <= line["loading_share"] <= 1 for line in epochs)
    assert [v for _, v in scalars["perf/images_per_s"]] == pytest.approx([line["images_per_s"] for line in epochs])
    assert scalars["eval/selection"] == [(4, 50.0), (8, 50.0)]  # epochs 1-2 are scored in the loop


def test_a_resumed_run_continues_its_logs_with_every_step_once(samples, tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    _fit(samples, whole)
    _fit(samples, parts, stop_after=6)
    with (parts / JSONL_FILE).open("a") as handle:  # what a kill -9 after the checkpoint leaves behind
        handle.write(json.dumps({"kind": "step", "step": 7, "epoch": 2, "lr": 9.0, "losses": {"ce": 9.0}}) + "\n")
        handle.write('{"kind": "step", "st')
    _fit(samples, parts)
    expected, resumed = _steps(whole), _steps(parts)
    assert [line["step"] for line in resumed] == list(range(1, 13))
    for a, b in zip(expected, resumed, strict=True):
        assert a["losses"] == pytest.approx(b["losses"]) and a["lr"] == pytest.approx(b["lr"])
    scalars = _scalars(parts)
    assert [step for step, _ in scalars["train/lr"]] == list(range(1, 13))
    assert scalars["train/lr"] == [(line["step"], pytest.approx(line["lr"])) for line in resumed]


def test_no_tensorboard_still_writes_jsonl(samples, tmp_path: Path) -> None:
    _fit(samples, tmp_path, tensorboard=False)
    assert not (tmp_path / TENSORBOARD_DIR).exists()
    assert len(_steps(tmp_path)) == 12
