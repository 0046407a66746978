"""Features of a frozen encoder for every augmented view a training run will see, cached per epoch.

Because every view is a function of (seed, epoch, index) (`engine.loader`), a frozen teacher's image features
for epoch e can be computed once, stored as one fp16 [n, d] file, and looked up by index at every step of every
later run with the same teacher, data and seed — an ablation grid pays for the teacher once. A disk budget
caps how many epochs are stored; later epochs are computed live from the very same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import save
from torch import Tensor
from torch.utils.data import DataLoader

from sempt_cli.engine.cache import read_cached
from sempt_cli.engine.loader import SeededImageDataset
from sempt_cli.engine.runtime import Runtime
from sempt_cli.engine.step import EpochClock
from sempt_cli.errors import SemptError
from sempt_cli.io import atomic_write_bytes, atomic_write_json
from sempt_cli.models.checkpoint import non_finite

Encoder = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class CachePlan:
    """How many epochs fit the budget, and what that means for the run (printed so users know the mode)."""

    epochs_cached: int
    epochs: int
    bytes_per_epoch: int

    def describe(self) -> str:
        size = self.bytes_per_epoch / 2**30
        if self.epochs_cached >= self.epochs:
            return f"teacher image features cached for all {self.epochs} epochs ({size:.2f} GiB each)"
        if self.epochs_cached == 0:
            return f"teacher image features computed live (one epoch needs {size:.2f} GiB > budget)"
        return (f"teacher image features cached for epochs 1–{self.epochs_cached} of {self.epochs} "
                f"({size:.2f} GiB each), computed live after that")


def plan_cache(num_items: int, dim: int, epochs: int, budget_gb: float) -> CachePlan:
    per_epoch = num_items * dim * 2  # fp16
    fitting = math.floor(budget_gb * 2**30 / per_epoch) if per_epoch else epochs
    return CachePlan(min(epochs, fitting), epochs, per_epoch)


class ViewFeatureCache:
    """`features(epoch, indices)` for the cached epochs; `ensure(epoch)` computes a missing epoch first."""

    def __init__(
        self,
        root: Path,
        dataset: SeededImageDataset,
        encoder: Encoder,
        runtime: Runtime,
        plan: CachePlan,
        *,
        batch_size: int = 100,
        workers: int = 0,
        describe: dict[str, Any] | None = None,
        console: Console | None = None,
    ) -> None:
        self.root = root
        self.dataset = dataset
        self.encoder = encoder
        self.runtime = runtime
        self.plan = plan
        self.batch_size = batch_size
        self.workers = workers
        self.console = console or Console(stderr=True)
        self._epoch: int | None = None
        self._features: Tensor | None = None
        self.last_clock: EpochClock | None = None
        """Where the last computed epoch's time went (waiting for views vs teacher forwards)."""
        if describe is not None:
            atomic_write_json(root / "cache.json", describe)

    def is_cached(self, epoch: int) -> bool:
        return epoch <= self.plan.epochs_cached

    def path(self, epoch: int) -> Path:
        return self.root / f"epoch-{epoch:03d}.safetensors"

    def ensure(self, epoch: int) -> None:
        """Make epoch `epoch`'s features available (from disk, or computed now and stored atomically)."""
        if not self.is_cached(epoch) or self._epoch == epoch:
            return
        path = self.path(epoch)
        stored = read_cached(path, self.console) if path.is_file() else None
        if stored is None or tuple(stored.get("features", torch.empty(0)).shape[:1]) != (len(self.dataset),):
            features = self._compute(epoch).to(torch.float16).contiguous()
            bad = non_finite({"features": features})
            if bad:
                raise SemptError(f"The teacher's image features for epoch {epoch} hold NaN or infinite values; "
                                 f"they were not cached in {path}.", "Check the teacher checkpoint.")
            atomic_write_bytes(path, save({"features": features}))
            stored = {"features": features}
        self._features = stored["features"].to(self.runtime.device)
        self._epoch = epoch

    @torch.no_grad()
    def _compute(self, epoch: int) -> Tensor:
        view = SeededImageDataset(self.dataset.samples, self.dataset.transform, self.dataset.seed,
                                  self.dataset.images.on_corrupt)
        view.set_epoch(epoch)
        cuda = self.runtime.device.type == "cuda"
        loader = DataLoader(view, batch_size=self.batch_size, num_workers=self.workers, pin_memory=cuda,
                            prefetch_factor=4 if self.workers else None)
        chunks: list[Tensor] = []
        self.last_clock = EpochClock()
        with self.console.status(f"Caching teacher image features for epoch {epoch} ({len(view)} views) ..."):
            for images, _, _ in self.last_clock.batches(loader):
                with self.last_clock.step(len(images)), self.runtime.autocast():
                    # kept on the device (fp16, as stored) until the end: no host synchronisation per batch
                    chunks.append(self.encoder(images.to(self.runtime.device, non_blocking=True)).to(torch.float16))
            with self.last_clock.step(0):
                return torch.cat(chunks).cpu()

    def features(self, epoch: int, indices: Sequence[int] | Tensor) -> Tensor:
        self.ensure(epoch)
        assert self._features is not None
        index = torch.as_tensor(indices, device=self._features.device, dtype=torch.long)
        return self._features.index_select(0, index)
