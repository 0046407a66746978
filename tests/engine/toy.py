"""A tiny linear 'method' and image set for exercising the engine without CLIP."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from sempt_cli.data.records import Sample
from sempt_cli.engine.schedule import gaussian_aggregation_weights
from sempt_cli.protocol import Batch, LossOutput, Method


def make_samples(root: Path, num_classes: int = 3, per_class: int = 6, size: int = 12) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for label in range(num_classes):
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., label % 3] = 200
            path = folder / f"{i}.png"
            Image.fromarray(pixels).save(path)
            samples.append(Sample(path, label, f"c{label}"))
    return samples


class ToyMethod(Method):
    """Linear image encoder + learned class vectors; keeps an aggregation sum like PromptSRC's GPA."""

    name = "toy"

    def __init__(self, classnames: Sequence[str], dim: int = 8, size: int = 8) -> None:
        super().__init__(classnames)
        self.encoder = nn.Linear(3 * size * size, dim)
        self.classes = nn.Parameter(torch.randn(len(classnames), dim) * 0.1)
        self.aggregate: Tensor | None = None

    def image_embeddings(self, images: Tensor) -> Tensor:
        return F.normalize(self.encoder(images.flatten(1)), dim=-1)

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        return F.normalize(self.classes, dim=-1)

    def training_loss(self, batch: Batch) -> LossOutput:
        logits = 10 * self.image_embeddings(batch.images) @ self.class_embeddings(self.train_classnames).t()
        loss = F.cross_entropy(logits, batch.labels)
        return LossOutput(loss, {"ce": loss.detach()})

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        weight = gaussian_aggregation_weights(num_epochs, mean=num_epochs / 2, std=1.0)[epoch - 1]
        term = self.classes.detach() * weight
        self.aggregate = term.clone() if self.aggregate is None else self.aggregate + term

    def extra_state(self) -> dict[str, Tensor]:
        return {} if self.aggregate is None else {"aggregate": self.aggregate}

    def load_extra_state(self, state) -> None:  # type: ignore[no-untyped-def]
        self.aggregate = state.get("aggregate")


class ToyBatchNormMethod(ToyMethod):
    """The toy with a BatchNorm between encoder and normalisation, like PromptKD's projector."""

    name = "toy-bn"

    def __init__(self, classnames: Sequence[str], dim: int = 8, size: int = 8) -> None:
        super().__init__(classnames, dim, size)
        self.bn = nn.BatchNorm1d(dim)

    def image_embeddings(self, images: Tensor) -> Tensor:
        return F.normalize(self.bn(self.encoder(images.flatten(1))), dim=-1)
