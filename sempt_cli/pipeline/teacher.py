"""`train_teacher`: supervised prompt learning (PromptSRC and its presets, MMRL, ...) end to end, with SemPT on top
when asked (`distill --baseline mmrl` and the other supervised baselines).

data (few-shot, base classes) → method [→ SemPT wrapper: the method's own training classes are the seen ones,
descriptions encoded by the frozen backbone] → the shared run lifecycle (`pipeline.runs`: resumable training,
checkpoint with its run record, evaluation).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from sempt_cli.engine.distributed import DistContext
from sempt_cli.io import sha256_file
from sempt_cli.pipeline.data import prepare_data
from sempt_cli.pipeline.runs import RunLifecycle, TrainedRun, build_method, run_key, run_sections
from sempt_cli.pipeline.sempt import VARIANT, SemptSource, apply_sempt, attribute_file
from sempt_cli.settings import ResolvedSettings, Settings


def teacher_run_dir(method_name: str, settings: Settings, identity: str | None, *, sempt: bool = False) -> Path:
    """runs/teachers/<dataset>/<method>[-sempt]-<setting>-<shots>shot-seed<s>-<key> (with SemPT the attribute
    file's content, not its path, is part of the key)."""
    data = settings.data
    if sempt:
        identity = f"{identity}|attributes:{sha256_file(attribute_file(data.dataset, settings))}"
    key = run_key(method_name, settings, identity, run_sections(method_name, sempt))
    name = f"{method_name}{'-sempt' if sempt else ''}-{data.setting}-{data.shots}shot-seed{data.seed}-{key}"
    return settings.paths.output_dir / "teachers" / data.dataset / name


def train_teacher(
    method_name: str,
    resolved: ResolvedSettings,
    *,
    sempt: bool = False,
    console: Console | None = None,
    dist: DistContext | None = None,
    stop_after_steps: int | None = None,
) -> TrainedRun:
    """Train (or resume, or reuse) a supervised prompt learner, with SemPT on top if `sempt`, and evaluate it;
    see the module docstring."""
    life = RunLifecycle.start(resolved, console, dist)
    settings, clip = life.settings, life.clip
    run_dir = teacher_run_dir(method_name, settings, life.identity, sempt=sempt)
    if (finished := life.finished(run_dir, "trained")) is not None:
        return finished

    prepared = prepare_data(settings, life.console)
    seen = prepared.train.classnames
    method = build_method(method_name, clip, seen, settings)
    variant: dict[str, object] = {}
    if sempt:
        source = SemptSource.frozen_backbone(clip, settings.data.dataset, seen, settings)
        method, inputs = apply_sempt(method, source, settings.data.dataset, prepared.full.classnames, settings,
                                     training=True, console=life.console)
        variant = {"variant": VARIANT, "sempt": inputs.to_json()}
    banner = (f"[bold]train[/] {method_name}{' w/ SemPT' if sempt else ''} on {settings.data.dataset} "
              f"({settings.data.setting}, {len(prepared.train.train)} images, {prepared.train.num_classes} classes) "
              f"· {clip.backbone}")
    record = life.record("teacher", method_name, prepared, seen, **variant)
    return life.train(run_dir, method, life.training_views(prepared), prepared, record, banner,
                      stop_after_steps=stop_after_steps)
