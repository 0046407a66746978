"""`sempt data add`: a fabricated folder or manifest becomes a dataset every reader and setting accepts; every bad
input is refused with one sentence naming the file or class, and nothing is written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from fabricate import fabricate_image_folder, write_corrupt_image, write_unique_image

from sempt_cli.data import fewshot_splits, load_dataset, subsample_classes
from sempt_cli.data.add import add_dataset, split_counts
from sempt_cli.data.check import check_data_root
from sempt_cli.data.registry import all_classnames, canonical_dataset_name, get_dataset_info
from sempt_cli.data.user import DATASETS_DIR_ENV, split_path
from sempt_cli.errors import DatasetError, SettingsError
from sempt_cli.pipeline.runs import run_key
from sempt_cli.settings import load_settings

BIRDS = {"blue_jay": 6, "cardinal": 5, "robin": 7, "wren": 4}


@pytest.fixture(autouse=True)
def registry(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, initially absent entries folder for each test."""
    folder = scratch / "registry"
    monkeypatch.setenv(DATASETS_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def birds(scratch: Path) -> Path:
    return fabricate_image_folder(scratch / "birds", BIRDS)


def _written(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _one_sentence(message: str) -> bool:
    """One sentence: ends with a full stop and no full stop inside is followed by a new capitalised sentence."""
    return message.endswith(".") and re.search(r"[.!?]\s+[A-Z]", message) is None and "\n" not in message


# ------------------------------------------------------------------------------------------------- good inputs


def test_image_folder_becomes_a_dataset_with_coop_proportions(birds: Path, registry: Path) -> None:
    result = add_dataset("birds", birds, template="a photo of a {}, a type of bird.", domain="bird species", shots=2)
    assert result.written
    assert result.entry.classnames == ("blue jay", "cardinal", "robin", "wren")  # sorted folders, _ as spaces
    assert _written(registry) == sorted([registry / "birds.toml", split_path("birds")])
    assert split_path("birds").name == "split_zhou_Birds.json"

    # CoOp's read_and_split_data: round(0.5 n) train, round(0.2 n) val (half to even), the rest test
    assert [split_counts(n) for n in (4, 5, 6, 7)] == [(2, 1, 1), (2, 1, 2), (3, 1, 2), (4, 1, 2)]
    splits = load_dataset("birds", "/nonexistent-data-root")  # a registered folder does not live under the root
    assert splits.classnames == list(result.entry.classnames)
    for label, folder in enumerate(BIRDS):
        per_split = [Counter(s.label for s in part)[label] for part in (splits.train, splits.val, splits.test)]
        assert tuple(per_split) == split_counts(BIRDS[folder])
    every = [s.path for s in (*splits.train, *splits.val, *splits.test)]
    assert len(every) == len(set(every)) == sum(BIRDS.values())
    assert all(path.is_relative_to(birds) for path in every)

    info = get_dataset_info("birds")
    assert (info.template, info.domain, info.registered) == ("a photo of a {}, a type of bird.", "bird species", True)
    assert all_classnames("birds") == list(result.entry.classnames)
    # base/novel and few-shot through the benchmark code paths
    base = subsample_classes(fewshot_splits(splits, 2, seed=1), "base")
    assert base.classnames == ["blue jay", "cardinal"] and Counter(s.label for s in base.train) == {0: 2, 1: 2}
    novel = subsample_classes(splits, "new")
    assert novel.classnames == ["robin", "wren"] and {s.label for s in novel.test} == {0, 1}


def test_registered_names_pass_settings_validation_everywhere(birds: Path) -> None:
    with pytest.raises(SettingsError, match="unknown dataset"):
        load_settings({"data.dataset": "birds"}, env={})
    add_dataset("birds", birds, shots=2)
    settings = load_settings({"data.dataset": "Birds", "eval.datasets": "demo,birds"}, env={}).settings
    assert settings.data.dataset == "birds"
    assert settings.eval.datasets == ["demo", "birds"]
    assert canonical_dataset_name("BIRDS") == "birds"


def test_a_folder_path_as_dataset_says_how_to_register_it_then_names_it(birds: Path, registry: Path) -> None:
    with pytest.raises(SettingsError, match="sempt data add NAME"):
        load_settings({"data.dataset": str(birds)}, env={})
    add_dataset("birds", birds, shots=2)
    assert load_settings({"data.dataset": str(birds)}, env={}).settings.data.dataset == "birds"
    assert load_settings({"eval.datasets": f"demo,{birds}"}, env={}).settings.eval.datasets == ["demo", "birds"]


def test_split_is_reproducible_and_written_once(birds: Path, registry: Path) -> None:
    add_dataset("birds", birds, shots=2)
    path = split_path("birds")
    first, stamp = path.read_bytes(), path.stat().st_mtime_ns
    again = add_dataset("birds", birds, shots=2)
    assert not again.written and path.stat().st_mtime_ns == stamp  # the same data: nothing rewritten
    shutil.rmtree(registry)
    add_dataset("birds", birds, shots=2)
    assert path.read_bytes() == first  # made again from scratch: byte-identical
    data = json.loads(first)
    assert list(data) == ["train", "val", "test"]
    assert [row[1] for row in data["train"]] == sorted(row[1] for row in data["train"])  # CoOp's per-class order


def test_class_name_file_and_registration_listed_and_checked(birds: Path, scratch: Path) -> None:
    names = scratch / "names.txt"
    names.write_text("Blue Jay\nNorthern Cardinal\nAmerican Robin\nHouse Wren\n", encoding="utf-8")
    add_dataset("birds", birds, classnames_file=names, shots=2)
    assert all_classnames("birds") == ["Blue Jay", "Northern Cardinal", "American Robin", "House Wren"]
    [status] = [s for s in check_data_root(scratch / "no-root") if s.name == "birds"]
    assert status.state == "found" and status.counts["classes"] == 4


def test_csv_manifest_with_labels_only(scratch: Path) -> None:
    root = fabricate_image_folder(scratch / "pics", {"a": 4, "b": 4, "c": 5})
    rows = ["path,label"] + [f"{p.relative_to(root).as_posix()},{p.parent.name}_x" for p in sorted(root.rglob("*.png"))]
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = add_dataset("pics", root / "labels.csv", shots=1)
    assert result.entry.classnames == ("a_x", "b_x", "c_x") and result.entry.generated_split
    assert result.entry.sizes == (6, 3, 4)


def test_json_manifest_with_its_own_split_keeps_it(scratch: Path) -> None:
    root = fabricate_image_folder(scratch / "pics", {"cat": 6, "dog": 6})
    entries = []
    for i, path in enumerate(sorted(root.rglob("*.png"))):
        split = "test" if i % 6 < 2 else "train"
        entries.append({"path": path.relative_to(root).as_posix(), "label": path.parent.name, "split": split})
    (root / "manifest.json").write_text(json.dumps(entries), encoding="utf-8")
    result = add_dataset("pets2", root / "manifest.json", shots=1)
    assert not result.entry.generated_split
    splits = load_dataset("pets2", scratch)
    test_files = {e["path"] for e in entries if e["split"] == "test"}
    assert {s.path.relative_to(root).as_posix() for s in splits.test} == test_files
    assert len(splits.val) == 2 and len(splits.train) == 6  # no val rows: 20 % of each class's train (CoOp)
    assert not {s.path for s in splits.val} & {s.path for s in splits.train}


def test_domain_goes_into_the_llm_prompts(birds: Path) -> None:
    from sempt_cli.knowledge.generate import plan_requests

    add_dataset("birds", birds, domain="songbird species", shots=2)
    settings = load_settings({"data.dataset": "birds"}, env={}).settings
    first = plan_requests(settings).requests[0].request.body["messages"]
    assert any("songbird species" in message["content"] for message in first)


# -------------------------------------------------------------------------------------------------- bad inputs


def _refused(registry: Path, expected: str, name: str, path: Path, **kwargs: object) -> None:
    before = _written(registry)
    with pytest.raises(DatasetError) as caught:
        add_dataset(name, path, **kwargs)  # type: ignore[arg-type]
    error = caught.value
    assert expected in error.message, error.message
    assert error.hint is None and _one_sentence(error.message), error.message
    assert _written(registry) == before


def test_unreadable_image_is_named(birds: Path, registry: Path) -> None:
    write_corrupt_image(birds / "robin" / "broken.jpg")
    _refused(registry, str(birds / "robin" / "broken.jpg"), "birds", birds, shots=2)


def test_empty_class_folder_is_named(birds: Path, registry: Path) -> None:
    (birds / "sparrow").mkdir()
    (birds / "sparrow" / "notes.txt").write_text("no images here", encoding="utf-8")
    _refused(registry, f"Class folder {birds / 'sparrow'} contains no images", "birds", birds, shots=2)


def test_duplicate_files_are_named(birds: Path, registry: Path) -> None:
    shutil.copy(birds / "wren" / "img_00.png", birds / "robin" / "copy.png")
    _refused(registry, str(birds / "robin" / "copy.png"), "birds", birds, shots=2)


def test_class_with_too_few_images_for_the_shots_is_named(birds: Path, registry: Path) -> None:
    # cardinal's 5 images give round(2.5) = 2 training images (half to even, as CoOp's Python round)
    _refused(registry, "Class 'cardinal' has 2 training image(s)", "birds", birds, shots=3)


def test_class_too_small_to_split_is_named(birds: Path, registry: Path) -> None:
    shutil.rmtree(birds / "wren")
    fabricate_image_folder(birds, {"wren": 3}, start=100)
    _refused(registry, "Class 'wren' has 3 image(s)", "birds", birds, shots=1)


def test_class_name_longer_than_clips_context_is_named(birds: Path, scratch: Path, registry: Path) -> None:
    names = scratch / "names.tsv"
    long = " ".join(["very"] * 58) + " long bird"  # 60 tokens: fits the template, not beside 16 learned ones
    names.write_text(f"blue_jay\tblue jay\ncardinal\tcardinal\nrobin\trobin\nwren\t{long}\n", encoding="utf-8")
    _refused(registry, f"Class name '{long}' is too long for CLIP's 77-token context", "birds", birds,
             classnames_file=names, shots=1)
    names.write_text(names.read_text(encoding="utf-8").replace(" ".join(["very"] * 58), "very"), encoding="utf-8")
    assert add_dataset("birds", birds, classnames_file=names, shots=1).written  # the same file, shorter: accepted


def test_folder_without_class_folders_is_named(scratch: Path, registry: Path) -> None:
    write_unique_image(scratch / "flat" / "a.png", 1)
    _refused(registry, f"Folder {scratch / 'flat'} has no class sub-folders", "flat", scratch / "flat")


def test_benchmark_names_are_not_taken(birds: Path, registry: Path) -> None:
    _refused(registry, "taken by the built-in dataset 'oxford_flowers'", "flowers102", birds, shots=2)


def test_bad_template_is_refused(birds: Path, registry: Path) -> None:
    _refused(registry, "exactly one '{}'", "birds", birds, template="a photo of a bird.", shots=2)


def test_reregistering_other_data_needs_force(birds: Path, registry: Path) -> None:
    add_dataset("birds", birds, shots=2)
    before = {p: p.read_bytes() for p in _written(registry)}
    fabricate_image_folder(birds, {"finch": 4}, start=300)
    _refused(registry, "already registered", "birds", birds, shots=2)
    assert {p: p.read_bytes() for p in _written(registry)} == before
    assert len(add_dataset("birds", birds, shots=2, force=True).entry.classnames) == 5


def test_run_keys_follow_the_registered_split(birds: Path) -> None:
    """Runs on a dataset re-registered with other images (`--force`) are keyed apart from the old ones; benchmark
    datasets' keys do not depend on any registration."""
    add_dataset("birds", birds, shots=2)
    settings = load_settings({"data.dataset": "birds"}, env={}).settings
    benchmark = load_settings({"data.dataset": "oxford_pets"}, env={}).settings
    before, pets = run_key("coop", settings, None, ("data",)), run_key("coop", benchmark, None, ("data",))
    assert run_key("coop", settings, None, ("data",)) == before  # stable while the split is
    fabricate_image_folder(birds, {"finch": 4}, start=300)
    add_dataset("birds", birds, shots=2, force=True)
    assert run_key("coop", settings, None, ("data",)) != before
    assert run_key("coop", benchmark, None, ("data",)) == pets


def _manifest(root: Path, lines: list[str], name: str = "labels.csv") -> Path:
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / name


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["file,label", "cat/img_00.png,cat"], "img_99.png listed in row 3"),
        (["path,label", "cat/img_00.png,cat", "cat/img_00.png,cat"], "is listed twice in the manifest"),
        (["path,label", "../outside.png,cat"], "lies outside the manifest's folder"),
        (["path,label,split", "cat/img_00.png,cat,holdout"], "split 'holdout'"),
        (["image,category", "cat/bad.png,cat"], "cat/bad.png cannot be read"),
        (["name,class_id", "cat/img_00.png,cat"], "needs a header with 'path' and 'label' columns"),
    ],
)
def test_bad_manifests_are_named(scratch: Path, registry: Path, lines: list[str], expected: str) -> None:
    root = fabricate_image_folder(scratch / "pics", {"cat": 4, "dog": 4})
    write_corrupt_image(root / "cat" / "bad.png")
    good = [f"{p.relative_to(root).as_posix()},{p.parent.name}" for p in sorted(root.rglob("img_*.png"))]
    header, *rows = lines
    if "listed in row 3" in expected:
        rows = [*rows, "cat/img_99.png,cat"]
    elif "cannot be read" in expected:
        rows = [*good, *rows]
    _refused(registry, expected, "pics", _manifest(root, [header, *rows]), shots=1)


def test_manifest_class_without_images_is_named(scratch: Path, registry: Path) -> None:
    root = fabricate_image_folder(scratch / "pics", {"cat": 4, "dog": 4})
    names = scratch / "names.txt"
    names.write_text("cat\ndog\nbird\n", encoding="utf-8")
    rows = [f"{p.relative_to(root).as_posix()},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    _refused(registry, "Class 'bird' of", "pics", _manifest(root, ["path,label", *rows]), classnames_file=names,
             shots=1)


def test_cli_refusal_is_one_line_with_nonzero_exit(birds: Path, registry: Path) -> None:
    write_corrupt_image(birds / "cardinal" / "zz.jpg")
    env = {**os.environ, DATASETS_DIR_ENV: str(registry), "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", "from sempt_cli.cli.app import main; main()", "data", "add", "birds", str(birds),
         "--shots", "2"], capture_output=True, text=True, env=env, check=False,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert "zz.jpg" in " ".join(lines) and " ".join(lines).startswith("Error:")
    assert not registry.exists() or not _written(registry)


def test_a_split_file_edited_after_registration_is_refused(birds: Path) -> None:
    add_dataset("birds", birds, shots=2)
    path = split_path("birds")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["train"], data["test"] = data["train"][:-1], [*data["test"], data["train"][-1]]
    path.write_text(json.dumps(data, indent=4), encoding="utf-8")
    with pytest.raises(DatasetError, match="changed since `sempt data add` wrote it"):
        load_dataset("birds", birds)
    [status] = [s for s in check_data_root(birds, ["birds"])]
    assert status.state == "malformed" and str(path) in status.message
