"""Deterministic batches and augmentations: the image order and every augmented view are functions of
(seed, epoch, index). That gives exact resume, identical DDP/single-process training, and lets a cache of
teacher features computed for (seed, epoch, index) match the pixels the student sees."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sempt_cli.data.images import ImageDataset, OnCorrupt
from sempt_cli.data.records import Sample
from sempt_cli.engine.runtime import seeded


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing integers, so (seed, epoch, index) streams never collide like seed+epoch would."""
    digest = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SeededImageDataset(Dataset):
    """Images with an augmentation drawn from a generator seeded by (seed, epoch, index).

    Call `set_epoch` before building each epoch's loader (workers copy the dataset when they start), or index
    with `(epoch, index)` pairs, as `EpochLoader` does so that its workers can live across epochs.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Any], torch.Tensor],
        seed: int,
        on_corrupt: OnCorrupt = "error",
    ) -> None:
        self.images = ImageDataset(samples, transform=None, on_corrupt=on_corrupt)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    @property
    def samples(self) -> list[Sample]:
        return self.images.samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        """(view, label, index): the index names the view (with the epoch), even if a corrupt image was replaced.
        `key` is an index (of epoch `self.epoch`) or an `(epoch, index)` pair."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        image, label, _ = self.images[index]
        with seeded(derive_seed(self.seed, epoch, index)):
            tensor = self.transform(image)
        return tensor, label, index


class EpochBatches:
    """Which images form each optimizer step of an epoch, and which part of it this process computes.

    Like Dassl's RandomSampler with drop_last (when there are at least `batch_size` images), but the
    permutation is seeded by (seed, epoch), so it can be replayed from any step.
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int, world_size: int = 1, rank: int = 0, micro_batches: int = 1
    ) -> None:
        if num_items == 0:
            raise ValueError("cannot train on an empty dataset")
        self.num_items = num_items
        self.batch_size = min(batch_size, num_items) if world_size == 1 else batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.micro_batches = micro_batches
        self.steps_per_epoch = max(1, num_items // self.batch_size)

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """For each step of `epoch`: this rank's micro-batches (lists of dataset indices)."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, -1))
        order = torch.randperm(self.num_items, generator=generator).tolist()
        share = self.batch_size // self.world_size
        steps = []
        for step in range(self.steps_per_epoch):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            mine = batch[self.rank * share:(self.rank + 1) * share]
            steps.append([part.tolist() for part in np.array_split(np.asarray(mine), self.micro_batches)])
        return steps


def make_loader(dataset: Dataset, plan: Sequence[Sequence[Sequence[int]]], workers: int) -> DataLoader:
    """A loader yielding the planned micro-batches in order, `(images, labels, indices)` each."""
    batch_sampler = [list(micro) for step in plan for micro in step]
    return DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=workers, persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


class _Plan:
    """A batch sampler whose batches are replaced every epoch (DataLoader iterates it anew for each epoch)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EpochLoader:
    """One DataLoader for a whole run: its workers start once and stay (persistent workers), batches go to pinned
    memory on CUDA (so the copy to the GPU overlaps the step), and each worker keeps `prefetch` batches ready.

    Why the epoch travels with each index: persistent workers hold their own copy of the dataset, so
    `set_epoch` in the main process would not reach them; `(epoch, index)` keys name each view exactly as
    before, so the pixels are those of `make_loader` (tested)."""

    def __init__(self, dataset: SeededImageDataset, workers: int, prefetch: int = 4) -> None:
        self._plan = _Plan()
        options: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": prefetch} if workers else {}
        self.loader = DataLoader(dataset, batch_sampler=self._plan, num_workers=workers,
                                 pin_memory=torch.cuda.is_available(), **options)

    def epoch(self, epoch: int, plan: Sequence[Sequence[Sequence[int]]]) -> DataLoader:
        """The loader, set to yield `plan`'s micro-batches of `epoch` in order, `(images, labels, indices)` each."""
        self._plan.batches = [[(epoch, i) for i in micro] for step in plan for micro in step]
        return self.loader

    def close(self) -> None:
        """Stop the workers now (they would otherwise live as long as this object): dropping the loader's iterator
        shuts them down, as DataLoader itself does."""
        self.loader._iterator = None
