"""Base-to-novel class subsampling exactly as CoOp's `OxfordPets.subsample_classes` (spec §5).

Why a separate step applied after few-shot sampling: that is the order CoOp uses, and because the few-shot
cache does not depend on the mode, base training and new evaluation see the same draw.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

from sempt_cli.data.records import DatasetSplits, Sample

__all__ = ["SubsampleMode", "split_base_new", "subsample_classes"]

SubsampleMode = Literal["all", "base", "new"]


def split_base_new(num_classes: int) -> tuple[int, int]:
    """(base, new) class counts: base gets ceil(n/2), so odd n gives the extra class to base."""
    base = math.ceil(num_classes / 2)
    return base, num_classes - base


def subsample_classes(splits: DatasetSplits, mode: SubsampleMode) -> DatasetSplits:
    """Keep the base (first ceil(n/2) labels) or new (the rest, relabelled y - m) classes in every split.

    The labels are those present in `train` (after few-shot sampling), as in CoOp; test-only datasets,
    whose train is empty, use the labels of `test`. `all` returns `splits` untouched. ImageNet's val stays
    the (subsampled) test list.
    """
    if mode == "all":
        return splits
    if mode not in ("base", "new"):
        raise ValueError(f"subsample mode must be 'all', 'base' or 'new', got {mode!r}")
    reference = splits.train if splits.train else splits.test
    labels = sorted({sample.label for sample in reference})
    m, _ = split_base_new(len(labels))
    selected = labels[:m] if mode == "base" else labels[m:]
    relabel = {label: new for new, label in enumerate(selected)}

    def keep(samples: list[Sample]) -> list[Sample]:
        return [Sample(s.path, relabel[s.label], s.classname) for s in samples if s.label in relabel]

    train = keep(splits.train)
    test = keep(splits.test)
    if splits.val is None:
        val = None
    elif splits.val_is_test:
        val = test
    else:
        val = keep(splits.val)
    classnames = [splits.classnames[label] for label in selected]
    return replace(splits, classnames=classnames, train=train, val=val, test=test)
