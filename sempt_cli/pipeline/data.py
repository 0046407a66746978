"""Turn data settings into the sample lists a job trains and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from sempt_cli.data import (
    DEMO_KEY,
    DatasetSplits,
    fewshot_splits,
    load_dataset,
    split_base_new,
    subsample_classes,
)
from sempt_cli.data.demo import ensure_demo_world
from sempt_cli.settings import Settings


def data_root(settings: Settings) -> Path:
    """The demo world lives in the cache (generated on first use); everything else under `paths.data_root`."""
    if settings.data.dataset == DEMO_KEY:
        return ensure_demo_world(settings.paths.cache_dir)
    return settings.paths.data_root


@dataclass(frozen=True)
class PreparedData:
    """The full dataset, the labelled training subset, and the class split the evaluation needs."""

    full: DatasetSplits
    train: DatasetSplits
    num_base: int

    @property
    def base_classnames(self) -> list[str]:
        return self.full.classnames[: self.num_base]

    @property
    def novel_classnames(self) -> list[str]:
        return self.full.classnames[self.num_base :]


def prepare_data(settings: Settings, console: Console | None = None) -> PreparedData:
    """Read the dataset, draw the few-shot sample (cached), keep the `data.subsample` classes.

    With `data.on_corrupt = skip`, unreadable training images are found up front and dropped (counted and
    reported), rather than silently duplicated mid-training.
    """
    full = load_dataset(settings.data.dataset, data_root(settings))
    sampled = full
    if settings.data.shots:
        sampled = fewshot_splits(full, settings.data.shots, settings.data.seed, settings.paths.cache_dir)
    train = subsample_classes(sampled, settings.data.subsample)
    if settings.data.on_corrupt == "skip":
        from sempt_cli.data.images import drop_unreadable, scan_images

        bad = scan_images(train.train)
        if bad:
            train.train = drop_unreadable(train.train, bad)
            if console is not None:
                console.print(f"[yellow]Skipped {len(bad)} unreadable training image(s)[/], "
                              f"e.g. {escape(str(bad[0][0]))}")
    num_base, _ = split_base_new(full.num_classes)
    return PreparedData(full, train, num_base)
