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

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sempt_cli import __version__
from sempt_cli.engine.distributed import DistContext, init_distributed
from sempt_cli.engine.loader import SeededImageDataset
from sempt_cli.engine.runtime import Runtime, resolve_runtime, seed_everything
from sempt_cli.engine.trainer import Trainer
from sempt_cli.engine.view_cache import ViewFeatureCache, plan_cache
from sempt_cli.io import atomic_write_json, sha256_file, stable_hash
from sempt_cli.methods import get_method, supervised_method_names
from sempt_cli.methods.promptkd import PromptKDSettings, TeacherSignals
from sempt_cli.models.checkpoint import load_learned, save_learned
from sempt_cli.models.factory import DEMO_STUDENT
from sempt_cli.models.identity import backbone_identity
from sempt_cli.pipeline.backbone import load_backbone
from sempt_cli.pipeline.data import prepare_data
from sempt_cli.pipeline.embed import embed_classes
from sempt_cli.pipeline.sempt import VARIANT, SemptSource, apply_sempt, attribute_file
from sempt_cli.pipeline.teacher import (
    CHECKPOINT_NAME,
    METRICS_FILE,
    epoch_selection,
    evaluate_protocol,
    image_size,
    load_teacher,
    run_key,
    run_sections,
    selection_record,
)
from sempt_cli.protocol import Batch, Method
from sempt_cli.settings import ResolvedSettings, Settings, load_settings


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
    if teacher_backbone.startswith("sempt-demo"):
        return {"model.backbone": DEMO_STUDENT, "model.pretrained": "demo"}
    return {"model.backbone": "ViT-B-16-quickgelu", "model.pretrained": "openai"}


def resolve_distill_settings(
    baseline: str, teacher_checkpoint: Path, overrides: Mapping[str, Any], config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ResolvedSettings:
    """Student backbone from the teacher, dataset/setting from the teacher, method preset, then the user."""
    meta = load_learned(teacher_checkpoint).metadata
    from_teacher = {**default_student(meta["backbone"]), "data.dataset": meta["dataset"],
                    "data.setting": meta["setting"]}
    first = load_settings(overrides, config_file=config_file, env=env, preset=from_teacher).settings
    preset = {**from_teacher, **get_method(baseline).presets(first, first.model.backbone)}
    return load_settings(overrides, config_file=config_file, env=env, preset=preset,
                         preset_name=f"preset {baseline}/{first.data.setting}")


@dataclass
class StudentRun:
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    mode: str


def distill(
    baseline: str,
    teacher_checkpoint: Path,
    resolved: ResolvedSettings,
    *,
    console: Console | None = None,
    dist: DistContext | None = None,
    stop_after_steps: int | None = None,
) -> StudentRun:
    """Train a student from `teacher_checkpoint`; resumes or reuses like `train_teacher`."""
    from sempt_cli.data.transforms import clip_train_transform

    console = console or Console(stderr=True)
    dist = dist or init_distributed()
    settings = resolved.settings
    runtime = resolve_runtime(settings.model, dist.local_rank)
    teacher_sha = load_learned(teacher_checkpoint).sha256
    seed_everything(settings.data.seed)
    clip = load_backbone(settings.model, runtime.device, settings.paths.cache_dir, half=runtime.half_weights)
    data = settings.data
    run_dir = student_run_dir(baseline, settings, f"{backbone_identity(clip)}|teacher:{teacher_sha}")
    checkpoint = run_dir / f"{CHECKPOINT_NAME}.safetensors"
    if (run_dir / METRICS_FILE).is_file() and checkpoint.is_file():
        console.print(f"[green]Already distilled[/] — reusing {run_dir}")
        saved = json.loads((run_dir / METRICS_FILE).read_text())
        return StudentRun(run_dir, checkpoint, saved["metrics"], saved["mode"])

    prepared = prepare_data(settings, console)
    classnames = prepared.full.classnames
    vectors = embed_classes(teacher_checkpoint, settings, classnames=classnames, console=console).vectors
    vectors = vectors.to(runtime.device)
    teacher = load_teacher(teacher_checkpoint, runtime.device, {"paths.cache_dir": str(settings.paths.cache_dir)},
                           half=runtime.half_weights)
    teacher.eval()
    size = image_size(clip)
    augment = clip_train_transform(size, scale=(data.crop_scale_min, 1.0))
    dataset = SeededImageDataset(prepared.train.train, augment, data.seed, data.on_corrupt)
    signals, mode = _teacher_signals(teacher, vectors, classnames, dataset, settings, runtime, teacher_sha, console)
    method: Method = get_method(baseline)(clip, classnames, settings, None, teacher=signals).to(runtime.device)
    sempt: dict[str, Any] = {}
    if settings.sempt.enabled:
        source = SemptSource.from_teacher(teacher_checkpoint, settings)
        method, inputs = apply_sempt(method, source, data.dataset, classnames, settings, training=True,
                                     console=console)
        sempt = {"variant": VARIANT, "sempt": inputs.to_json()}
    if dist.is_main:
        console.print(f"[bold]distill[/] {baseline}{' w/ SemPT' if sempt else ''} on {data.dataset} "
                      f"({data.setting}, {len(dataset)} unlabelled images, {len(classnames)} classes) · "
                      f"{clip.backbone} ← teacher {teacher_checkpoint} · {runtime.describe()} · {mode}")
    selection = epoch_selection(method, prepared, settings, runtime, size, dist)
    result = Trainer(method, dataset, settings, run_dir, runtime, dist, console, selection).fit(stop_after_steps)
    if not result.finished:
        return StudentRun(run_dir, checkpoint, {}, mode)
    metadata = {
        "kind": "student", "method": baseline, "backbone": clip.backbone, "backbone_identity": backbone_identity(clip),
        "teacher_checkpoint": str(teacher_checkpoint), "teacher_sha256": teacher_sha, "dataset": data.dataset,
        "setting": data.setting, "classnames": classnames, "num_base": prepared.num_base,
        "settings": settings.model_dump(mode="json"), "sempt_version": __version__, **sempt,
    }
    if dist.is_main:
        save_learned(checkpoint, method.trainable_state(), metadata)
    metrics = evaluate_protocol(method, prepared, settings, runtime, size, console, dist)
    if dist.is_main:
        atomic_write_json(run_dir / METRICS_FILE, {"metrics": metrics, "mode": mode, "train_seconds": result.seconds,
                                                    "steps": result.steps, "settings_sources": resolved.sources,
                                                    **selection_record(result)})
    return StudentRun(run_dir, checkpoint, metrics, mode)


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
        teacher.text.truncate = False  # the official per-step cost: all 77 positions (features equal up to rounding)
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
