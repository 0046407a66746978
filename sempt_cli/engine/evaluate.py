"""Evaluation: class embeddings once per evaluation (never per batch), then one matmul per image batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor
from torch.utils.data import DataLoader

from sempt_cli.data.images import ImageDataset, OnCorrupt
from sempt_cli.data.records import Sample
from sempt_cli.engine.runtime import Runtime
from sempt_cli.methods.base import Method


@dataclass(frozen=True)
class EvalResult:
    """Micro top-1 accuracy in percent, as Dassl's `Classification` evaluator reports it."""

    accuracy: float
    correct: int
    total: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total, "seconds": self.seconds}


@torch.no_grad()
def evaluate(
    method: Method,
    samples: Sequence[Sample],
    classnames: Sequence[str],
    transform: Callable[[Any], Tensor],
    runtime: Runtime,
    *,
    batch_size: int = 100,
    workers: int = 0,
    on_corrupt: OnCorrupt = "error",
    class_embeddings: Tensor | None = None,
    description: str = "eval",
    console: Console | None = None,
) -> EvalResult:
    """Accuracy of `method` on `samples` whose labels index `classnames` (a base, novel or full class list)."""
    started = time.perf_counter()
    was_training = method.training
    method.eval()
    with runtime.autocast():
        if class_embeddings is None:
            class_embeddings = method.class_embeddings(classnames)
        loader = DataLoader(ImageDataset(samples, transform, on_corrupt), batch_size=batch_size, num_workers=workers)
        correct = total = 0
        progress = Progress(TextColumn(f"[bold green]{description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console or Console(stderr=True), transient=True)
        with progress:
            task = progress.add_task(description, total=len(samples))
            for images, labels, _ in loader:
                images = images.to(runtime.device, non_blocking=True)
                logits = method.logits(method.image_embeddings(images), class_embeddings)
                correct += int((logits.argmax(dim=-1).cpu() == labels).sum())
                total += len(labels)
                progress.update(task, advance=len(labels))
    method.train(was_training)
    accuracy = 100.0 * correct / max(total, 1)
    return EvalResult(accuracy, correct, total, time.perf_counter() - started)


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·B·N / (B + N), the base-to-novel headline number."""
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)
