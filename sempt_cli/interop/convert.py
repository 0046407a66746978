"""Official checkpoints in, sempt checkpoints out, and back: `import_teacher`, `import_student`, `export_official`.

Import: read the Dassl file safely (`interop.dassl`) → tell its family (PromptSRC/IVLP or MMRL teacher, PromptKD
student) by its keys → read its geometry off the tensors (prompt depth and length; MMRL: K, d_r and aligners per
tower, placed on the backbone's blocks) → resolve settings (dataset, setting, shots and seed from the official
folder names unless given, the official backbone guessed from the token widths unless given, the method's preset
beneath, the file's geometry above everything) → build our method on the named backbone → map and verify every
tensor (`interop.official`) → compare the file's frozen CLIP copy with our backbone → write `model.safetensors` +
sidecar with the same metadata a trained run has, so `sempt eval`, `sempt embed` and `sempt distill` use it
unchanged.

Export: a sempt teacher or student → the official state-dict names → a Dassl `.pth.tar` in the folder the
official code reads it from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from rich.console import Console
from rich.markup import escape
from torch import Tensor

from sempt_cli import __version__
from sempt_cli.data.registry import all_classnames
from sempt_cli.data.subsample import split_base_new
from sempt_cli.engine.runtime import seed_everything
from sempt_cli.errors import SettingsError, WeightsError
from sempt_cli.interop.dassl import DasslCheckpoint, read_dassl_checkpoint, write_dassl_checkpoint
from sempt_cli.interop.official import (
    dataset_from_path,
    detect_layout,
    layout_for,
    official_layouts,
    run_from_path,
    shallow_teacher_warning,
)
from sempt_cli.methods import Method, get_method
from sempt_cli.methods.promptkd import PROMPTKD_STUDENT, PromptKD
from sempt_cli.methods.promptsrc import PROMPTSRC_TEACHER
from sempt_cli.models.checkpoint import checkpoint_paths, load_learned, save_learned
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.identity import backbone_identity
from sempt_cli.models.official_layout import ExportPlace, Geometry, Layout
from sempt_cli.models.record import RunRecord
from sempt_cli.pipeline.backbone import load_backbone
from sempt_cli.pipeline.distill import resolve_distill_settings
from sempt_cli.pipeline.runs import CHECKPOINT_NAME, method_constructor, run_key
from sempt_cli.settings import ResolvedSettings, Settings, load_settings

OFFICIAL_BACKBONES: dict[tuple[int, int], str] = {
    (1024, 768): "ViT-L-14-quickgelu",  # the PromptKD teacher (spec §0)
    (768, 512): "ViT-B-16-quickgelu",  # PromptSRC B/16, MMRL
}
"""(vision width, text width) of the prompts (MMRL: of the aligners' outputs) → the OpenAI backbone the official
code trains on."""

FROZEN_TOLERANCE = 1e-2
"""Relative L2 difference above which a frozen tensor saved in the file is not our backbone's: PromptSRC's
whole-state-dict GPA perturbs frozen fp16 weights by ~1 ulp (relative ~5e-4, spec §5.5), other weights by far
more."""

IMPORT_SECTIONS = ("model", "data")
"""The settings sections every import's run key covers; the layout adds the ones its geometry sets."""
TRANSFER_SETTINGS = ("cross-dataset", "cross-domain")
"""Settings where a student is distilled on another dataset than its teacher's (PromptKD's cross-dataset students
learn on each target's unlabelled images from the ImageNet teacher)."""


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote and what it noticed."""

    checkpoint: Path
    source: Path
    layout: str
    epoch: int | None
    geometry: Geometry
    tensors: int  # learned tensors imported
    dropped: int  # frozen-backbone copies and class-list buffers left out
    warnings: list[str]
    settings: Settings
    frozen: int = 0  # of `dropped`: frozen CLIP tensors, checked against the backbone (shapes; values if it has any)


@dataclass(frozen=True)
class ExportResult:
    """Where an export wrote the official file."""

    path: Path
    layout: str
    tensors: int
    epoch: int


# ------------------------------------------------------------------------------------------------------- import


def import_teacher(
    path: str | Path,
    *,
    method: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    out: str | Path | None = None,
    clip: LoadedClip | None = None,
    console: Console | None = None,
) -> ImportResult:
    """Import an official PromptSRC/IVLP checkpoint (also what PromptKD loads as its teacher) or MMRL checkpoint
    as a sempt teacher.

    `method` is promptsrc or ivlp for PromptSRC/IVLP files, mmrl for MMRL files; None takes the file's family
    (promptsrc for PromptSRC/IVLP). `overrides` are dotted settings (`model.backbone`, `data.dataset`,
    `data.setting`, `paths.*`, ...); prompt depth and length (MMRL: K, d_r, start layer) always come from the
    file. `out` defaults to a run folder under `paths.output_dir`; `clip` reuses an already loaded backbone (it
    must be the one the settings name)."""
    console = console or Console(stderr=True)
    teachers = [layout for layout in official_layouts().values() if layout.kind == "teacher"]
    if method is not None and not any(method in layout.methods for layout in teachers):
        known = ", ".join(f"{' or '.join(layout.methods)} ({layout.name})" for layout in teachers)
        raise SettingsError(f"Official teacher checkpoints import as {known}, not {method!r}.")
    ckpt, layout = _read(path, *(t for t in teachers if method is None or method in t.methods))
    method = method or layout.methods[0]
    resolved, geometry = _teacher_settings(method, layout, ckpt.path, layout.geometry(ckpt.state_dict), overrides,
                                           config_file, env)
    settings = resolved.settings
    shallow = shallow_teacher_warning(geometry, str(ckpt.path)) if layout is PROMPTSRC_TEACHER else None
    warnings = [shallow] if shallow else []
    for warning in warnings:
        _warn(console, warning)
    seed_everything(settings.data.seed)  # a random-init backbone is rebuilt exactly by `sempt eval`
    clip = clip or load_backbone(settings.model, torch.device("cpu"), settings.paths.cache_dir)
    classnames = all_classnames(settings.data.dataset)
    num_base, _ = split_base_new(len(classnames))
    seen = {"base": classnames[:num_base], "new": classnames[num_base:], "all": classnames}[settings.data.subsample]
    model = method_constructor(get_method(method))(clip, seen, settings)
    model.load_trainable_state(layout.to_ours(ckpt.state_dict, model.trainable_state(), source=str(ckpt.path)),
                               source=str(ckpt.path))
    warnings += _check_frozen(layout, ckpt, clip, console)
    identity = backbone_identity(clip)
    record = RunRecord(
        kind="teacher", method=method, backbone=clip.backbone, pretrained=settings.model.pretrained,
        backbone_identity=identity, dataset=settings.data.dataset, setting=settings.data.setting,
        train_classnames=seen, classnames=classnames, num_base=num_base,
        settings=settings.model_dump(mode="json"), sempt_version=__version__,
        imported_from=_provenance(ckpt, layout, geometry, warnings),
    )
    key = run_key(method, settings, f"{identity}|official:{ckpt.sha256}", (*IMPORT_SECTIONS, *layout.sections))
    default = settings.paths.output_dir / "teachers" / settings.data.dataset / \
        f"{method}-{settings.data.setting}-official-{key}"
    written = save_learned(_target(out, default), model.trainable_state(), record)
    return _result(written, ckpt, layout, geometry, model, warnings, settings)


def import_student(
    path: str | Path,
    teacher: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    out: str | Path | None = None,
    clip: LoadedClip | None = None,
    console: Console | None = None,
) -> ImportResult:
    """Import an official PromptKD student checkpoint, distilled from `teacher` (a sempt teacher checkpoint,
    e.g. the import of the official teacher file), whose class vectors it classifies with.

    Dataset and setting are the teacher's unless given: a cross-dataset student (distilled on a target dataset
    from the ImageNet teacher) names its target with `data.dataset`."""
    console = console or Console(stderr=True)
    ckpt, layout = _read(path, PROMPTKD_STUDENT)
    teacher_ckpt = load_learned(teacher)
    meta = teacher_ckpt.record
    if meta.kind != "teacher":
        raise WeightsError(f"{teacher} is not a teacher checkpoint (kind {meta.kind!r}).",
                           "Pass a teacher's model.safetensors; `sempt interop import-teacher` makes one from the "
                           "official teacher file.")
    geometry = layout.geometry(ckpt.state_dict)
    given = dict(overrides or {})
    _refuse_conflicts(given, geometry.settings(), ckpt.path)
    resolved = resolve_distill_settings("promptkd", Path(teacher), {**given, **geometry.settings(),
                                                                     "sempt.enabled": False},
                                        config_file=config_file, env=env)
    settings = resolved.settings
    dataset, setting = settings.data.dataset, settings.data.setting
    if dataset != meta.dataset and setting not in TRANSFER_SETTINGS:
        raise SettingsError(
            f"A {setting} student classifies its teacher's classes, but {teacher} was trained on {meta.dataset}, "
            f"not {dataset}.",
            "Leave out --dataset, or pass --setting cross-dataset for a student distilled on another dataset.",
        )
    teacher_dim = _embed_dim(meta.backbone)
    projector = ckpt.state_dict.get("VPT_image_trans.conv1.0.weight")
    if projector is not None and int(projector.shape[0]) != teacher_dim:
        raise WeightsError(
            f"{ckpt.path}'s projector maps into {int(projector.shape[0])} dimensions, but the teacher {teacher} "
            f"({meta.backbone}) embeds classes in {teacher_dim}.",
            "Pass the teacher this student was distilled from (PromptKD's is ViT-L/14: 768).",
        )
    seed_everything(settings.data.seed)
    clip = clip or load_backbone(settings.model, torch.device("cpu"), settings.paths.cache_dir)
    classnames = meta.classnames if dataset == meta.dataset else all_classnames(dataset)
    num_base, _ = split_base_new(len(classnames))
    model = PromptKD(clip, classnames, settings, None, teacher=None, teacher_dim=teacher_dim)
    model.load_trainable_state(layout.to_ours(ckpt.state_dict, model.trainable_state(), source=str(ckpt.path)),
                               source=str(ckpt.path))
    warnings = _check_frozen(layout, ckpt, clip, console)
    identity = backbone_identity(clip)
    record = RunRecord(
        kind="student", method="promptkd", backbone=clip.backbone, pretrained=settings.model.pretrained,
        backbone_identity=identity, teacher_checkpoint=str(Path(teacher).resolve()),
        teacher_sha256=teacher_ckpt.sha256, dataset=dataset, setting=setting, classnames=classnames,
        num_base=num_base, train_classnames=classnames, settings=settings.model_dump(mode="json"),
        sempt_version=__version__, imported_from=_provenance(ckpt, layout, geometry, warnings),
    )
    key = run_key("promptkd", settings, f"{identity}|teacher:{teacher_ckpt.sha256}|official:{ckpt.sha256}",
                  (*IMPORT_SECTIONS, *layout.sections))
    default = settings.paths.output_dir / "students" / dataset / f"promptkd-{setting}-official-{key}"
    written = save_learned(_target(out, default), model.trainable_state(), record)
    return _result(written, ckpt, layout, geometry, model, warnings, settings)


# ------------------------------------------------------------------------------------------------------- export


def export_official(checkpoint: str | Path, out: str | Path | None = None) -> ExportResult:
    """Write a sempt teacher or student checkpoint as an official Dassl file, in its method's `official_layout`.

    Only the learned tensors are written, under their official names, as fp32 (the official loaders delete
    `token_prefix`/`token_suffix`/`prompt_embeddings` and load with strict=False into their own fp16/fp32
    parameters, so neither the class-list buffers nor the frozen CLIP are needed). `out` defaults to
    `<run>/official/<where the official code reads it>`; an existing folder gets that relative path inside it."""
    ckpt = load_learned(checkpoint)
    meta = ckpt.record
    layout = layout_for(meta.kind, meta.method)
    if meta.variant or meta.sempt:  # its unseen-class path is SemPT's, whatever tensors it holds
        raise WeightsError(f"{ckpt.path} is {meta.method} {meta.variant or 'w/ SemPT'}, which has no "
                           "official counterpart.", "Export the plain run (--no-sempt) instead.")
    state = layout.to_official(ckpt.tensors, source=str(ckpt.path))
    epoch = int((meta.imported_from or {}).get("epoch") or meta.settings["train"]["epochs"])
    data = meta.settings["data"]
    relative = layout.folder(ExportPlace(meta.dataset, meta.setting, layout.kind, int(data["shots"]),
                                         int(data["seed"]), epoch))
    if out is None:
        target = ckpt.path.parent / "official" / relative
    else:
        target = Path(out) / relative if Path(out).is_dir() else Path(out)
    write_dassl_checkpoint(target, state, epoch)
    return ExportResult(target, layout.name, len(state), epoch)


# ------------------------------------------------------------------------------------------------------ helpers


def _read(path: str | Path, *layouts: Layout) -> tuple[DasslCheckpoint, Layout]:
    """Read the file and make sure it is from one of `layouts`' families (a student file given as teacher, or a
    file of another method, is said so, with how to import it)."""
    ckpt = read_dassl_checkpoint(path)
    found = detect_layout(ckpt.state_dict)
    if found is not None and found in layouts:
        return ckpt, found
    wanted = " or ".join(layout.name for layout in layouts)
    if found is not None:
        how = f"--method {found.methods[0]}" if found.kind == "teacher" else f"`sempt interop import-{found.kind}`"
        raise WeightsError(f"{ckpt.path} is {_a(found.name)} checkpoint, not {_a(wanted)} one.",
                           f"Import it with {how}.")
    raise WeightsError(f"{ckpt.path} holds no {wanted} tensors (no {' or '.join(t.marker for t in layouts)}).",
                       f"sempt imports official {', '.join(official_layouts())} files; other methods' files "
                       "cannot be imported.")


def _teacher_settings(
    method: str, layout: Layout, path: Path, geometry: Geometry, overrides: Mapping[str, Any] | None,
    config_file: Path | None, env: Mapping[str, str] | None,
) -> tuple[ResolvedSettings, Geometry]:
    """User values over the guesses from the file (backbone by token widths, dataset and setting by folder
    names) over the method's preset, the run's shots and seed from the folder names over that; the file's
    geometry over everything. MMRL's geometry is placed on the resolved backbone's blocks (the start layer)."""
    given = dict(overrides or {})
    _refuse_conflicts(given, geometry.settings(), path)
    dataset, setting = dataset_from_path(path)
    guess: dict[str, Any] = {}
    backbone = OFFICIAL_BACKBONES.get((geometry.widths.get("vision", 0), geometry.widths.get("text", 0)))
    if backbone is not None:
        guess |= {"model.backbone": backbone, "model.pretrained": "openai"}
    if dataset is not None:
        guess["data.dataset"] = dataset
    if setting is not None:
        guess["data.setting"] = setting
    run = run_from_path(path)
    first = load_settings({**given, **geometry.settings()}, config_file=config_file, env=env,
                          preset={**guess, **run})
    if first.sources["data.dataset"] == "default":
        raise SettingsError(f"Cannot tell from the folder names of {path} which dataset it was trained on.",
                            "Pass --dataset (e.g. --dataset oxford_flowers).")
    if layout.space is not None:
        geometry = geometry.placed(_blocks(first.settings.model.backbone), str(path))
    derived = geometry.settings()
    _refuse_conflicts(given, derived, path)
    preset = {**guess, **get_method(method).presets(first.settings, first.settings.model.backbone), **run}
    resolved = load_settings({**given, **derived}, config_file=config_file, env=env, preset=preset,
                             preset_name=f"preset {method}/{first.settings.data.setting} + official checkpoint")
    return resolved, geometry


def _blocks(backbone: str) -> dict[str, int]:
    """Transformer blocks per tower of `backbone`, from its open_clip config (what the model will be built with)."""
    cfg = open_clip.get_model_config(backbone)
    if not cfg:
        raise SettingsError(f"Unknown CLIP backbone {backbone!r}.", "See `open_clip.list_models()` for names.")
    layers = {tower: cfg.get(f"{tower}_cfg", {}).get("layers", 12) for tower in ("vision", "text")}
    return {tower: n if isinstance(n, int) else 0 for tower, n in layers.items()}  # a ResNet has no blocks


def _refuse_conflicts(given: Mapping[str, Any], derived: Mapping[str, int], path: Path) -> None:
    """A prompt (or MMRL space) flag that disagrees with the file would build a model with random prompts or
    tokens where the file has none (spec §5.7), or one the file does not fit."""
    clashes = [f"{key} = {given[key]}" for key, value in derived.items()
               if key in given and given[key] is not None and str(given[key]) != str(value)]
    if clashes:
        held = ", ".join(f"{key} = {value}" for key, value in derived.items())
        raise SettingsError(f"{path} holds {held}, but {', '.join(clashes)} was given.",
                            "Leave out the prompt and representation flags: an import keeps exactly what the file "
                            "holds.")


def _check_frozen(layout: Layout, ckpt: DasslCheckpoint, clip: LoadedClip, console: Console) -> list[str]:
    """The file's frozen CLIP copy must have our backbone's architecture (else the prompts were trained on another
    one: an error) and, when our backbone has weights, its values (else a warning)."""
    ours = clip.model.state_dict()
    absent, shapes, differ = [], [], []
    for key, value in ckpt.state_dict.items():
        name = layout.frozen_name(key)
        if name is None:
            continue
        reference = ours.get(name)
        if reference is None:
            absent.append(key)
        elif tuple(reference.shape) != tuple(value.shape):
            shapes.append(f"{key} is {tuple(value.shape)} where {clip.backbone} has {tuple(reference.shape)}")
        elif clip.weights_file is not None and _relative_difference(value, reference) > FROZEN_TOLERANCE:
            differ.append(key)
    if absent or shapes:
        what = shapes[:2] + ([f"{clip.backbone} has no {', '.join(absent[:2])}"] if absent else [])
        raise WeightsError(f"{ckpt.path} was trained on another backbone than {clip.backbone}: {'; '.join(what)}.",
                           "Pass the --backbone it was trained on (e.g. ViT-L-14-quickgelu or ViT-B-16-quickgelu).")
    if not differ:
        return []
    warning = (f"{len(differ)} frozen CLIP tensors saved in {ckpt.path} differ from {clip.backbone} "
               f"({clip.pretrained or 'random init'}), e.g. {', '.join(differ[:2])}: its prompts were probably "
               "trained on other weights; check --backbone and --pretrained.")
    _warn(console, warning)
    return [warning]


def _relative_difference(value: Tensor, reference: Tensor) -> float:
    reference = reference.detach().float().cpu()
    return float((value.float() - reference).norm() / reference.norm().clamp_min(1e-12))


def _embed_dim(backbone: str) -> int:
    cfg = open_clip.get_model_config(backbone)
    if not cfg or "embed_dim" not in cfg:
        raise WeightsError(f"Unknown teacher backbone {backbone!r} in the teacher's sidecar.")
    return int(cfg["embed_dim"])


def _target(out: str | Path | None, default_dir: Path) -> Path:
    if out is None:
        return default_dir / f"{CHECKPOINT_NAME}.safetensors"
    out = Path(out)
    return out / f"{CHECKPOINT_NAME}.safetensors" if out.is_dir() else checkpoint_paths(out)[0]


def _provenance(ckpt: DasslCheckpoint, layout: Layout, geometry: Geometry, warnings: list[str]) -> dict[str, Any]:
    return {"path": str(ckpt.path), "sha256": ckpt.sha256, "epoch": ckpt.epoch, "layout": layout.name,
            "geometry": geometry.describe(), "warnings": warnings}


def _result(
    written: Path, ckpt: DasslCheckpoint, layout: Layout, geometry: Geometry, model: Method, warnings: list[str],
    settings: Settings,
) -> ImportResult:
    learned = len(model.trainable_state())
    frozen = sum(layout.frozen_name(key) is not None for key in ckpt.state_dict)
    return ImportResult(written, ckpt.path, layout.name, ckpt.epoch, geometry, learned,
                        len(ckpt.state_dict) - len(layout.rules(geometry)), warnings, settings, frozen)


def _a(name: str) -> str:
    """The article for a family name as it is read out ("an MMRL", "a PromptSRC/IVLP")."""
    return f"an {name}" if name[:1] in "AEFHILMNORSX" else f"a {name}"


def _warn(console: Console, message: str) -> None:
    console.print(f"[bold yellow]Warning:[/] {escape(message)}")
