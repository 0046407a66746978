"""The run lifecycle every training job shares (train-teacher, distill, and the sweeps built on them).

resolve settings (method preset under the user's values) → run folder named by a hash of every setting that
changes the result → reuse a finished run, or resume an interrupted one → the job builds its method and its
training views → shared trainer (resumable) → learned checkpoint with its typed run record → evaluation under
the run's protocol → metrics file. Re-running a command therefore resumes or reports the finished run, and a
changed setting starts a new one.

Also here: rebuilding a method from a checkpoint (`rebuild_method`, `load_teacher`), the one place that knows
how a run record and its tensors become a method again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from rich.console import Console
from rich.markup import escape

from sempt_cli import __version__
from sempt_cli.data.transforms import clip_test_transform, clip_train_transform
from sempt_cli.data.user import split_identity
from sempt_cli.engine.cache import TensorCache
from sempt_cli.engine.distributed import DistContext, init_distributed
from sempt_cli.engine.evaluate import metrics_from_counts, score_views, views_for
from sempt_cli.engine.loader import SeededImageDataset
from sempt_cli.engine.runtime import Runtime, resolve_runtime, seed_everything
from sempt_cli.engine.trainer import EpochSelection, Trainer, TrainResult
from sempt_cli.io import atomic_write_json, stable_hash
from sempt_cli.methods import Method, get_method
from sempt_cli.models.checkpoint import LearnedCheckpoint, load_learned, save_learned
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.identity import backbone_identity
from sempt_cli.models.record import RunRecord
from sempt_cli.pipeline.backbone import load_backbone
from sempt_cli.pipeline.calibration import calibrate
from sempt_cli.pipeline.data import PreparedData
from sempt_cli.settings import PathSettings, ResolvedSettings, Settings, load_settings, settings_model

CHECKPOINT_NAME = "model"
METRICS_FILE = "metrics.json"
UNREADABLE = "unreadable"
"""The metrics key counting test images a score left out (`data.on_corrupt = skip`); absent when none was."""
COMMON_SECTIONS = ("model", "data", "train")
NOT_RESULT_AFFECTING = {
    ("model", "device"), ("data", "workers"), ("data", "eval_batch_size"), ("sempt", "inference"),
    ("sempt", "attributes"), ("train", "tensorboard"), ("train", "compile"), ("train", "read_every"),
}
"""Settings that change speed, placement or only inference, not the trained parameters (an attribute file's
*path* is one: its content hash enters the key where it matters; a compiled step agrees with the eager one up to
floating-point rounding, so turning it on or off resumes the same run)."""


def resolve_with_preset(
    method_name: str,
    overrides: Mapping[str, Any],
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    base_preset: Mapping[str, Any] | None = None,
) -> ResolvedSettings:
    """Resolve twice: once to learn the setting/dataset/backbone, then with the method's preset beneath the
    user's own values (so a flag, variable or config entry always wins over the preset). `base_preset` sits
    under the method's (a student's defaults taken from its teacher)."""
    first = load_settings(overrides, config_file=config_file, env=env, preset=base_preset).settings
    preset = {**(base_preset or {}), **get_method(method_name).presets(first, first.model.backbone)}
    return load_settings(overrides, config_file=config_file, env=env, preset=preset,
                         preset_name=f"preset {method_name}/{first.data.setting}")


def run_key(method_name: str, settings: Settings, identity: str | None, sections: Sequence[str]) -> str:
    """Hash of everything that determines the trained parameters: the job's `sections` of the settings, and for a
    dataset registered with `sempt data add`, its split file (benchmark datasets' keys are unchanged by it)."""
    dumped = settings.model_dump(mode="json")
    relevant = {
        section: {k: v for k, v in dumped[section].items() if (section, k) not in NOT_RESULT_AFFECTING}
        for section in sections
    }
    split = split_identity(settings.data.dataset)
    return stable_hash(method_name, relevant, identity, *([f"split:{split}"] if split else []), length=12)


def run_sections(method_name: str, sempt: bool) -> tuple[str, ...]:
    """The settings sections a run of `method_name` is keyed by (SemPT's only when SemPT is on, so a baseline
    run is shared by every SemPT variant and ablation built on it)."""
    return COMMON_SECTIONS + get_method(method_name).settings_sections + (("sempt",) if sempt else ())


@dataclass
class TrainedRun:
    """Where a trained model lives and how it scored (`metrics` is empty while the run is unfinished)."""

    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    mode: str = ""
    """How a student's teacher signals were produced (cached / live / reference); empty for supervised runs."""


class MethodConstructor(Protocol):
    """How a registered method is built: `cls(clip, train_classnames, settings, cache, **extra)` (the plug-in
    contract of `sempt_cli.protocol`; PromptKD also takes its teacher's signals as keywords)."""

    def __call__(
        self, clip: LoadedClip, train_classnames: Sequence[str], settings: Settings, cache: TensorCache | None = None,
        **extra: Any,
    ) -> Method: ...


def method_constructor(cls: type[Method]) -> MethodConstructor:
    """A registered method class, typed by the constructor every registered method has. `Method.__init__` itself
    takes only the class names (wrappers such as SemPT build on another method), so the registry's
    `type[Method]` cannot say so; this is the one place that tells the type checker."""
    return cast(MethodConstructor, cls)


def build_method(name: str, clip: LoadedClip, classnames: Sequence[str], settings: Settings, **extra: Any) -> Method:
    """A fresh method on `clip`, with the shared tensor cache, on the backbone's device."""
    cache = TensorCache(settings.paths.cache_dir / "tensors")
    method = method_constructor(get_method(name))(clip, list(classnames), settings, cache, **extra)
    return method.to(next(clip.model.parameters()).device)


def run_settings(record: RunRecord, paths: PathSettings) -> Settings:
    """A model's own settings from its run record, with today's paths (caches live where they live now, not
    where they lived at training time)."""
    return settings_model().model_validate({**record.settings, "paths": paths.model_dump()})


def rebuild_method(checkpoint: LearnedCheckpoint, clip: LoadedClip, settings: Settings, *, load: bool = True) -> Method:
    """The method a run record describes, on `clip`, with the checkpoint's tensors unless `load` is False (a
    wrapper such as SemPT loads them after wrapping)."""
    record = checkpoint.record
    method = build_method(record.method, clip, record.train_classnames, settings)
    if load:
        method.load_trainable_state(checkpoint.tensors, source=str(checkpoint.path))
    return method


def load_teacher(
    checkpoint: Path, device: Any = "cpu", overrides: Mapping[str, Any] | None = None, *, half: bool = False
) -> Method:
    """Rebuild a trained teacher from its checkpoint alone (the run record carries backbone and settings);
    `overrides` may only set `paths.*`; `half`: the backbone in the official fp16 layout (the caller's runtime,
    not the precision the teacher was trained with). Training-only inputs (PromptSRC's 60-template targets) are
    not built."""
    learned = load_learned(checkpoint)
    settings = run_settings(learned.record, load_settings(overrides, env={}).settings.paths)
    seed_everything(settings.data.seed)  # a randomly initialised backbone is rebuilt exactly as in training
    clip = load_backbone(settings.model, device, settings.paths.cache_dir, half=half)
    return rebuild_method(learned, clip, settings)


def image_size(clip: LoadedClip) -> int:
    size = clip.preprocess.image_size
    return size if isinstance(size, int) else size[0]


def evaluate_protocol(
    method: Method, prepared: PreparedData, settings: Settings, runtime: Runtime, size: int,
    console: Console | None = None, dist: DistContext | None = None,
) -> dict[str, Any]:
    """Scores as the papers report them (base and novel separately, HM) plus all classes competing; the same
    one-pass scorer as `sempt eval`, so training-time and evaluation numbers agree exactly. Test images left out
    (`data.on_corrupt = skip`) are said at once and counted under `UNREADABLE`, so the saved scores say it too.
    Under `torchrun` the ranks share the test images instead of each scoring all of them."""
    full = prepared.full
    method = calibrate(method, prepared.train.train, full.classnames, clip_test_transform(size), runtime,
                       cache_dir=None, key={}, batch_size=settings.data.eval_batch_size, workers=settings.data.workers)
    counts, unreadable = score_views(
        method, full.test, full.classnames, views_for(settings.data.setting, full.num_classes),
        clip_test_transform(size), runtime, batch_size=settings.data.eval_batch_size,
        workers=settings.data.workers, on_corrupt=settings.data.on_corrupt, console=console, dist=dist,
    )
    metrics: dict[str, Any] = metrics_from_counts(settings.data.setting, counts)
    if unreadable:
        (console or Console(stderr=True)).print(
            f"[yellow]{settings.data.dataset}: {unreadable} unreadable test image(s) left out[/]")
        metrics[UNREADABLE] = unreadable
    return metrics


def epoch_selection(
    method: Method, prepared: PreparedData, settings: Settings, runtime: Runtime, size: int,
    dist: DistContext | None = None,
) -> EpochSelection:
    """What `train.select = official-best` maximises, as the official PromptKD code (spec §3.5): in base-to-novel
    the accuracy among the base classes on their test images (Dassl's `val` split there), elsewhere the accuracy
    on the test split (the official `val = test`)."""
    full = prepared.full
    view = views_for(settings.data.setting, full.num_classes)[0]  # base2novel: base; else all classes
    samples = [s for s in full.test if view.start <= s.label < view.stop]
    quiet = Console(quiet=True)  # the training progress bar is live meanwhile

    def score() -> float:
        counts, _ = score_views(
            method, samples, full.classnames, [view], clip_test_transform(size), runtime,
            batch_size=settings.data.eval_batch_size, workers=settings.data.workers,
            on_corrupt=settings.data.on_corrupt, console=quiet, dist=dist,
        )
        return float(metrics_from_counts("accuracy", counts)[view.name])

    what = "base-class accuracy on the test split" if view.name == "base" else "accuracy on the test split"
    return EpochSelection(score, what)


def selection_record(result: TrainResult) -> dict[str, Any]:
    """For metrics.json: which epoch `official-best` kept and every epoch's score (nothing for `last`)."""
    if result.selected_epoch is None:
        return {}
    return {"selected_epoch": result.selected_epoch,
            "epoch_scores": {str(epoch): score for epoch, score in sorted(result.epoch_scores.items())}}


@dataclass
class RunLifecycle:
    """One training job from settings to scored checkpoint; the job supplies its run folder, method and record."""

    resolved: ResolvedSettings
    console: Console
    dist: DistContext
    runtime: Runtime = field(init=False)
    clip: LoadedClip = field(init=False)

    @classmethod
    def start(cls, resolved: ResolvedSettings, console: Console | None = None,
              dist: DistContext | None = None) -> RunLifecycle:
        """Place the job, seed it and load its backbone (seeded first: a random-init backbone is reproducible)."""
        life = cls(resolved, console or Console(stderr=True), dist or init_distributed())
        settings = resolved.settings
        life.runtime = resolve_runtime(settings.model, life.dist.local_rank)
        seed_everything(settings.data.seed)
        life.clip = load_backbone(settings.model, life.runtime.device, settings.paths.cache_dir,
                                  half=life.runtime.half_weights)
        return life

    @property
    def settings(self) -> Settings:
        return self.resolved.settings

    @property
    def identity(self) -> str | None:
        return backbone_identity(self.clip)

    def finished(self, run_dir: Path, what: str) -> TrainedRun | None:
        """The run in `run_dir` if it has finished (checkpoint and metrics both written)."""
        checkpoint = run_dir / f"{CHECKPOINT_NAME}.safetensors"
        metrics_path = run_dir / METRICS_FILE
        if not (metrics_path.is_file() and checkpoint.is_file()):
            return None
        self.console.print(f"[green]Already {what}[/] — reusing {escape(str(run_dir))}")
        saved = json.loads(metrics_path.read_text())
        return TrainedRun(run_dir, checkpoint, saved["metrics"], saved.get("mode", ""))

    def training_views(self, prepared: PreparedData) -> SeededImageDataset:
        """Deterministic augmented views of the training images: a function of (seed, epoch, index)."""
        data = self.settings.data
        augment = clip_train_transform(image_size(self.clip), scale=(data.crop_scale_min, 1.0))
        return SeededImageDataset(prepared.train.train, augment, data.seed, data.on_corrupt)

    def record(self, kind: Literal["teacher", "student"], method_name: str, prepared: PreparedData,
               train_classnames: Sequence[str], **fields: Any) -> RunRecord:
        settings = self.settings
        return RunRecord(
            kind=kind, method=method_name, backbone=self.clip.backbone, pretrained=settings.model.pretrained,
            backbone_identity=self.identity, dataset=settings.data.dataset, setting=settings.data.setting,
            classnames=prepared.full.classnames, num_base=prepared.num_base, train_classnames=list(train_classnames),
            settings=settings.model_dump(mode="json"), sempt_version=__version__, **fields,
        )

    def train(
        self, run_dir: Path, method: Method, dataset: SeededImageDataset, prepared: PreparedData, record: RunRecord,
        banner: str, *, mode: str = "", stop_after_steps: int | None = None,
    ) -> TrainedRun:
        """Train (resuming if interrupted), save the checkpoint with its record, evaluate, write the metrics."""
        checkpoint = run_dir / f"{CHECKPOINT_NAME}.safetensors"
        if self.dist.is_main:
            self.console.print(f"{banner} · {self.runtime.describe()} · run {escape(str(run_dir))}")
        size = image_size(self.clip)
        selection = epoch_selection(method, prepared, self.settings, self.runtime, size, self.dist)
        result = Trainer(method, dataset, self.settings, run_dir, self.runtime, self.dist, self.console,
                         selection).fit(stop_after_steps)
        if not result.finished:
            return TrainedRun(run_dir, checkpoint, {}, mode)
        if self.dist.is_main:
            save_learned(checkpoint, method.trainable_state(), record)
        metrics = evaluate_protocol(method, prepared, self.settings, self.runtime, size, self.console, self.dist)
        if self.dist.is_main:
            atomic_write_json(run_dir / METRICS_FILE, {
                "metrics": metrics, "train_seconds": result.seconds, "steps": result.steps,
                "settings_sources": self.resolved.sources, **({"mode": mode} if mode else {}),
                **selection_record(result),
            })
        return TrainedRun(run_dir, checkpoint, metrics, mode)
