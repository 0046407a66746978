"""Base-to-novel subsampling: ceil(n/2) base classes, new relabelled y - m, every split filtered."""

from __future__ import annotations

from pathlib import Path

import pytest
from fabricate import BENCHMARKS, TEST_ONLY

from sempt_cli.data import DatasetSplits, fewshot_splits, load_dataset, split_base_new, subsample_classes

BASE_NEW = {
    "imagenet": (500, 500),
    "caltech101": (50, 50),
    "oxford_pets": (19, 18),
    "stanford_cars": (98, 98),
    "oxford_flowers": (51, 51),
    "food101": (51, 50),
    "fgvc_aircraft": (50, 50),
    "sun397": (199, 198),
    "dtd": (24, 23),
    "eurosat": (5, 5),
    "ucf101": (51, 50),
}
TRAINABLE = [name for name in BENCHMARKS if name not in TEST_ONLY]


@pytest.fixture(scope="module")
def loaded(benchmark_root: Path) -> dict[str, DatasetSplits]:
    return {name: load_dataset(name, benchmark_root) for name in TRAINABLE}


@pytest.mark.parametrize(
    ("n", "expected"), [(37, (19, 18)), (47, (24, 23)), (10, (5, 5)), (1, (1, 0)), (397, (199, 198))]
)
def test_split_base_new(n: int, expected: tuple[int, int]) -> None:
    assert split_base_new(n) == expected


@pytest.mark.parametrize("name", TRAINABLE)
def test_base_and_new_sizes_and_relabelling(name: str, loaded: dict[str, DatasetSplits]) -> None:
    splits = fewshot_splits(loaded[name], 2, seed=1)
    m, new_count = BASE_NEW[name]
    base = subsample_classes(splits, "base")
    new = subsample_classes(splits, "new")
    assert (base.num_classes, new.num_classes) == (m, new_count)
    assert base.classnames == splits.classnames[:m]
    assert new.classnames == splits.classnames[m:]
    for part, offset in ((base, 0), (new, m)):
        for split_name in ("train", "val", "test"):
            original = getattr(splits, split_name)
            kept = getattr(part, split_name)
            expected = [s for s in original if offset <= s.label < offset + part.num_classes]
            assert [(s.path, s.label + offset, s.classname) for s in kept] == [
                (s.path, s.label, s.classname) for s in expected
            ]
            assert {s.label for s in kept} == set(range(part.num_classes))
            assert all(part.classnames[s.label] == s.classname for s in kept)
    if name == "imagenet":
        assert base.val is base.test and new.val is new.test


def test_all_is_identity(loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded["oxford_pets"]
    assert subsample_classes(splits, "all") is splits
    with pytest.raises(ValueError, match="subsample mode"):
        subsample_classes(splits, "novel")  # type: ignore[arg-type]


def test_known_new_classes(loaded: dict[str, DatasetSplits]) -> None:
    pets_new = subsample_classes(loaded["oxford_pets"], "new")
    assert pets_new.classnames[0] == loaded["oxford_pets"].classnames[19]
    euro_new = subsample_classes(loaded["eurosat"], "new")
    assert euro_new.classnames == [
        "Pasture Land",
        "Permanent Crop Land",
        "Residential Buildings",
        "River",
        "Sea or Lake",
    ]
    assert subsample_classes(loaded["eurosat"], "base").classnames[0] == "Annual Crop Land"


def test_labels_come_from_train_after_fewshot(loaded: dict[str, DatasetSplits]) -> None:
    splits = loaded["eurosat"]
    # a train list lacking class 9: n = 9 labels, m = 5, new = labels 5..8; class 9 vanishes everywhere
    trimmed = DatasetSplits(
        splits.name, splits.classnames, [s for s in splits.train if s.label != 9], splits.val, splits.test
    )
    new = subsample_classes(trimmed, "new")
    assert new.num_classes == 4
    assert all(s.label < 4 for s in new.test) and len(new.test) == 4


def test_test_only_uses_test_labels(benchmark_root: Path) -> None:
    splits = load_dataset("imagenet_r", benchmark_root)
    base = subsample_classes(splits, "base")
    assert base.num_classes == 100 and base.val is None and base.train == []
    assert len(base.test) == 100
