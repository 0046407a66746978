"""Datasets: the registry (benchmarks and the user's own, `add_dataset`), CoOp/Dassl layout readers, few-shot and
base/new splits, transforms, checks.

Importing this package is cheap (no torch): `ImageDataset`, `scan_images`, `drop_unreadable`, `load_image`
and the transform builders are imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sempt_cli.data.add import add_dataset
from sempt_cli.data.check import DatasetStatus, check_data_root, check_dataset
from sempt_cli.data.fewshot import fewshot_cache_path, fewshot_splits, generate_fewshot
from sempt_cli.data.readers import MissingDataError, load_dataset, resolve_dataset
from sempt_cli.data.records import DatasetSplits, Sample, prompt_name
from sempt_cli.data.registry import (
    DATASETS,
    DEMO_KEY,
    DatasetInfo,
    all_classnames,
    all_datasets,
    bundled_classnames,
    bundled_imagenet_classnames,
    bundled_wnid_subset,
    canonical_dataset_name,
    dataset_names,
    get_dataset_info,
    user_datasets,
)
from sempt_cli.data.subsample import SubsampleMode, split_base_new, subsample_classes
from sempt_cli.lazy import lazy_exports

if TYPE_CHECKING:
    from sempt_cli.data.images import ImageDataset, drop_unreadable, load_image, scan_images
    from sempt_cli.data.transforms import (
        CLIP_MEAN,
        CLIP_STD,
        build_transform,
        clip_test_transform,
        clip_train_transform,
    )

__getattr__ = lazy_exports(__name__, {
    "sempt_cli.data.images": ("ImageDataset", "drop_unreadable", "load_image", "scan_images"),
    "sempt_cli.data.transforms": (
        "CLIP_MEAN", "CLIP_STD", "build_transform", "clip_test_transform", "clip_train_transform",
    ),
})


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DATASETS",
    "DEMO_KEY",
    "DatasetInfo",
    "DatasetSplits",
    "DatasetStatus",
    "ImageDataset",
    "MissingDataError",
    "Sample",
    "SubsampleMode",
    "add_dataset",
    "all_classnames",
    "all_datasets",
    "build_transform",
    "bundled_classnames",
    "bundled_imagenet_classnames",
    "bundled_wnid_subset",
    "canonical_dataset_name",
    "check_data_root",
    "check_dataset",
    "clip_test_transform",
    "clip_train_transform",
    "dataset_names",
    "drop_unreadable",
    "fewshot_cache_path",
    "fewshot_splits",
    "generate_fewshot",
    "get_dataset_info",
    "load_dataset",
    "load_image",
    "prompt_name",
    "resolve_dataset",
    "scan_images",
    "split_base_new",
    "subsample_classes",
    "user_datasets",
]
