"""`evaluate_checkpoint` / `evaluate_runs`: score teachers, students and zero-shot CLIP under the papers' protocols.

checkpoint + sidecar → the model rebuilt exactly (teacher: its prompts on its backbone; student: its prompts and
projector, classifying against the teacher's class vectors for whichever classes are scored; zero-shot: the
frozen CLIP with each dataset's template) → per dataset, one pass over the test images that scores every view:

* base2novel: base among base, novel among novel (→ HM), and all classes competing (an extra the papers lack);
* cross-dataset: the source and each target's full test split with the target's own class names;
* cross-domain: the source, ImageNet-V2/-Sketch (1000-way) and -A/-R (200-way over their subsets' names);
* few-shot: all-class accuracy on the test split.

Each evaluation is a record (`report.records`) under `eval.results_dir`, named by a content key (checkpoint
hashes, protocol, dataset list, numerics, version) and rewritten after every dataset: an identical re-run
reuses it, an interrupted one resumes, and datasets that were missing on disk are retried.
"""

from __future__ import annotations

import functools
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import Tensor

from sempt_cli import __version__
from sempt_cli.data import DEMO_KEY, load_dataset
from sempt_cli.data.demo import ensure_demo_world
from sempt_cli.engine.evaluate import metrics_from_counts, score_views, views_for
from sempt_cli.engine.runtime import Runtime, resolve_runtime, seed_everything
from sempt_cli.errors import DatasetError, SemptError, WeightsError
from sempt_cli.io import atomic_write_json, sha256_file, stable_hash
from sempt_cli.methods import Method
from sempt_cli.methods.promptkd import TeacherSignals
from sempt_cli.methods.sempt import SemPT
from sempt_cli.models.checkpoint import LearnedCheckpoint, load_learned
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.identity import backbone_identity
from sempt_cli.models.record import RunRecord
from sempt_cli.pipeline.backbone import load_backbone
from sempt_cli.pipeline.calibration import calibrate
from sempt_cli.pipeline.data import prepare_data
from sempt_cli.pipeline.embed import embed_classes
from sempt_cli.pipeline.runs import build_method, image_size, rebuild_method, run_settings
from sempt_cli.pipeline.sempt import INFERENCE_TITLES, VARIANT, SemptSource, apply_sempt, attribute_file
from sempt_cli.protocol import Batch
from sempt_cli.report.paper import BASE2NOVEL_DATASETS, DOMAIN_SHIFT_DATASETS
from sempt_cli.report.records import (
    RECORD_FORMAT,
    DatasetResult,
    EvalRecord,
    Group,
    ModelInfo,
    aggregate,
    is_record_file,
    load_record,
    paper_backbone,
)
from sempt_cli.settings import EvalSetting, Settings

MODEL_INDEPENDENT = {
    "paths": None, "llm": None, "eval": None,
    "data": ("seed", "dataset", "workers", "eval_batch_size", "on_corrupt"), "model": ("device",),
    "train": ("tensorboard",),
}
"""Settings that do not define a model family: seeds are averaged over, datasets are columns, the rest is
placement. Everything else must agree between checkpoints averaged as seeds."""


def default_datasets(setting: str, source: str) -> list[str]:
    """What a protocol scores: the training dataset, or the source followed by the papers' transfer targets."""
    if source == DEMO_KEY:
        return [source]  # the demo world has nothing to transfer to
    if setting == "cross-dataset":
        return [source, *(d for d in BASE2NOVEL_DATASETS if d != source)]
    if setting == "cross-domain":
        return [source, *(d for d in DOMAIN_SHIFT_DATASETS if d != source)]
    return [source]


# ------------------------------------------------------------------------------------------------------ models


def config_hash(settings: Settings) -> str:
    """Hash of the settings that define a model family (see MODEL_INDEPENDENT)."""
    dumped = settings.model_dump(mode="json")
    kept = {}
    for section, values in dumped.items():
        dropped = MODEL_INDEPENDENT.get(section, ())
        if dropped is None:
            continue
        kept[section] = {k: v for k, v in values.items() if k not in dropped}
    return stable_hash(kept, length=12)


class _Model(ABC):
    """A model under evaluation: what it is (for the record and key), and how to get a method for a dataset."""

    info: ModelInfo
    settings: Settings
    key_parts: dict[str, Any]
    sidecar: LearnedCheckpoint
    sempt: dict[str, Any] | None = None  # what a SemPT model was built from (its sidecar's `sempt`)

    def __init__(self) -> None:
        self.clip: LoadedClip | None = None

    def _adopt_sempt(self, record: RunRecord, current: Settings) -> str:
        """A SemPT model is scored with today's inference rule (Table 4a); returns the variant for its title."""
        variant = record.variant  # e.g. 'w/ SemPT', written by the pipeline that trained it
        self.sempt = record.sempt
        if self.sempt is None:
            return variant
        rule = current.sempt.inference
        self.settings = self.settings.model_copy(
            update={"sempt": self.settings.sempt.model_copy(update={"inference": rule})})
        return VARIANT if rule == "hybrid" else f"{VARIANT} ({INFERENCE_TITLES[rule]})"

    def _sempt_key(self, datasets: Sequence[str]) -> dict[str, Any]:
        """SemPT scores transfer targets with their own attribute files: their contents are part of the key."""
        if self.sempt is None:
            return {}
        files: dict[str, str | None] = {}
        for dataset in datasets:
            try:
                files[dataset] = sha256_file(self._attribute_file(dataset))
            except SemptError:
                files[dataset] = None  # needed only if some class of it is unseen; scoring will say so
        return {"inference": self.settings.sempt.inference, "attributes": files}

    def _attribute_file(self, dataset: str) -> Path:
        """The training dataset's own file as recorded (it must be unchanged); other datasets' files by name."""
        assert self.sempt is not None
        recorded = self.sempt.get("attributes_file")
        if dataset == self.sidecar.record.dataset and recorded:
            path = Path(recorded)
            if not path.is_file() or sha256_file(path) != self.sempt["attributes_sha256"]:
                raise SemptError(f"The attribute file this model was trained with ({path}) is missing or changed.",
                                 "Restore it: its descriptions are part of the trained model.")
            return path
        return attribute_file(dataset, self.settings, explicit=False)

    def ensure_loaded(self, runtime: Runtime) -> LoadedClip:
        """Load the backbone the first time a dataset actually needs scoring (a reused record needs none)."""
        if self.clip is None:
            seed_everything(self.settings.data.seed)  # a random-init backbone is rebuilt exactly as in training
            self.clip = load_backbone(self.settings.model, runtime.device, self.settings.paths.cache_dir,
                                      half=runtime.half_weights)  # today's precision, not the training run's
            self.loaded(runtime)
        return self.clip

    def loaded(self, runtime: Runtime) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Called once after the backbone is loaded (a teacher rebuilds its method here)."""

    def calibrated(self, method: Method, dataset: str, classnames: list[str], runtime: Runtime,
                   console: Console) -> Method:
        """Under the `calibrated` rule, fit (or read) a SemPT model's calibration on the unlabelled images of
        its own training set; every other model is returned as it is (`pipeline.calibration`)."""
        if not isinstance(method, SemPT) or not method.needs_calibration:
            return method
        from sempt_cli.data.transforms import clip_test_transform

        assert self.clip is not None
        samples = prepare_data(self.settings).train.train  # the images it was trained on; labels are not read
        return calibrate(method, samples, classnames, clip_test_transform(image_size(self.clip)), runtime,
                         cache_dir=self.settings.paths.cache_dir, key=self.key_for([dataset]),
                         batch_size=self.settings.data.eval_batch_size, workers=self.settings.data.workers,
                         console=console)

    def key_for(self, datasets: Sequence[str]) -> dict[str, Any]:
        """What identifies this model's scores on `datasets` (part of the record key)."""
        return self.key_parts | self._sempt_key(datasets)

    @abstractmethod
    def method_for(self, dataset: str, classnames: list[str], runtime: Runtime, console: Console) -> Method:
        """A method that scores `classnames` of `dataset`."""


class _Teacher(_Model):
    """A supervised prompt learner (PromptSRC, IVLP, CoOp, VPT, MMRL, ...), with or without SemPT: its text side
    encodes any class list."""

    def __init__(self, sidecar: LearnedCheckpoint, current: Settings) -> None:
        super().__init__()
        record = sidecar.record
        self.sidecar = sidecar
        self.settings = run_settings(record, current.paths)
        variant = self._adopt_sempt(record, current)
        self.info = ModelInfo(
            kind="teacher", method=record.method, backbone=record.backbone,
            pretrained=record.pretrained or self.settings.model.pretrained, shots=self.settings.data.shots,
            seed=self.settings.data.seed, config_hash=config_hash(self.settings), train_dataset=record.dataset,
            train_setting=record.setting, checkpoint=str(sidecar.path), checkpoint_sha256=sidecar.sha256,
            backbone_identity=record.backbone_identity, variant=variant,
        )
        self.key_parts = {"kind": "teacher", "checkpoint": sidecar.sha256}
        self.method: Method | None = None

    def loaded(self, runtime: Runtime) -> None:
        assert self.clip is not None
        self.method = rebuild_method(self.sidecar, self.clip, self.settings, load=self.sempt is None)

    def method_for(self, dataset: str, classnames: list[str], runtime: Runtime, console: Console) -> Method:
        assert self.method is not None and self.clip is not None
        if self.sempt is None:
            return self.method
        record = self.sidecar.record  # seen classes: its own training classes; descriptions where needed
        source = SemptSource.frozen_backbone(self.clip, record.dataset, record.seen_classnames, self.settings)
        method, _ = apply_sempt(self.method, source, dataset, classnames, self.settings, training=False,
                                file_for=self._attribute_file, console=console)
        method.load_trainable_state(self.sidecar.tensors, source=str(self.sidecar.path))
        return self.calibrated(method, dataset, classnames, runtime, console)


def _no_teacher_images(batch: Batch) -> Tensor:
    raise SemptError("Evaluation does not run the teacher's image encoder.")


class _Student(_Model):
    """A distilled student: its image side is its own, its classifier the teacher's class vectors for the
    classes being scored (computed once per class list by `embed_classes` and cached)."""

    def __init__(self, sidecar: LearnedCheckpoint, current: Settings, teacher: Path | None) -> None:
        super().__init__()
        record = sidecar.record
        if record.teacher_sha256 is None or record.teacher_checkpoint is None:
            raise WeightsError(f"The run record of student {sidecar.path} does not name its teacher.")
        self.sidecar = sidecar
        self.current = current
        self.settings = run_settings(record, current.paths)
        variant = self._adopt_sempt(record, current)
        self.teacher = Path(teacher or record.teacher_checkpoint)  # verified only if something needs scoring
        self.teacher_sha256 = record.teacher_sha256
        self.info = ModelInfo(
            kind="student", method=record.method, backbone=record.backbone,
            pretrained=self.settings.model.pretrained, shots=self.settings.data.shots, seed=self.settings.data.seed,
            config_hash=config_hash(self.settings), train_dataset=record.dataset, train_setting=record.setting,
            checkpoint=str(sidecar.path), checkpoint_sha256=sidecar.sha256, teacher_checkpoint=str(self.teacher),
            teacher_sha256=record.teacher_sha256, backbone_identity=record.backbone_identity,
            variant=variant,
        )
        self.key_parts = {"kind": "student", "checkpoint": sidecar.sha256, "teacher": record.teacher_sha256}

    def loaded(self, runtime: Runtime) -> None:
        _verify_teacher(self.teacher, self.teacher_sha256)

    def method_for(self, dataset: str, classnames: list[str], runtime: Runtime, console: Console) -> Method:
        assert self.clip is not None
        vectors = embed_classes(self.teacher, self.current, classnames=classnames, console=console).vectors
        vectors = vectors.to(runtime.device)
        signals = TeacherSignals(lambda: vectors, _no_teacher_images)
        method = build_method(self.info.method, self.clip, classnames, self.settings, teacher=signals,
                              teacher_dim=int(vectors.shape[1]))
        if self.sempt is not None:  # seen classes from the teacher, descriptions only where needed
            source = SemptSource.from_teacher(self.teacher, self.settings)
            method, _ = apply_sempt(method, source, dataset, classnames, self.settings, training=False,
                                    file_for=self._attribute_file, console=console)
        method.load_trainable_state(self.sidecar.tensors, source=str(self.sidecar.path))
        return self.calibrated(method, dataset, classnames, runtime, console)


def _verify_teacher(path: Path, expected_sha256: str) -> None:
    """The student's class vectors must come from the very teacher it was distilled from."""
    try:
        sha = load_learned(path).sha256
    except WeightsError as exc:
        raise WeightsError(
            f"The student's teacher checkpoint is needed for its class vectors, but {exc.message}",
            "Pass its current location with --teacher.",
        ) from None
    if sha != expected_sha256:
        raise WeightsError(f"{path} is not the teacher this student was distilled from (sha256 differs).",
                           "Pass the right teacher checkpoint with --teacher.")


class _ZeroShot(_Model):
    """Frozen CLIP with each dataset's hand-written template: the reference every learner is compared with."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        super().__init__()
        self.settings = settings
        clip = self.ensure_loaded(runtime)  # the weights' hash is part of the record key
        identity = backbone_identity(clip)
        seed = settings.data.seed if identity is None else 0  # only a random backbone depends on the seed
        self.info = ModelInfo(
            kind="zeroshot", method="zeroshot", backbone=settings.model.backbone,
            pretrained=settings.model.pretrained, shots=0, seed=seed,
            config_hash=stable_hash(settings.model.backbone, settings.model.pretrained, identity, length=12),
            train_dataset=settings.data.dataset, backbone_identity=identity,
        )
        self.key_parts = {"kind": "zeroshot", "backbone": settings.model.backbone,
                          "weights": identity or f"random-init seed {settings.data.seed}"}

    def method_for(self, dataset: str, classnames: list[str], runtime: Runtime, console: Console) -> Method:
        assert self.clip is not None
        settings = self.settings.model_copy(update={"data": self.settings.data.model_copy(update={"dataset": dataset})})
        return build_method("zeroshot", self.clip, classnames, settings)  # the template is the dataset's


# ------------------------------------------------------------------------------------------------- evaluation


def _versions() -> dict[str, str]:
    try:
        import open_clip

        open_clip_version = str(open_clip.__version__)
    except Exception:  # pragma: no cover - open_clip is a dependency
        open_clip_version = "unknown"
    return {"sempt": __version__, "torch": torch.__version__, "open_clip": open_clip_version,
            "python": platform.python_version()}


def _comparability(info: ModelInfo, settings: Settings, datasets: Sequence[str]) -> tuple[bool, str, str | None]:
    """Whether paper rows may be shown next to this model, and if not, the sentence that says why."""
    if info.train_dataset == DEMO_KEY or DEMO_KEY in datasets:
        return False, "Demo world (synthetic data): these numbers are not comparable to the papers' numbers.", None
    backbone = paper_backbone(info.backbone)
    if backbone is None:
        return False, f"No paper reports the {info.backbone} backbone; no paper rows.", None
    if settings.model.checkpoint is None and info.pretrained != "openai":
        weights = "randomly initialised" if info.pretrained is None else f"'{info.pretrained}'"
        return False, f"The papers use OpenAI CLIP weights; this backbone's weights are {weights}.", backbone
    return True, "", backbone


def _record_path(settings: Settings, info: ModelInfo, setting: str, source: str, key: str) -> Path:
    name = f"{info.method}-{info.kind}"
    if info.kind == "zeroshot":
        name = f"zeroshot-{info.backbone}"
    elif setting == "few-shot":
        name += f"-{info.shots}shot"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return settings.eval.results_dir / setting / source / f"{safe}-seed{info.seed}-{key}.json"


@functools.lru_cache(maxsize=8)
def _demo_root(cache_dir: Path) -> Path:
    return ensure_demo_world(cache_dir)  # checking an existing world still re-derives it (seconds): once is enough


def _data_root(dataset: str, settings: Settings) -> Path:
    return _demo_root(settings.paths.cache_dir) if dataset == DEMO_KEY else settings.paths.data_root


def _score_dataset(model: _Model, dataset: str, setting: str, settings: Settings, runtime: Runtime,
                   console: Console) -> DatasetResult:
    from sempt_cli.data.transforms import clip_test_transform

    started = time.perf_counter()
    try:
        full = load_dataset(dataset, _data_root(dataset, settings))
    except DatasetError as exc:
        console.print(f"[yellow]Skipping {dataset}[/]: {escape(str(exc))}")
        return DatasetResult(dataset, "skipped", message=str(exc))
    if not full.test:
        return DatasetResult(dataset, "skipped", message=f"Dataset {dataset} has no test images.")
    clip = model.ensure_loaded(runtime)
    label = f"{model.info.method} {model.info.kind}"
    console.print(f"[bold]eval[/] {label} · {setting} · {dataset} ({len(full.test)} test images, "
                  f"{full.num_classes} classes) · {runtime.describe()}")
    method = model.method_for(dataset, full.classnames, runtime, console)
    per_class: dict[str, dict[str, list[int]]] = {}
    counts, unreadable = score_views(
        method, full.test, full.classnames, views_for(setting, full.num_classes),
        clip_test_transform(image_size(clip)), runtime, batch_size=settings.data.eval_batch_size,
        workers=settings.data.workers, on_corrupt=settings.data.on_corrupt, description=dataset,
        in_domain=dataset == model.info.train_dataset, console=console, per_class=per_class,
    )
    if unreadable:
        console.print(f"[yellow]{dataset}: {unreadable} unreadable test image(s) left out[/]")
    return DatasetResult(dataset, "ok", metrics_from_counts(setting, counts), counts, full.num_classes, unreadable,
                         time.perf_counter() - started, per_class=per_class)


def _settings_record(model: Settings, current: Settings, setting: str, planned: list[str],
                     numerics: dict[str, str]) -> dict[str, Any]:
    """The model's own settings (as trained, today's paths) and, under `eval`, how it was evaluated."""
    dumped = model.model_dump(mode="json")
    dumped.pop("llm", None)
    dumped["eval"] = {**current.eval.model_dump(mode="json"), "setting": setting, "datasets": planned, **numerics,
                      "eval_batch_size": current.data.eval_batch_size, "workers": current.data.workers}
    return dumped


def _evaluate(model: _Model, settings: Settings, setting: str, datasets: Sequence[str] | None, runtime: Runtime,
              console: Console, command: Sequence[str] | None) -> EvalRecord:
    source = model.info.train_dataset or settings.data.dataset
    planned = list(datasets or settings.eval.datasets or default_datasets(setting, source))
    precision = "fp16-official" if runtime.half_weights else str(runtime.amp_dtype or "fp32")
    numerics = {"device": runtime.device.type, "precision": precision,
                "on_corrupt": settings.data.on_corrupt}
    key = stable_hash(RECORD_FORMAT, __version__, model.key_for(planned), setting, planned, numerics, length=16)
    path = _record_path(settings, model.info, setting, source, key)
    record = None
    if settings.eval.reuse and path.is_file():
        try:
            record = load_record(path)
        except SemptError as exc:
            console.print(f"[yellow]{escape(exc.message)}[/] Evaluating again.")
    done = {} if record is None else {d: r for d, r in record.results.items() if r.status == "ok"}
    todo = [d for d in planned if d not in done]
    if record is not None and not todo:
        console.print(f"[green]Already evaluated[/] — reusing {escape(str(path))}")
        record.reused = True
        return record
    comparable, note, backbone = _comparability(model.info, model.settings, planned)
    started = time.perf_counter()
    record = EvalRecord(
        key=key, setting=setting, model=model.info, datasets=planned, results=dict(done), comparable=comparable,
        comparability_note=note, paper_backbone=backbone, data_root=str(_data_root(source, settings)),
        settings=_settings_record(model.settings, settings, setting, planned, numerics),
        versions=_versions(),
        timings={"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": 0.0,
                 "reused_datasets": sorted(done)},
        command=list(command) if command is not None else None, path=path,
    )
    for dataset in todo:
        record.results[dataset] = _score_dataset(model, dataset, setting, settings, runtime, console)
        record.results = {d: record.results[d] for d in planned if d in record.results}
        record.timings["seconds"] = round(time.perf_counter() - started, 3)
        atomic_write_json(path, record.to_json())  # after every dataset: an interruption loses one at most
    return record


def evaluate_checkpoint(
    checkpoint: Path,
    settings: Settings,
    *,
    setting: EvalSetting | None = None,
    datasets: Sequence[str] | None = None,
    teacher: Path | None = None,
    console: Console | None = None,
    command: Sequence[str] | None = None,
) -> EvalRecord:
    """Score a teacher or student checkpoint (or reuse an identical earlier evaluation).

    `settings` supplies paths, device, precision, batch size and `eval.*`; the model itself comes from the
    sidecar. `setting` defaults to the protocol the checkpoint was trained for, `datasets` to that protocol's
    list (`default_datasets`); `teacher` relocates a student's teacher checkpoint.
    """
    console = console or Console(stderr=True)
    sidecar = load_learned(checkpoint)
    model: _Model = (_Teacher(sidecar, settings) if sidecar.record.kind == "teacher"
                     else _Student(sidecar, settings, teacher))
    runtime = resolve_runtime(settings.model)
    return _evaluate(model, settings, setting or sidecar.record.setting, datasets, runtime, console, command)


def evaluate_zeroshot(
    settings: Settings,
    *,
    datasets: Sequence[str] | None = None,
    console: Console | None = None,
    command: Sequence[str] | None = None,
) -> EvalRecord:
    """Score zero-shot CLIP (`model.backbone`, `model.pretrained`/`model.checkpoint`) on `data.dataset` under
    `data.setting`."""
    console = console or Console(stderr=True)
    runtime = resolve_runtime(settings.model)
    model = _ZeroShot(settings, runtime)
    return _evaluate(model, settings, settings.data.setting, datasets, runtime, console, command)


@dataclass
class EvalReport:
    """Every record that was evaluated or read, and the rows they aggregate into."""

    records: list[EvalRecord]
    groups: list[Group]


def evaluate_runs(
    inputs: Sequence[Path],
    settings: Settings,
    *,
    zeroshot: bool = False,
    setting: EvalSetting | None = None,
    datasets: Sequence[str] | None = None,
    teacher: Path | None = None,
    console: Console | None = None,
    command: Sequence[str] | None = None,
) -> EvalReport:
    """Evaluate several checkpoints (e.g. one per seed), read earlier records given instead of checkpoints,
    optionally add zero-shot CLIP, and aggregate: mean ± population std over seeds per dataset."""
    console = console or Console(stderr=True)
    records = []
    for path in inputs:
        if is_record_file(Path(path)):
            records.append(load_record(Path(path)))
        else:
            records.append(evaluate_checkpoint(Path(path), settings, setting=setting, datasets=datasets,
                                               teacher=teacher, console=console, command=command))
    if zeroshot:
        records.append(evaluate_zeroshot(settings, datasets=datasets, console=console, command=command))
    if not records:
        raise SemptError("Nothing to evaluate.", "Give checkpoints (RUN/model.safetensors), records, or --zeroshot.")
    return EvalReport(records, aggregate(records, settings.eval.round_per_seed))
