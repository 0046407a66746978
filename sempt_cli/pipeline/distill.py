"""`distill`: PromptKD stage II from a trained teacher checkpoint, end to end, with SemPT on top by default.

teacher checkpoint → class vectors for all classes (`embed`, cached) → teacher image features per view
(cached within the disk budget, else live; or everything recomputed every step in the reference mode) →
student (prompts + projector; with SemPT also the fusion MLP, and T_atr from the attribute file encoded by
the teacher, cached) trained by the shared engine → checkpoint → base/novel evaluation against the teacher's
class vectors (SemPT: T_lbl for the teacher's seen classes, T_enh for the others).

Model selection (`train.select`): the official code keeps the epoch with the best *base test* accuracy
(selection on test data, spec §5.2). By default we report the last epoch's student, which needs no test data
during training; `--select official-best` reproduces the official protocol and says that it selects on test data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from sempt_cli.engine.distributed import DistContext
from sempt_cli.engine.loader import SeededImageDataset
from sempt_cli.engine.runtime import Runtime
from sempt_cli.engine.view_cache import ViewFeatureCache, plan_cache
from sempt_cli.io import sha256_file, stable_hash
from sempt_cli.methods import supervised_method_names
from sempt_cli.methods.promptkd import PromptKDSettings, TeacherSignals
from sempt_cli.models.checkpoint import load_learned
from sempt_cli.models.factory import DEMO_STUDENT
from sempt_cli.models.prompted import PromptedTextTower
from sempt_cli.pipeline.data import prepare_data
from sempt_cli.pipeline.embed import embed_classes
from sempt_cli.pipeline.runs import (
    RunLifecycle,
    TrainedRun,
    build_method,
    load_teacher,
    resolve_with_preset,
    run_key,
    run_sections,
)
from sempt_cli.pipeline.sempt import VARIANT, SemptSource, apply_sempt, attribute_file
from sempt_cli.presets import is_demo_backbone
from sempt_cli.protocol import Batch, Method
from sempt_cli.settings import ResolvedSettings, Settings


def baselines() -> list[str]:
    """What `distill --baseline` accepts: PromptKD (from a teacher) and every supervised prompt learner."""
    return sorted(["promptkd", *supervised_method_names()])


def student_run_dir(baseline: str, settings: Settings, identity: str) -> Path:
    """runs/students/<dataset>/<baseline>[-sempt]-<setting>-seed<s>-<key>: the key hashes every setting that
    changes the student (SemPT's only when SemPT is on, so every baseline run is shared by the ablations)."""
    data, enabled = settings.data, settings.sempt.enabled
    if enabled:  # the file's content, not its path
        identity += f"|attributes:{sha256_file(attribute_file(data.dataset, settings))}"
    name = f"{baseline}{'-sempt' if enabled else ''}-{data.setting}-seed{data.seed}"
    key = run_key(baseline, settings, identity, run_sections(baseline, enabled))
    return settings.paths.output_dir / "students" / data.dataset / f"{name}-{key}"


def default_student(teacher_backbone: str) -> dict[str, Any]:
    """The paper pairs a ViT-L/14 teacher with a ViT-B/16 student; the demo teacher with the demo student."""
    if is_demo_backbone(teacher_backbone):
        return {"model.backbone": DEMO_STUDENT, "model.pretrained": "demo"}
    return {"model.backbone": "ViT-B-16-quickgelu", "model.pretrained": "openai"}


def resolve_distill_settings(
    baseline: str, teacher_checkpoint: Path, overrides: Mapping[str, Any], config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ResolvedSettings:
    """Student backbone from the teacher, dataset/setting from the teacher, method preset, then the user."""
    teacher = load_learned(teacher_checkpoint).record
    from_teacher = {**default_student(teacher.backbone), "data.dataset": teacher.dataset,
                    "data.setting": teacher.setting}
    return resolve_with_preset(baseline, overrides, config_file, env, base_preset=from_teacher)


def distill(
    baseline: str,
    teacher_checkpoint: Path,
    resolved: ResolvedSettings,
    *,
    console: Console | None = None,
    dist: DistContext | None = None,
    stop_after_steps: int | None = None,
) -> TrainedRun:
    """Train a student from `teacher_checkpoint`; resumes or reuses like `train_teacher`."""
    life = RunLifecycle.start(resolved, console, dist)
    settings, clip, data = life.settings, life.clip, life.settings.data
    teacher_sha = load_learned(teacher_checkpoint).sha256
    run_dir = student_run_dir(baseline, settings, f"{life.identity}|teacher:{teacher_sha}")
    if (finished := life.finished(run_dir, "distilled")) is not None:
        return finished

    prepared = prepare_data(settings, life.console)
    classnames = prepared.full.classnames
    vectors = embed_classes(teacher_checkpoint, settings, classnames=classnames, console=life.console).vectors
    vectors = vectors.to(life.runtime.device)
    teacher = load_teacher(teacher_checkpoint, life.runtime.device, {"paths.cache_dir": str(settings.paths.cache_dir)},
                           half=life.runtime.half_weights)
    teacher.eval()
    dataset = life.training_views(prepared)
    signals, mode = _teacher_signals(teacher, vectors, classnames, dataset, settings, life.runtime, teacher_sha,
                                     life.console)
    method: Method = build_method(baseline, clip, classnames, settings, teacher=signals)
    sempt: dict[str, Any] = {}
    if settings.sempt.enabled:
        source = SemptSource.from_teacher(teacher_checkpoint, settings)
        method, inputs = apply_sempt(method, source, data.dataset, classnames, settings, training=True,
                                     console=life.console)
        sempt = {"variant": VARIANT, "sempt": inputs.to_json()}
    banner = (f"[bold]distill[/] {baseline}{' w/ SemPT' if sempt else ''} on {data.dataset} ({data.setting}, "
              f"{len(dataset)} unlabelled images, {len(classnames)} classes) · {clip.backbone} ← teacher "
              f"{escape(str(teacher_checkpoint))} · {mode}")
    record = life.record("student", baseline, prepared, classnames, teacher_checkpoint=str(teacher_checkpoint),
                         teacher_sha256=teacher_sha, **sempt)
    return life.train(run_dir, method, dataset, prepared, record, banner, mode=mode,
                      stop_after_steps=stop_after_steps)


def _teacher_signals(
    teacher: Method, vectors: torch.Tensor, classnames: list[str], dataset: SeededImageDataset, settings: Settings,
    runtime: Runtime, teacher_sha: str, console: Console,
) -> tuple[TeacherSignals, str]:
    """Cached class vectors + cached/live image features, or the official recompute-everything reference."""
    scale = float(teacher.logit_scale().item())

    def live_images(batch: Batch) -> torch.Tensor:
        return teacher.image_embeddings(batch.images)

    own = settings.section(PromptKDSettings)
    if own.recompute_teacher:
        text = getattr(teacher, "text", None)  # DPT's VPT variant has no prompted text tower: nothing to untruncate
        if isinstance(text, PromptedTextTower):
            text.truncate = False  # the official per-step cost: all 77 positions (features equal up to rounding)
        return TeacherSignals(lambda: teacher.class_embeddings(classnames), live_images, scale), \
            "reference mode: teacher text and image encoders recomputed every step"
    plan = plan_cache(len(dataset), int(vectors.shape[1]), settings.train.epochs, own.teacher_cache_gb)
    views = [str(sample.path) for sample in dataset.samples]
    key = stable_hash(teacher_sha, views, settings.data.seed, transform_signature(dataset), length=20)
    cache = ViewFeatureCache(
        settings.paths.cache_dir / "teacher-views" / key, dataset, teacher.image_embeddings, runtime, plan,
        batch_size=settings.data.eval_batch_size, workers=settings.data.workers, console=console,
        describe={"teacher_sha256": teacher_sha, "seed": settings.data.seed, "num_views": len(dataset)},
    )

    def images(batch: Batch) -> torch.Tensor:
        if cache.is_cached(batch.epoch):
            return cache.features(batch.epoch, batch.indices)
        return live_images(batch)

    return TeacherSignals(lambda: vectors, images, scale, cache.ensure), f"class vectors cached; {plan.describe()}"


def transform_signature(dataset: SeededImageDataset) -> str:
    """The augmentation pipeline's description, part of the cache key (another crop size is another view)."""
    return repr(dataset.transform)
