"""The `calibrated` inference rule's fit: a SemPT model's own logits on its unlabelled training images.

Why: under the paper's hybrid rule seen classes are scored against T_lbl and unseen ones against T_enh, and
nothing in training ties the level of one group to the other (see `methods.sempt`), so when both compete in
one classifier (the all-classes view, a deployment over a mixed label space) the unseen classes lose. The fix
is post hoc and label-free: `fit_calibration` maps the unseen classes' T_enh logits to the mean and spread of
the same model's T_lbl logits for the same classes on the same images, the images the model was trained on
(PromptKD: its unlabelled transfer set; MMRL and other supervised baselines: their labelled seen-class shots).
No label is read, so no label of an unseen class can leak in; a model without SemPT is never touched.

The fit is cached like every other derived tensor (`engine.cache.TensorCache`, written atomically), keyed by
what determines it: the checkpoint (and teacher) hashes, the attribute file, the class list and seen classes,
the images, and the numerics. Images are taken in their split order (a fixed subsample of at most
`CALIBRATION_IMAGES`), scored in eval mode with the test transform, and the statistics are taken in float64,
so the same inputs give the same calibration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sempt_cli.data.records import Sample
from sempt_cli.engine.cache import TensorCache
from sempt_cli.engine.runtime import Runtime
from sempt_cli.errors import SemptError
from sempt_cli.io import stable_hash
from sempt_cli.methods.sempt import Calibration, SemPT, fit_calibration
from sempt_cli.protocol import Method

CALIBRATION_IMAGES = 4096
"""At most this many training images are scored for the fit (evenly spaced over the split): the statistics
of a few thousand images × unseen classes are stable, and ImageNet's 1.28 M would take hours."""
CALIBRATION_VERSION = 1
"""Part of the cache key: bump when the fit changes."""


def calibration_samples(samples: Sequence[Sample], limit: int = CALIBRATION_IMAGES) -> list[Sample]:
    """The images the fit uses: all of them, or `limit` evenly spaced ones (deterministic, label-blind)."""
    if len(samples) <= limit:
        return list(samples)
    return [samples[i * len(samples) // limit] for i in range(limit)]


@torch.no_grad()
def calibration_logits(
    method: SemPT, samples: Sequence[Sample], classnames: Sequence[str], transform: Any, runtime: Runtime, *,
    batch_size: int = 100, workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_lbl, T_enh) logits [M, n_unseen] of the unseen classes among `classnames` on `samples`; the samples'
    labels are never looked at."""
    from torch.utils.data import DataLoader

    from sempt_cli.data.images import ImageDataset

    method.eval()
    references, enhanced = [], []
    loader = DataLoader(ImageDataset(list(samples), transform, "error"),
                        batch_size=batch_size, num_workers=workers)
    with runtime.autocast():
        for images, _labels, _index in loader:
            images = images.to(runtime.device, non_blocking=True)
            if method.image_side_needs_classes:
                features = method.image_embeddings_among(images, list(classnames))
            else:
                features = method.image_embeddings(images)
            reference, enh = method.calibration_logits(features, classnames)
            references.append(reference.cpu())
            enhanced.append(enh.cpu())
    if not references:
        raise SemptError("The calibrated rule needs training images to fit on, and there are none.")
    return torch.cat(references), torch.cat(enhanced)


def fit_on_samples(method: SemPT, samples: Sequence[Sample], classnames: Sequence[str], transform: Any,
                   runtime: Runtime, *, batch_size: int = 100, workers: int = 0) -> Calibration:
    """`fit_calibration` on the model's logits over `samples` (uncached)."""
    reference, enhanced = calibration_logits(method, calibration_samples(samples), classnames, transform, runtime,
                                             batch_size=batch_size, workers=workers)
    return fit_calibration(reference, enhanced)


def calibrate(
    method: Method, samples: Sequence[Sample], classnames: Sequence[str], transform: Any, runtime: Runtime, *,
    cache_dir: Path | None, key: Mapping[str, Any], batch_size: int = 100, workers: int = 0,
    console: Console | None = None,
) -> Method:
    """Give a SemPT model under the `calibrated` rule its calibration (fitted once, then read from the cache;
    `cache_dir=None`: fitted and not stored, as for the scores at the end of training); any other model, or a SemPT
    model under another rule or whose seen and unseen classes do not both occur here, is returned unchanged."""
    if not isinstance(method, SemPT) or not method.needs_calibration:
        return method
    seen_here = [name for name in classnames if name in method.seen]
    if not seen_here or len(seen_here) == len(classnames):
        return method  # the groups never compete: the rule is hybrid here
    chosen = calibration_samples(samples)
    inputs = {
        "version": CALIBRATION_VERSION, **dict(key), "classnames": list(classnames), "seen": seen_here,
        "images": stable_hash([str(s.path) for s in chosen]), "precision": runtime.describe(),
    }

    def compute() -> dict[str, torch.Tensor]:
        if console is not None:
            console.print(f"Fitting the calibrated rule on {len(chosen)} training images (their labels unused)")
        return fit_on_samples(method, chosen, classnames, transform, runtime, batch_size=batch_size,
                              workers=workers).to_tensors()

    if cache_dir is None:
        tensors = compute()
    else:
        tensors, _ = TensorCache(cache_dir / "tensors").get_or_compute("sempt-calibration", inputs, compute)
    method.calibration = Calibration.from_tensors(tensors)
    return method
