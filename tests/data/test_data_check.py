"""`check_data_root`: found / missing / malformed, with the fix in the message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fabricate import BENCHMARKS, expected_sizes, fabricate_dataset, write_corrupt_image

from sempt_cli.data import check_data_root, get_dataset_info, load_dataset
from sempt_cli.errors import DatasetError


def test_empty_root_reports_every_benchmark_missing_with_hint_and_path(scratch: Path) -> None:
    statuses = check_data_root(scratch)
    assert [s.name for s in statuses] == list(BENCHMARKS)  # demo skipped unless asked
    for status in statuses:
        info = get_dataset_info(status.name)
        folder = scratch / info.folder
        assert status.state == "missing" and status.path == folder
        assert f"folder {folder} does not exist" in status.message
        assert info.download in status.message and f"it must end up at {folder}" in status.message


def test_found_with_counts(benchmark_root: Path) -> None:
    statuses = {s.name: s for s in check_data_root(benchmark_root)}
    assert set(statuses) == set(BENCHMARKS)
    for name, status in statuses.items():
        assert status.state == "found", status.message
        train, val, test = expected_sizes(name, (3, 2, 1))
        classes = get_dataset_info(name).num_classes
        assert status.counts == {"train": train, "val": val, "test": test, "classes": classes}
    assert statuses["eurosat"].message == (
        "Dataset eurosat: 10 classes, train/val/test = 30/20/10 images (the official split has 13500/5400/8100)."
    )


def test_names_aliases_and_demo_only_when_asked(scratch: Path) -> None:
    statuses = check_data_root(scratch, ["flowers102", "demo"])
    assert [s.name for s in statuses] == ["oxford_flowers", "demo"]
    with pytest.raises(DatasetError, match="Unknown dataset"):
        check_data_root(scratch, ["cifar10"])


def test_missing_split_file_is_missing_and_bad_json_is_malformed(scratch: Path) -> None:
    fabricate_dataset("dtd", scratch, (1, 1, 1))
    fabricate_dataset("caltech101", scratch, (1, 1, 1))
    (scratch / "dtd" / "split_zhou_DescribableTextures.json").unlink()
    (scratch / "caltech-101" / "split_zhou_Caltech101.json").write_text("[1, 2")
    status = {s.name: s for s in check_data_root(scratch, ["dtd", "caltech101"])}
    assert status["dtd"].state == "missing"
    assert "split_zhou_DescribableTextures.json does not exist" in status["dtd"].message
    assert "CoOp's Google Drive" in status["dtd"].message
    assert status["caltech101"].state == "malformed"
    assert "split_zhou_Caltech101.json is not valid JSON" in status["caltech101"].message


def test_missing_image_is_malformed_with_path(scratch: Path) -> None:
    fabricate_dataset("oxford_pets", scratch, (1, 1, 1))
    victim = load_dataset("oxford_pets", scratch).val[0].path  # type: ignore[index]
    victim.unlink()
    [status] = check_data_root(scratch, ["oxford_pets"])
    assert status.state == "malformed" and f"image {victim} listed in" in status.message


def test_deep_check_opens_every_image(scratch: Path) -> None:
    fabricate_dataset("eurosat", scratch, (1, 1, 1))
    fabricate_dataset("imagenet_a", scratch, (0, 0, 1))
    victim = load_dataset("eurosat", scratch).test[3].path
    write_corrupt_image(victim)
    shallow = {s.name: s for s in check_data_root(scratch, ["eurosat", "imagenet_a"])}
    assert shallow["eurosat"].state == "found"
    deep = {s.name: s for s in check_data_root(scratch, ["eurosat", "imagenet_a"], deep=True)}
    assert deep["eurosat"].state == "malformed"
    assert f"image {victim} cannot be read" in deep["eurosat"].message
    assert deep["eurosat"].counts["unreadable"] == 1
    assert deep["imagenet_a"].state == "found" and deep["imagenet_a"].counts["unreadable"] == 0


def test_missing_image_folder_is_missing(scratch: Path) -> None:
    fabricate_dataset("fgvc_aircraft", scratch, (1, 1, 1))
    shutil.rmtree(scratch / "fgvc_aircraft" / "images")
    [status] = check_data_root(scratch, ["aircraft"])
    assert status.state == "missing" and "image folder" in status.message
    assert "fgvc_aircraft/images does not exist" in status.message
