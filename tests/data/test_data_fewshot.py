"""Few-shot sampling: Dassl's algorithm on the global `random` module, replayed exactly, and its cache."""

from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fabricate import BENCHMARKS, TEST_ONLY, fabricate_dataset

from sempt_cli.data import (
    DatasetSplits,
    Sample,
    fewshot_cache_path,
    fewshot_splits,
    generate_fewshot,
    load_dataset,
)
from sempt_cli.data import fewshot as fewshot_module
from sempt_cli.errors import DatasetError

TRAINABLE = [name for name in BENCHMARKS if name not in TEST_ONLY]


def reference_fewshot(
    train: list[Any], val: list[Any] | None, num_shots: int, seed: int
) -> tuple[list[Any], list[Any] | None]:
    """Spec §4.2 written out independently: `random.seed(seed)` then Dassl's loop on the global module."""
    state = random.getstate()
    try:
        random.seed(seed)

        def generate(data: list[Any], k: int) -> list[Any]:
            tracker: dict[int, list[Any]] = defaultdict(list)
            for item in data:
                tracker[item.label].append(item)
            output: list[Any] = []
            for items in tracker.values():
                output.extend(random.sample(items, k) if len(items) >= k else items)
            return output

        new_train = generate(train, num_shots)
        new_val = generate(val, min(num_shots, 4)) if val is not None else None
        return new_train, new_val
    finally:
        random.setstate(state)


@pytest.fixture(scope="module")
def loaded(benchmark_root: Path) -> dict[str, DatasetSplits]:
    return {name: load_dataset(name, benchmark_root) for name in TRAINABLE}


@pytest.mark.parametrize("name", TRAINABLE)
def test_counts_and_equality_with_reference(name: str, loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded[name]
    n = splits.num_classes
    shot = fewshot_splits(splits, 2, seed=1)
    assert len(shot.train) == 2 * n
    assert sorted({s.label for s in shot.train}) == list(range(n))
    assert shot.test is splits.test
    if name == "imagenet":
        ref_train, _ = reference_fewshot(splits.train, None, 2, 1)
        assert shot.val is shot.test
    else:
        ref_train, ref_val = reference_fewshot(splits.train, splits.val, 2, 1)
        assert shot.val == ref_val
        assert shot.val is not None and len(shot.val) == 2 * n
    assert shot.train == ref_train


@pytest.mark.parametrize("name", TRAINABLE)
def test_determinism_per_seed(name: str, loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded[name]
    first = fewshot_splits(splits, 2, seed=1)
    again = fewshot_splits(splits, 2, seed=1)
    other = fewshot_splits(splits, 2, seed=2)
    assert first.train == again.train and first.val == again.val
    assert first.train != other.train


def test_val_uses_min_k_4_after_train_on_the_same_stream(scratch: Path) -> None:
    root = fabricate_dataset("eurosat", scratch, (10, 6, 1))
    splits = load_dataset("eurosat", root)
    for shots in (1, 2, 4, 8):
        shot = fewshot_splits(splits, shots, seed=3)
        assert shot.val is not None
        assert (len(shot.train), len(shot.val)) == (10 * shots, 10 * min(shots, 4))
        assert (shot.train, shot.val) == reference_fewshot(splits.train, splits.val, shots, 3)
    # val is drawn from the stream *after* train: sampling val alone with the same seed differs
    alone = generate_fewshot(splits.val or [], 4, random.Random(3))
    assert fewshot_splits(splits, 8, seed=3).val != alone


def test_small_groups_are_kept_whole_and_shots_zero_means_all(loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded["dtd"]  # 3 train, 2 val per class
    shot = fewshot_splits(splits, 16, seed=1)
    assert shot.train == splits.train and shot.val == splits.val
    assert fewshot_splits(splits, 0, seed=1) is splits
    with pytest.raises(ValueError, match="num_shots must be >= 0"):
        fewshot_splits(splits, -1, seed=1)


@pytest.mark.parametrize("name", ["oxford_flowers", "stanford_cars"])
def test_groups_follow_first_appearance_order(name: str, loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded[name]
    first_seen = list(dict.fromkeys(s.label for s in splits.train))
    assert first_seen != sorted(first_seen)
    shot = fewshot_splits(splits, 1, seed=1)
    assert [s.label for s in shot.train] == first_seen


def test_generate_fewshot_matches_global_random_on_tuples() -> None:
    rng = random.Random(0)
    items = [(rng.randrange(7), i) for i in range(200)]
    state = random.getstate()
    try:
        random.seed(42)
        groups: dict[int, list[tuple[int, int]]] = {}
        for item in items:
            groups.setdefault(item[0], []).append(item)
        expected = [x for g in groups.values() for x in (random.sample(g, 5) if len(g) >= 5 else g)]
    finally:
        random.setstate(state)
    assert generate_fewshot(items, 5, random.Random(42), label_of=lambda item: item[0]) == expected


def test_global_random_state_is_untouched(loaded: dict[str, DatasetSplits]) -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    fewshot_splits(loaded["caltech101"], 4, seed=7)
    assert random.random() == expected


def test_test_only_datasets_are_returned_unchanged(benchmark_root: Path) -> None:
    splits = load_dataset("imagenet_a", benchmark_root)
    assert fewshot_splits(splits, 16, seed=1) is splits


# ------------------------------------------------------------------------------------------------- cache


def test_cache_is_written_atomically_as_relative_json_and_reused(
    loaded: dict[str, DatasetSplits], scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = loaded["caltech101"]
    shot = fewshot_splits(splits, 2, seed=1, cache_dir=scratch)
    path = fewshot_cache_path(scratch, splits, 2, 1)
    assert path.parent == scratch / "fewshot" / "caltech101"
    assert path.name.startswith("shot_2-seed_1-") and path.suffix == ".json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    data = json.loads(path.read_text())
    assert set(data) == {"train", "val"}
    assert data["train"][0] == [shot.train[0].path.relative_to(splits.image_root).as_posix(), 0, "face"]
    assert data["train"][0][0].startswith("Faces/")
    assert str(splits.image_root) not in path.read_text()

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("sampled again instead of reading the cache")

    monkeypatch.setattr(fewshot_module, "generate_fewshot", boom)
    cached = fewshot_splits(splits, 2, seed=1, cache_dir=scratch)
    assert cached.train == shot.train and cached.val == shot.val


def test_cache_written_once_per_key(loaded: dict[str, DatasetSplits], scratch: Path) -> None:
    splits = loaded["eurosat"]
    for seed in (1, 2, 3):
        fewshot_splits(splits, 4, seed=seed, cache_dir=scratch)
    fewshot_splits(splits, 8, seed=1, cache_dir=scratch)
    names = sorted(p.name.rsplit("-", 1)[0] for p in (scratch / "fewshot" / "eurosat").iterdir())
    assert names == ["shot_4-seed_1", "shot_4-seed_2", "shot_4-seed_3", "shot_8-seed_1"]


def test_stale_cache_for_another_split_is_not_reused(loaded: dict[str, DatasetSplits], scratch: Path) -> None:
    splits = loaded["oxford_pets"]
    fewshot_splits(splits, 2, seed=1, cache_dir=scratch)
    changed = replace(splits, train=splits.train[1:])
    assert fewshot_cache_path(scratch, changed, 2, 1) != fewshot_cache_path(scratch, splits, 2, 1)
    shot = fewshot_splits(changed, 2, seed=1, cache_dir=scratch)
    assert (shot.train, shot.val) == reference_fewshot(changed.train, changed.val, 2, 1)
    assert len(list((scratch / "fewshot" / "oxford_pets").iterdir())) == 2


def test_tampered_or_corrupt_cache_is_regenerated(loaded: dict[str, DatasetSplits], scratch: Path) -> None:
    splits = loaded["dtd"]
    fresh = fewshot_splits(splits, 2, seed=5, cache_dir=scratch)
    path = fewshot_cache_path(scratch, splits, 2, 5)
    for content in ("{not json", json.dumps({"train": [["nope.jpg", 0, "banded"]], "val": []}), "[]"):
        path.write_text(content)
        again = fewshot_splits(splits, 2, seed=5, cache_dir=scratch)
        assert again.train == fresh.train and again.val == fresh.val
        assert json.loads(path.read_text())["train"][0][1] == 0


def test_cache_survives_moving_the_data_root(scratch: Path) -> None:
    first = fabricate_dataset("ucf101", scratch / "a", (3, 2, 1))
    cache = scratch / "cache"
    shot_a = fewshot_splits(load_dataset("ucf101", first), 2, seed=1, cache_dir=cache)
    shutil.move(first, scratch / "b")
    splits_b = load_dataset("ucf101", scratch / "b")
    shot_b = fewshot_splits(splits_b, 2, seed=1, cache_dir=cache)
    assert len(list((cache / "fewshot" / "ucf101").iterdir())) == 1
    assert [s.path.relative_to(scratch / "b") for s in shot_b.train] == [
        s.path.relative_to(scratch / "a") for s in shot_a.train
    ]
    assert all(s.path.is_file() for s in shot_b.train)


def test_imagenet_cache_holds_only_train(loaded: dict[str, DatasetSplits], scratch: Path) -> None:
    splits = loaded["imagenet"]
    shot = fewshot_splits(splits, 1, seed=1, cache_dir=scratch)
    data = json.loads(fewshot_cache_path(scratch, splits, 1, 1).read_text())
    assert set(data) == {"train"} and len(data["train"]) == 1000
    assert data["train"][0][0].startswith("train/n01440764/")
    cached = fewshot_splits(splits, 1, seed=1, cache_dir=scratch)
    assert cached.train == shot.train and cached.val is cached.test is splits.test


def test_samples_are_frozen() -> None:
    sample = Sample(Path("/x.jpg"), 0, "x")
    with pytest.raises(AttributeError):
        sample.label = 1  # type: ignore[misc]


def test_unwritable_cache_is_a_dataset_error(loaded: dict[str, DatasetSplits], scratch: Path) -> None:
    blocker = scratch / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DatasetError, match=r"Few-shot cache .*shot_1-seed_1-.*\.json cannot be written"):
        fewshot_splits(loaded["eurosat"], 1, seed=1, cache_dir=blocker)
