"""bench/distill_epoch.py --quick (demo models, 24 tiny JPEGs, one worker): the fabricated dataset is in the CoOp
ImageNet layout, both epochs run end to end and the record is sane. About 15 s on 2 CPU cores."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from tests.bench.scripts import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("distill_epoch.py", "distill_epoch_bench")


def test_quick_epoch_gives_a_sane_record(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = bench.main(["--quick", "--data-dir", str(tmp_path), "--warmup-steps", "1", "--json",
                         str(tmp_path / "epoch.json")])
    captured = capsys.readouterr()
    out = captured.out + captured.err  # the trainer reports on stderr

    train = tmp_path / "imagenet" / "images" / "train"
    folders = sorted(p.name for p in train.iterdir())
    assert len(folders) == 6 and all(len(list((train / f).glob("*.JPEG"))) == 4 for f in folders)
    assert len((tmp_path / "imagenet" / "classnames.txt").read_text().splitlines()) == 6
    with Image.open(next((train / folders[0]).glob("*.JPEG"))) as image:
        assert image.format == "JPEG" and image.size == (64, 48)

    assert record["images"] == 24 and (tmp_path / "epoch.json").is_file()
    assert record["loader"]["per_worker"] > 0 and record["loader"]["total"] > 0
    for key in ("sempt", "official"):
        row = record["epochs"][key]
        assert math.isfinite(row["seconds"]) and row["seconds"] > 0 and row["images_per_s"] > 0
        assert row["timed_steps"] == 6 and not row["scaled"]
        shares = row["loading_s"] + row["teacher_s"] + row["student_s"]
        assert 0 < shares <= row["seconds"] * 1.01
    assert record["epochs"]["sempt"]["teacher_s"] > 0 and record["epochs"]["official"]["teacher_s"] > 0
    assert "sempt / official images per second" in out and "waiting for data" in out


def test_a_partial_official_epoch_is_scaled_to_the_whole(bench: ModuleType, tmp_path: Path) -> None:
    timing = {"seconds": 2.0, "waiting_s": 0.5, "stepping_s": 1.5, "warmup_s": 0.0, "steps": 3}
    row = bench.epoch_row(timing, factor=4.0, teacher_s=1.0, images=96, ours=False)
    assert row["seconds"] == 8.0 and row["images_per_s"] == 12.0
    assert (row["loading_s"], row["teacher_s"], row["student_s"]) == (2.0, 4.0, 2.0) and row["scaled"]
