"""K-shot sampling exactly as Dassl's `generate_fewshot_dataset`, with a portable JSON cache.

Why exact: the published few-shot numbers come from one particular draw per (dataset, K, seed). Dassl seeds
Python's global `random` with the run seed, builds the dataset, then for train (K per class) and val
(min(K, 4) per class) groups items by label in first-appearance order and calls `random.sample(group, K)`,
keeping groups smaller than K whole. We replay that on a private `random.Random(seed)`, which yields the same
stream as `random.seed(seed)` without touching global state (spec §4.2; this reproduced 42/42 third-party
selections).

Why our own cache: Dassl pickles absolute paths into `<dataset>/split_fewshot/` (unsafe to load, breaks
when the data root moves, and a stale file silently wins over the seed). Ours is JSON with paths relative
to the dataset's image folder, lives under the tool's cache dir, and its name carries a hash of the input
split lists, so a cache made from a different split is never reused.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from sempt_cli.data.records import DatasetSplits, Sample
from sempt_cli.errors import DatasetError
from sempt_cli.io import atomic_write_json, stable_hash

__all__ = [
    "VAL_SHOTS_CAP",
    "fewshot_cache_path",
    "fewshot_splits",
    "generate_fewshot",
]

T = TypeVar("T")
VAL_SHOTS_CAP = 4
"""Dassl samples the validation split with min(K, 4) images per class."""
_CACHE_FORMAT = 1


def generate_fewshot(
    samples: Sequence[T], num_shots: int, rng: random.Random, label_of: Callable[[T], int] | None = None
) -> list[T]:
    """Dassl's per-class draw: group by label (first-appearance order), `rng.sample(group, K)` per group.

    Groups with fewer than K items are kept whole, in list order. `label_of` extracts the label (default:
    the item's `.label`), so the same function serves `Sample`s and plain tuples in tests.
    """
    if num_shots < 1:
        return list(samples)
    get_label: Callable[[Any], int] = label_of if label_of is not None else (lambda item: item.label)
    groups: dict[int, list[T]] = {}
    for item in samples:
        groups.setdefault(get_label(item), []).append(item)
    chosen: list[T] = []
    for group in groups.values():
        chosen.extend(rng.sample(group, num_shots) if len(group) >= num_shots else group)
    return chosen


def _rows(samples: Sequence[Sample], image_root: Path | None) -> list[list[Any]]:
    """Samples as `[relative_path, label, classname]` rows (the split-JSON schema), POSIX separators."""
    prefix = "" if image_root is None else str(image_root).rstrip(os.sep) + os.sep
    rows: list[list[Any]] = []
    for sample in samples:
        path = str(sample.path)
        if prefix and path.startswith(prefix):
            path = path[len(prefix) :]
        rows.append([path.replace(os.sep, "/"), sample.label, sample.classname])
    return rows


def _splits_key(splits: DatasetSplits, sample_val: bool) -> str:
    train = _rows(splits.train, splits.image_root)
    val = _rows(splits.val or [], splits.image_root) if sample_val else None
    return stable_hash(_CACHE_FORMAT, splits.name, train, val)


def fewshot_cache_path(cache_dir: Path, splits: DatasetSplits, num_shots: int, seed: int) -> Path:
    """`<cache_dir>/fewshot/<dataset>/shot_{K}-seed_{S}-<hash of the input train/val lists>.json`."""
    key = _splits_key(splits, _samples_val(splits))
    return Path(cache_dir) / "fewshot" / splits.name / f"shot_{num_shots}-seed_{seed}-{key}.json"


def _samples_val(splits: DatasetSplits) -> bool:
    return splits.val is not None and not splits.val_is_test


def fewshot_splits(splits: DatasetSplits, num_shots: int, seed: int, cache_dir: Path | None = None) -> DatasetSplits:
    """The K-shot version of `splits` for `seed`: train K per class, val min(K, 4) per class, test untouched.

    `num_shots=0` means all training data (no sampling). ImageNet (`val_is_test`) samples only train; its
    val stays the test list. Test-only datasets (empty train) are returned unchanged. With `cache_dir`, the
    selection is read from / written to the JSON cache (atomically); a corrupt cache file is regenerated.
    Unlike Dassl's CLI, seed 0 is a seed like any other.
    """
    if num_shots < 0:
        raise ValueError(f"num_shots must be >= 0 (0 = all images), got {num_shots}")
    if num_shots == 0 or not splits.train:
        return splits
    sample_val = _samples_val(splits)
    cache_path = fewshot_cache_path(cache_dir, splits, num_shots, seed) if cache_dir is not None else None

    selection = _load_cache(cache_path, splits, sample_val) if cache_path is not None else None
    if selection is None:
        rng = random.Random(seed)
        train = generate_fewshot(splits.train, num_shots, rng)
        val = generate_fewshot(splits.val or [], min(num_shots, VAL_SHOTS_CAP), rng) if sample_val else None
        selection = (train, val)
        if cache_path is not None:
            payload: dict[str, Any] = {"train": _rows(train, splits.image_root)}
            if val is not None:
                payload["val"] = _rows(val, splits.image_root)
            try:
                atomic_write_json(cache_path, payload, indent=None)
            except OSError as exc:
                raise DatasetError(
                    f"Few-shot cache {cache_path} cannot be written ({exc.strerror or exc}).",
                    hint="Point the cache dir (paths.cache_dir) at a writable folder.",
                ) from exc

    train, val = selection
    return replace(splits, train=train, val=val if sample_val else splits.val)


def _load_cache(path: Path, splits: DatasetSplits, sample_val: bool) -> tuple[list[Sample], list[Sample] | None] | None:
    """The cached selection, mapped back onto the loaded samples; None if absent or unusable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        train = _match(data["train"], splits.train, splits.image_root)
        val = _match(data["val"], splits.val or [], splits.image_root) if sample_val else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if train is None or (sample_val and val is None):
        return None
    return train, val


def _match(rows: Any, pool: Sequence[Sample], image_root: Path | None) -> list[Sample] | None:
    """Turn cached rows back into the very `Sample` objects of `pool` (None if any row is unknown)."""
    if not isinstance(rows, list):
        return None
    by_key = {tuple(row): sample for row, sample in zip(_rows(pool, image_root), pool, strict=True)}
    out: list[Sample] = []
    for row in rows:
        if not isinstance(row, list):
            return None
        sample = by_key.get(tuple(row))
        if sample is None:
            return None
        out.append(sample)
    return out
