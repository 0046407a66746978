"""`embed_classes`: a trained teacher's class vectors for every class of a dataset, computed once and cached.

These are PromptKD's "shared class vectors" (T_lbl in SemPT): the teacher's text encoder with its learned
prompts, "{ctx} {class}." for *all* classes (base and novel). They are keyed by the teacher checkpoint's hash,
the class list and the prompt construction, so every later command (distill, eval, ablate) reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from sempt_cli.data.registry import all_classnames
from sempt_cli.engine.cache import TensorCache
from sempt_cli.engine.runtime import resolve_runtime
from sempt_cli.models.checkpoint import load_learned
from sempt_cli.pipeline.runs import load_teacher
from sempt_cli.settings import Settings

KIND = "class-vectors"


@dataclass(frozen=True)
class ClassVectors:
    """L2-normalised teacher text features [N, D] for `classnames`, and where they are cached."""

    vectors: Tensor
    classnames: list[str]
    path: Path
    reused: bool


def embed_classes(
    teacher_checkpoint: Path, settings: Settings, *, classnames: list[str] | None = None,
    console: Console | None = None,
) -> ClassVectors:
    """Class vectors of the teacher for `classnames` (default: every class of the teacher's dataset)."""
    console = console or Console(stderr=True)
    sidecar = load_learned(teacher_checkpoint)
    record = sidecar.record
    if classnames is None:
        classnames = record.classnames if settings.data.dataset == record.dataset else \
            all_classnames(settings.data.dataset)
    cache = TensorCache(settings.paths.cache_dir / "tensors")
    inputs = _cache_inputs(sidecar, classnames)

    def compute() -> dict[str, Tensor]:
        runtime = resolve_runtime(settings.model)
        teacher = load_teacher(teacher_checkpoint, runtime.device, {"paths.cache_dir": str(settings.paths.cache_dir)},
                               half=runtime.half_weights)
        console.print(f"Encoding {len(classnames)} class names with the teacher ({record.backbone}) ...")
        with torch.no_grad(), runtime.autocast():
            return {"vectors": teacher.class_embeddings(classnames).float()}

    tensors, reused = cache.get_or_compute(KIND, inputs, compute)
    return ClassVectors(tensors["vectors"], classnames, cache.path_for(KIND, inputs), reused)


def _cache_inputs(sidecar: Any, classnames: list[str]) -> dict[str, Any]:
    record = sidecar.record
    return {"teacher": sidecar.sha256, "backbone": record.backbone_identity, "classnames": classnames,
            "prompt": record.settings["prompts"], "encoder": "teacher-prompted"}


def class_vectors_cached(teacher_checkpoint: Path, settings: Settings, classnames: list[str] | None = None) -> bool:
    """Whether `embed_classes` would find the teacher's class vectors in the cache (for plans: nothing computed)."""
    sidecar = load_learned(teacher_checkpoint)
    names = classnames if classnames is not None else sidecar.record.classnames
    return TensorCache(settings.paths.cache_dir / "tensors").path_for(KIND, _cache_inputs(sidecar, names)).is_file()
