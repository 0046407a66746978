"""Evaluation: class embeddings once per evaluation (never per batch), then one matmul per image batch.

A *view* is a block of a dataset's class list whose test images are scored among those classes only: base
and novel for base-to-novel (the papers' protocol), and all classes competing (an extra). One pass encodes
each test image once, however many views score it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from sempt_cli.data.records import Sample
from sempt_cli.data.subsample import split_base_new
from sempt_cli.engine.distributed import DistContext, all_reduce_sum
from sempt_cli.engine.runtime import Runtime
from sempt_cli.protocol import Method

if TYPE_CHECKING:
    from sempt_cli.data.images import OnCorrupt


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·B·N / (B + N), the base-to-novel headline number."""
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


@dataclass(frozen=True)
class View:
    """A block [start, stop) of a dataset's class list: its test images are scored among these classes only."""

    name: str
    start: int
    stop: int


def views_for(setting: str, num_classes: int) -> list[View]:
    """base2novel: base (first ceil(n/2) labels), novel (the rest, relabelled) and all; else all classes."""
    if setting == "base2novel":
        m, _ = split_base_new(num_classes)
        return [View("base", 0, m), View("novel", m, num_classes), View("all", 0, num_classes)]
    return [View("accuracy", 0, num_classes)]


def metrics_from_counts(setting: str, counts: dict[str, dict[str, int]]) -> dict[str, float]:
    """Micro top-1 accuracy in percent per view (Dassl's evaluator), plus HM for base-to-novel."""
    metrics = {name: 100.0 * c["correct"] / max(c["total"], 1) for name, c in counts.items()}
    if setting == "base2novel":
        metrics["hm"] = harmonic_mean(metrics["base"], metrics["novel"])
        metrics = {k: metrics[k] for k in ("base", "novel", "hm", "all")}
    return metrics


@torch.no_grad()
def score_views(
    method: Method,
    samples: Sequence[Sample],
    classnames: Sequence[str],
    views: Sequence[View],
    transform: Callable[[Any], Tensor],
    runtime: Runtime,
    *,
    batch_size: int = 100,
    workers: int = 0,
    on_corrupt: OnCorrupt = "error",
    description: str = "eval",
    in_domain: bool = True,
    console: Console | None = None,
    dist: DistContext | None = None,
    per_class: dict[str, dict[str, list[int]]] | None = None,
) -> tuple[dict[str, dict[str, int]], int]:
    """Correct/total per view from one pass over `samples` (each image is encoded once, however many views
    score it), and the number of unreadable images left out (with `on_corrupt = skip`; the loader would
    otherwise substitute a neighbour, which would count one image twice). `in_domain`: the images come from the
    dataset `method` was trained on (`Method.classifier`). Under `torchrun` (`dist` with several processes) each
    rank scores every world_size-th image and the counts are summed over ranks, so the job encodes each image
    once and every rank returns the same totals; only rank 0 shows progress. `per_class`, when given, is
    filled with view → class name → [correct, total] (where SemPT gains or loses, `sempt eval --per-class`)."""
    from torch.utils.data import DataLoader

    from sempt_cli.data.images import ImageDataset

    if dist is not None and dist.enabled:
        samples = list(samples)[dist.rank :: dist.world_size]
        console = console if dist.is_main else Console(quiet=True)
    method.eval()
    counts = {v.name: {"correct": 0, "total": 0} for v in views}
    correct_by_class = torch.zeros(len(views), len(classnames), dtype=torch.long)
    total_by_class = torch.zeros(len(views), len(classnames), dtype=torch.long)
    unreadable = position = 0
    with runtime.autocast():
        classifiers = {v.name: method.classifier(list(classnames[v.start : v.stop]), in_domain=in_domain)
                       for v in views}
        loader = DataLoader(ImageDataset(samples, transform, on_corrupt),
                            batch_size=batch_size, num_workers=workers)
        progress = Progress(TextColumn(f"[bold green]{description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console or Console(stderr=True), transient=True)
        with progress:
            task = progress.add_task(description, total=len(samples))
            for images, labels, returned in loader:
                requested = torch.arange(position, position + len(labels))
                position += len(labels)
                progress.update(task, advance=len(labels))
                keep = returned == requested
                if not bool(keep.all()):
                    unreadable += int((~keep).sum())
                    images, labels = images[keep], labels[keep]
                if len(labels) == 0:
                    continue
                images = images.to(runtime.device, non_blocking=True)
                shared = None if method.image_side_needs_classes else method.image_embeddings(images)
                for index, view in enumerate(views):
                    mask = (labels >= view.start) & (labels < view.stop)
                    if not bool(mask.any()):
                        continue
                    selected = mask.to(images.device)
                    features = shared[selected] if shared is not None else \
                        method.image_embeddings_among(images[selected], classnames[view.start : view.stop])
                    logits = classifiers[view.name](features)
                    predicted = logits.argmax(dim=-1).cpu() + view.start
                    hits = predicted == labels[mask]
                    counts[view.name]["correct"] += int(hits.sum())
                    counts[view.name]["total"] += int(mask.sum())
                    correct_by_class[index].index_add_(0, labels[mask], hits.long())
                    total_by_class[index].index_add_(0, labels[mask], torch.ones_like(labels[mask]))
    if dist is not None and dist.enabled:
        flat = [value for v in views for value in (counts[v.name]["correct"], counts[v.name]["total"])]
        summed = all_reduce_sum(dist, torch.tensor([*flat, unreadable], dtype=torch.long, device=runtime.device))
        totals = summed.tolist()
        counts = {v.name: {"correct": totals[2 * i], "total": totals[2 * i + 1]} for i, v in enumerate(views)}
        unreadable = totals[-1]
        if per_class is not None:
            stacked = torch.stack([correct_by_class, total_by_class]).to(runtime.device)
            correct_by_class, total_by_class = all_reduce_sum(dist, stacked).cpu()
    if per_class is not None:
        for index, view in enumerate(views):
            per_class[view.name] = {
                classnames[c]: [int(correct_by_class[index, c]), int(total_by_class[index, c])]
                for c in range(view.start, view.stop) if int(total_by_class[index, c])
            }
    return counts, unreadable
