"""`train_teacher`: supervised prompt learning (PromptSRC and its presets, MMRL, ...) end to end, with SemPT on top
when asked (`distill --baseline mmrl` and the other supervised baselines).

resolve settings (method preset under the user's values) → data (few-shot, base classes) → frozen backbone
→ method [→ SemPT wrapper: the method's own training classes are the seen ones, descriptions encoded by the
frozen backbone] → shared trainer (resumable) → learned checkpoint (safetensors + sidecar) → evaluation.

The run folder is named by a hash of every setting that changes the result, so re-running the same
command resumes an interrupted run or reports the finished one, and a changed setting starts a new run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from sempt_cli import __version__
from sempt_cli.engine.cache import TensorCache
from sempt_cli.engine.distributed import DistContext, init_distributed
from sempt_cli.engine.evaluate import metrics_from_counts, score_views, views_for
from sempt_cli.engine.loader import SeededImageDataset
from sempt_cli.engine.runtime import Runtime, resolve_runtime, seed_everything
from sempt_cli.engine.trainer import EpochSelection, Trainer, TrainResult
from sempt_cli.io import atomic_write_json, sha256_file, stable_hash
from sempt_cli.methods import Method, get_method
from sempt_cli.models.checkpoint import load_learned, save_learned
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.identity import backbone_identity
from sempt_cli.pipeline.backbone import load_backbone
from sempt_cli.pipeline.data import PreparedData, prepare_data
from sempt_cli.pipeline.sempt import VARIANT, SemptSource, apply_sempt, attribute_file
from sempt_cli.settings import PathSettings, ResolvedSettings, Settings, load_settings, settings_model

CHECKPOINT_NAME = "model"
METRICS_FILE = "metrics.json"
COMMON_SECTIONS = ("model", "data", "train")
NOT_RESULT_AFFECTING = {
    ("model", "device"), ("data", "workers"), ("data", "eval_batch_size"), ("sempt", "inference"),
    ("sempt", "attributes"),
}
"""Settings that change speed, placement or only inference, not the trained parameters (an attribute file's
*path* is one: its content hash enters the key where it matters)."""


def resolve_with_preset(
    method_name: str,
    overrides: Mapping[str, Any],
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ResolvedSettings:
    """Resolve twice: once to learn the setting/dataset/backbone, then with the method's preset beneath the
    user's own values (so a flag, variable or config entry always wins over the preset)."""
    first = load_settings(overrides, config_file=config_file, env=env).settings
    preset = get_method(method_name).presets(first, first.model.backbone)
    return load_settings(overrides, config_file=config_file, env=env, preset=preset,
                         preset_name=f"preset {method_name}/{first.data.setting}")


def run_key(method_name: str, settings: Settings, identity: str | None, sections: Sequence[str]) -> str:
    """Hash of everything that determines the trained parameters: the job's `sections` of the settings."""
    dumped = settings.model_dump(mode="json")
    relevant = {
        section: {k: v for k, v in dumped[section].items() if (section, k) not in NOT_RESULT_AFFECTING}
        for section in sections
    }
    return stable_hash(method_name, relevant, identity, length=12)


def run_sections(method_name: str, sempt: bool) -> tuple[str, ...]:
    """The settings sections a run of `method_name` is keyed by (SemPT's only when SemPT is on, so a baseline
    run is shared by every SemPT variant and ablation built on it)."""
    return COMMON_SECTIONS + get_method(method_name).settings_sections + (("sempt",) if sempt else ())


def teacher_run_dir(method_name: str, settings: Settings, identity: str | None, *, sempt: bool = False) -> Path:
    """runs/teachers/<dataset>/<method>[-sempt]-<setting>-<shots>shot-seed<s>-<key> (with SemPT the attribute
    file's content, not its path, is part of the key)."""
    data = settings.data
    if sempt:
        identity = f"{identity}|attributes:{sha256_file(attribute_file(data.dataset, settings))}"
    key = run_key(method_name, settings, identity, run_sections(method_name, sempt))
    name = f"{method_name}{'-sempt' if sempt else ''}-{data.setting}-{data.shots}shot-seed{data.seed}-{key}"
    return settings.paths.output_dir / "teachers" / data.dataset / name


@dataclass
class TeacherRun:
    """Where a trained teacher lives and how it scored."""

    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]


def build_method(name: str, clip: LoadedClip, classnames: list[str], settings: Settings) -> Method:
    cache = TensorCache(settings.paths.cache_dir / "tensors")
    return get_method(name)(clip, classnames, settings, cache).to(next(clip.model.parameters()).device)


def evaluate_protocol(
    method: Method, prepared: PreparedData, settings: Settings, runtime: Runtime, image_size: int,
    console: Console | None = None, dist: DistContext | None = None,
) -> dict[str, Any]:
    """Scores as the papers report them (base and novel separately, HM) plus all classes competing; the same
    one-pass scorer as `sempt eval`, so training-time and evaluation numbers agree exactly. Under `torchrun` the
    ranks share the test images instead of each scoring all of them."""
    from sempt_cli.data.transforms import clip_test_transform

    full = prepared.full
    counts, _ = score_views(
        method, full.test, full.classnames, views_for(settings.data.setting, full.num_classes),
        clip_test_transform(image_size), runtime, batch_size=settings.data.eval_batch_size,
        workers=settings.data.workers, on_corrupt=settings.data.on_corrupt, console=console, dist=dist,
    )
    return metrics_from_counts(settings.data.setting, counts)


def epoch_selection(
    method: Method, prepared: PreparedData, settings: Settings, runtime: Runtime, image_size: int,
    dist: DistContext | None = None,
) -> EpochSelection:
    """What `train.select = official-best` maximises, as the official PromptKD code (spec §3.5): in base-to-novel
    the accuracy among the base classes on their test images (Dassl's `val` split there), elsewhere the accuracy
    on the test split (the official `val = test`)."""
    from sempt_cli.data.transforms import clip_test_transform

    full = prepared.full
    view = views_for(settings.data.setting, full.num_classes)[0]  # base2novel: base; else all classes
    samples = [s for s in full.test if view.start <= s.label < view.stop]
    quiet = Console(quiet=True)  # the training progress bar is live meanwhile

    def score() -> float:
        counts, _ = score_views(
            method, samples, full.classnames, [view], clip_test_transform(image_size), runtime,
            batch_size=settings.data.eval_batch_size, workers=settings.data.workers,
            on_corrupt=settings.data.on_corrupt, console=quiet, dist=dist,
        )
        return metrics_from_counts("accuracy", counts)[view.name]

    what = "base-class accuracy on the test split" if view.name == "base" else "accuracy on the test split"
    return EpochSelection(score, what)


def selection_record(result: TrainResult) -> dict[str, Any]:
    """For metrics.json: which epoch `official-best` kept and every epoch's score (nothing for `last`)."""
    if result.selected_epoch is None:
        return {}
    return {"selected_epoch": result.selected_epoch,
            "epoch_scores": {str(epoch): score for epoch, score in sorted(result.epoch_scores.items())}}


def image_size(clip: LoadedClip) -> int:
    size = clip.preprocess.image_size
    return size if isinstance(size, int) else size[0]


def train_teacher(
    method_name: str,
    resolved: ResolvedSettings,
    *,
    sempt: bool = False,
    console: Console | None = None,
    dist: DistContext | None = None,
    stop_after_steps: int | None = None,
) -> TeacherRun:
    """Train (or resume, or reuse) a supervised prompt learner, with SemPT on top if `sempt`, and evaluate it;
    see the module docstring."""
    from sempt_cli.data.transforms import clip_train_transform

    console = console or Console(stderr=True)
    dist = dist or init_distributed()
    settings = resolved.settings
    runtime = resolve_runtime(settings.model, dist.local_rank)
    seed_everything(settings.data.seed)
    clip = load_backbone(settings.model, runtime.device, settings.paths.cache_dir, half=runtime.half_weights)
    run_dir = teacher_run_dir(method_name, settings, backbone_identity(clip), sempt=sempt)
    checkpoint = run_dir / f"{CHECKPOINT_NAME}.safetensors"
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file() and checkpoint.is_file():
        console.print(f"[green]Already trained[/] — reusing {run_dir}")
        return TeacherRun(run_dir, checkpoint, json.loads(metrics_path.read_text())["metrics"])

    prepared = prepare_data(settings, console)
    method = build_method(method_name, clip, prepared.train.classnames, settings)
    variant: dict[str, Any] = {}
    if sempt:
        source = SemptSource.frozen_backbone(clip, settings.data.dataset, prepared.train.classnames, settings)
        method, inputs = apply_sempt(method, source, settings.data.dataset, prepared.full.classnames, settings,
                                     training=True, console=console)
        variant = {"variant": VARIANT, "sempt": inputs.to_json()}
    if dist.is_main:
        console.print(
            f"[bold]train[/] {method_name}{' w/ SemPT' if sempt else ''} on {settings.data.dataset} "
            f"({settings.data.setting}, "
            f"{len(prepared.train.train)} images, {prepared.train.num_classes} classes) · {clip.backbone} · "
            f"{runtime.describe()} · run {run_dir}"
        )
    size = image_size(clip)
    augment = clip_train_transform(size, scale=(settings.data.crop_scale_min, 1.0))
    dataset = SeededImageDataset(prepared.train.train, augment, settings.data.seed, settings.data.on_corrupt)
    selection = epoch_selection(method, prepared, settings, runtime, size, dist)
    result = Trainer(method, dataset, settings, run_dir, runtime, dist, console, selection).fit(stop_after_steps)
    if not result.finished:
        return TeacherRun(run_dir, checkpoint, {})
    metadata = {
        "kind": "teacher", "method": method_name, "backbone": clip.backbone, "pretrained": settings.model.pretrained,
        "backbone_identity": backbone_identity(clip), "dataset": settings.data.dataset,
        "setting": settings.data.setting, "train_classnames": prepared.train.classnames,
        "classnames": prepared.full.classnames, "num_base": prepared.num_base,
        "seen_classnames": prepared.train.classnames, "settings": settings.model_dump(mode="json"),
        "sempt_version": __version__, **variant,
    }
    if dist.is_main:
        save_learned(checkpoint, method.trainable_state(), metadata)
    metrics = evaluate_protocol(method, prepared, settings, runtime, size, console, dist)
    if dist.is_main:
        atomic_write_json(metrics_path, {"metrics": metrics, "train_seconds": result.seconds, "steps": result.steps,
                                         "settings_sources": resolved.sources, **selection_record(result)})
    return TeacherRun(run_dir, checkpoint, metrics)


def sidecar_settings(meta: Mapping[str, Any], paths: PathSettings) -> Settings:
    """A model's own settings from its checkpoint sidecar, with today's paths (caches live where they live now,
    not where they lived at training time)."""
    return settings_model().model_validate({**meta["settings"], "paths": paths.model_dump()})


def load_teacher(
    checkpoint: Path, device: Any = "cpu", overrides: Mapping[str, Any] | None = None, *, half: bool = False
) -> Method:
    """Rebuild a trained teacher from its checkpoint alone (the sidecar carries backbone and settings);
    `overrides` may only set `paths.*`; `half`: the backbone in the official fp16 layout (the caller's runtime,
    not the precision the teacher was trained with). Training-only inputs (PromptSRC's 60-template targets) are
    not built."""
    sidecar = load_learned(checkpoint)
    meta = sidecar.metadata
    settings = sidecar_settings(meta, load_settings(overrides, env={}).settings.paths)
    seed_everything(settings.data.seed)  # a randomly initialised backbone is rebuilt exactly as in training
    clip = load_backbone(settings.model, device, settings.paths.cache_dir, half=half)
    method = build_method(meta["method"], clip, meta["train_classnames"], settings)
    method.load_trainable_state(sidecar.tensors, source=str(checkpoint))
    return method
