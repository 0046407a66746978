"""SemPT's inputs for a dataset: which attribute file, its T_atr as an `AttributeBank`, and the seen classes.

* **Attribute file.** `sempt.attributes` when given (training dataset only), else
  `<paths.attributes_dir>/<dataset>.json`. The demo world needs no file in the working directory: its
  ground-truth file is derived into the cache when none is found. Datasets of the ImageNet family (-V2,
  -Sketch, -A, -R) use ImageNet's file, row by row through their ImageNet-1k labels.
* **Seen classes** are the classes a labelled training saw, never a flag: for a distilled student the teacher's
  (`seen_classnames` in its checkpoint), for a supervised baseline (MMRL, DPT, ...) its own training classes
  (`SemptSource`). They count as seen only on the training dataset or a dataset that shares its label space
  (the ImageNet family, cross-domain: ImageNet-V2/-Sketch/-A/-R); on any other dataset (cross-dataset
  targets) every class is unseen and uses T_enh, even when a name happens to coincide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from sempt_cli.data import DEMO_KEY
from sempt_cli.data.registry import canonical_dataset_name, imagenet_rows, label_space
from sempt_cli.errors import SemptError
from sempt_cli.io import sha256_file
from sempt_cli.knowledge import demo_attribute_file, write_attribute_file
from sempt_cli.methods.sempt import AttributeBank, SemPT
from sempt_cli.models.checkpoint import load_learned
from sempt_cli.models.factory import LoadedClip
from sempt_cli.pipeline.attributes import AttributeEmbeddings, embed_attributes, embed_attributes_frozen
from sempt_cli.protocol import Method
from sempt_cli.settings import Settings

VARIANT = "w/ SemPT"
"""The sidecar `variant` of a SemPT model; tables title it '<method> w/ SemPT', as the papers do."""
INFERENCE_TITLES = {"hybrid": "T_lbl seen, T_enh unseen", "label": "T_lbl for all", "enhanced": "T_enh for all",
                    "calibrated": "T_lbl seen, calibrated T_enh unseen"}
"""`sempt.inference` as SemPT's Table 4a names its rows (`calibrated` is ours, not the paper's)."""


def attribute_file(dataset: str, settings: Settings, *, explicit: bool = True) -> Path:
    """The attribute file SemPT reads for `dataset` (see the module docstring); `explicit` lets
    `sempt.attributes` answer (it names the training dataset's file, not a transfer target's)."""
    if explicit and settings.sempt.attributes is not None:
        if not settings.sempt.attributes.is_file():
            raise SemptError(f"The attribute file {settings.sempt.attributes} does not exist.",
                             "Check --attributes, or generate one with `sempt gen-attributes`.")
        return settings.sempt.attributes
    key = canonical_dataset_name(dataset) or dataset
    candidate = settings.paths.attributes_dir / f"{key}.json"
    if candidate.is_file():
        return candidate
    if key == DEMO_KEY:
        return _demo_attribute_file(settings)
    if label_space(key) != key:
        return attribute_file(label_space(key), settings, explicit=False)
    raise SemptError(
        f"SemPT needs attribute descriptions for {key}, and {candidate} does not exist.",
        f"Generate it with `sempt gen-attributes --dataset {key}` (or pass --attributes-dir / --no-sempt).",
    )


def _demo_attribute_file(settings: Settings) -> Path:
    """The demo world's ground-truth file (`gen-attributes --strategy ground-truth`), derived once into the cache."""
    path = settings.paths.cache_dir / "attributes" / f"{DEMO_KEY}-s{settings.sempt.num_descriptions}.json"
    if not path.is_file():
        write_attribute_file(demo_attribute_file(settings.sempt.num_descriptions), path)
    return path


def attribute_bank(
    source: SemptSource, dataset: str, classnames: Sequence[str], path: Path, console: Console | None = None,
) -> AttributeBank:
    """T_atr of `classnames` (all classes of `dataset`, label order) from the file at `path`, encoded by the
    source's text encoder (cached)."""
    described = source.describe(path, console)
    key = canonical_dataset_name(dataset) or dataset
    if described.classnames == list(classnames):
        return AttributeBank(list(classnames), described.vectors)
    rows = imagenet_rows(key)
    if rows is not None and len(described.classnames) == len(imagenet_rows(label_space(key)) or ()):
        return AttributeBank(list(classnames), described.vectors[rows])
    raise SemptError(f"The attribute file {path} describes {len(described.classnames)} classes that are not "
                     f"{key}'s {len(classnames)} classes.",
                     f"Generate one with `sempt gen-attributes --dataset {key}`.")


def seen_classes(seen_dataset: str, seen_classnames: Sequence[str], dataset: str) -> list[str]:
    """The classes labelled training saw (on `seen_dataset`) if `dataset` shares that label space, else none."""
    return list(seen_classnames) if label_space(dataset) == label_space(seen_dataset) else []


@dataclass(frozen=True)
class SemptInputs:
    """What a SemPT model was built from, as recorded in its sidecar."""

    attributes_file: str | None
    attributes_sha256: str | None
    seen_dataset: str
    seen_classnames: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"attributes_file": self.attributes_file, "attributes_sha256": self.attributes_sha256,
                "seen_dataset": self.seen_dataset, "seen_classnames": self.seen_classnames}


@dataclass(frozen=True)
class SemptSource:
    """Where SemPT's knowledge of a model comes from: the classes its labelled training saw (on which dataset),
    and the text encoder that turns an attribute file into T_atr.

    * distillation (`from_teacher`): the teacher's seen classes and text encoder (`sempt.attr_encoder`);
    * supervised baselines (`frozen_backbone`): the model's own training classes, and the frozen text tower of
      its own backbone (spec/mmrl.md §7 option (a): constant during training, so encoded once and cached; a
      prompted encoder would change every step)."""

    seen_dataset: str
    seen_classnames: list[str]
    describe: Callable[[Path, Console | None], AttributeEmbeddings]

    @classmethod
    def from_teacher(cls, teacher_checkpoint: Path, settings: Settings) -> SemptSource:
        teacher = load_learned(teacher_checkpoint).record
        if teacher.kind != "teacher":
            raise SemptError(f"{teacher_checkpoint} is a {teacher.kind}, not a teacher checkpoint.")
        return cls(teacher.dataset, teacher.seen_classnames,
                   lambda path, console: embed_attributes(teacher_checkpoint, path, settings, console=console))

    @classmethod
    def frozen_backbone(cls, clip: LoadedClip, dataset: str, seen_classnames: Sequence[str],
                        settings: Settings) -> SemptSource:
        return cls(dataset, list(seen_classnames),
                   lambda path, console: embed_attributes_frozen(clip, path, settings, console=console))

    def seen_in(self, dataset: str) -> list[str]:
        """The seen classes if `dataset` shares the seen dataset's label space, else none (`seen_classes`)."""
        return seen_classes(self.seen_dataset, self.seen_classnames, dataset)


def apply_sempt(
    method: Method, source: SemptSource, dataset: str, classnames: Sequence[str], settings: Settings, *,
    training: bool, file_for: Callable[[str], Path] | None = None, console: Console | None = None,
) -> tuple[SemPT, SemptInputs]:
    """Wrap `method` with SemPT for `dataset` (`settings`: the model's own, with today's paths). Descriptions
    are loaded only if some class needs T_enh (training always does; hybrid evaluation only for unseen
    classes), from `file_for(dataset)` or else `attribute_file`."""
    seen = source.seen_in(dataset)
    dim = method.class_embedding_dim()
    needs_descriptions = (training or settings.sempt.inference not in ("hybrid", "calibrated")
                          or not set(classnames) <= set(seen))
    locate = file_for or (lambda name: attribute_file(name, settings, explicit=training))
    path = locate(dataset) if needs_descriptions else None
    bank = None if path is None else attribute_bank(source, dataset, classnames, path, console)
    inputs = SemptInputs(None if path is None else str(path), None if path is None else sha256_file(path),
                         source.seen_dataset, seen)
    return SemPT(method, settings.sempt, bank, seen, dim=dim), inputs
