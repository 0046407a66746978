"""The in-memory form of a dataset: labelled image paths grouped into train/val/test.

Kept free of torch and PIL so that listing, checking and few-shot sampling stay cheap to import. The
fields mirror Dassl's `Datum` (impath, label, classname; `domain` is always 0 in these benchmarks, so it is
dropped) and Dassl's dataset object (`train_x`, `val`, `test`, classnames derived from train).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One labelled image: an absolute path, a 0-based label and the dataset's class name for it."""

    path: Path
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """A dataset's splits in the CoOp/Dassl sense.

    `classnames` is in label order and keeps the names exactly as the split files store them (underscores
    included); use `prompt_name` when building prompts. `val` is None for the test-only ImageNet variants.
    For ImageNet, which has no separate validation split, `val` is the very same list as `test` and
    `val_is_test` is True so that few-shot sampling and base/new subsampling keep it that way.
    Test-only datasets (ImageNet-V2/Sketch/A/R) have an empty `train` (Dassl sets `train_x = test`, which
    only matters for building an unused train loader; an empty list makes accidental training on test
    images impossible).

    `image_root` is the folder that relative paths in split files (and in the few-shot cache) are resolved
    against, so caches stay valid when the data root moves.
    """

    name: str
    classnames: list[str]
    train: list[Sample]
    val: list[Sample] | None
    test: list[Sample]
    image_root: Path | None = None
    val_is_test: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split_sizes(self) -> dict[str, int]:
        """Number of samples per split (val is 0 when absent), for `sempt data check` style summaries."""
        return {
            "train": len(self.train),
            "val": 0 if self.val is None else len(self.val),
            "test": len(self.test),
            "classes": self.num_classes,
        }


def prompt_name(classname: str) -> str:
    """The class name as it enters a prompt: every `_` becomes a space, nothing else changes.

    This is the only cleaning every CoOp/PromptKD trainer applies (no lower-casing, no stripping), so it is
    the one place the tool applies it too.
    """
    return classname.replace("_", " ")
