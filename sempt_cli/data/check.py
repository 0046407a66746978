"""`sempt data check`: which datasets under a data root are usable, and what to do about the others.

Why a separate pass: Dassl aborts on the first missing image, often after minutes of start-up; checking
every dataset up front turns that into one table with the exact file and fix for each problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sempt_cli.data.readers import MissingDataError, absolute_root, load_dataset, resolve_dataset
from sempt_cli.data.registry import DEMO_KEY, all_datasets
from sempt_cli.errors import DatasetError

__all__ = ["DatasetState", "DatasetStatus", "check_data_root", "check_dataset"]

DatasetState = Literal["found", "missing", "malformed"]


@dataclass
class DatasetStatus:
    """The outcome for one dataset.

    `message` is complete user-facing text: for `found` the class count and split sizes; for `missing` the
    path that is absent, where to get the data and where it must go; for `malformed` the file and what is
    wrong with it (the `DatasetError` text, hint included). `path` is the dataset folder.
    """

    name: str
    state: DatasetState
    message: str
    counts: dict[str, int] = field(default_factory=dict)
    path: Path | None = None


def check_dataset(name: str, data_root: Path, deep: bool = False, num_threads: int = 4) -> DatasetStatus:
    """Load one dataset (checking that listed files exist); with `deep`, also decode every image."""
    info = resolve_dataset(name)
    root = absolute_root(data_root)
    folder = info.dataset_dir(root)
    if not folder.is_dir():
        return DatasetStatus(
            info.key,
            "missing",
            f"Dataset {info.key}: folder {folder} does not exist. "
            f"Get it from: {info.download}; it must end up at {folder}.",
            path=folder,
        )
    try:
        splits = load_dataset(info.key, root, check_files=True)
    except MissingDataError as exc:
        return DatasetStatus(info.key, "missing", str(exc), path=folder)
    except DatasetError as exc:
        return DatasetStatus(info.key, "malformed", str(exc), path=folder)

    counts = splits.split_sizes()
    sizes = f"{counts['train']}/{counts['val']}/{counts['test']}"
    message = f"Dataset {info.key}: {counts['classes']} classes, train/val/test = {sizes} images"
    if info.sizes is not None and tuple(info.sizes) != (counts["train"], counts["val"], counts["test"]):
        official = "/".join(str(n) for n in info.sizes)
        message += f" (the official split has {official})"
    message += "."

    if deep:
        from sempt_cli.data.images import scan_images

        samples = [*splits.train, *(splits.val or []), *splits.test]
        bad = scan_images(samples, num_threads=num_threads)
        counts["unreadable"] = len(bad)
        if bad:
            path, reason = bad[0]
            return DatasetStatus(
                info.key,
                "malformed",
                f"Dataset {info.key}: image {path} cannot be read ({reason}); {len(bad)} images are unreadable. "
                "Re-extract the dataset, or drop the unreadable images (`scan_images` + `drop_unreadable`).",
                counts=counts,
                path=folder,
            )
    return DatasetStatus(info.key, "found", message, counts=counts, path=folder)


def check_data_root(
    data_root: Path, names: list[str] | None = None, deep: bool = False, num_threads: int = 4
) -> list[DatasetStatus]:
    """Status of each dataset in `names` (default: every benchmark and registered dataset; the demo world only
    when named)."""
    if names is None:
        keys = [key for key in all_datasets() if key != DEMO_KEY]
    else:
        keys = [resolve_dataset(name).key for name in names]
    return [check_dataset(key, data_root, deep=deep, num_threads=num_threads) for key in keys]
