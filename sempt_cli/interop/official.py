"""The official checkpoint layouts: which tensor of a PromptSRC / IVLP / PromptKD checkpoint is which of ours.

This module is the one source of truth for the mapping (spec/promptkd-promptsrc.md §1, §3.1, §3.2, §7.1). It is
pure: state dicts in, state dicts out, errors that name the official keys. Reading and writing the files is
`interop.dassl`; building models and sidecars is `interop.convert`.

A `Layout` is one official model family:

* `stacks`: IVLP prompts per tower. Layer 0 enters at the embedding level (`image_encoder.VPT`,
  `prompt_learner.ctx`), layer i >= 1 right before block i (`...resblocks.{i}.VPT_shallow`); ours are
  `<tower>.prompts.tokens.{i}` (`models.prompted.DeepPrompts`). Depth and length are read off the tensors.
* `fixed`: one-to-one tensors (PromptKD's projector; its 1×1 convs are our Linear layers, [out, in, 1, 1] ↔
  [out, in]; BatchNorm2d ↔ BatchNorm1d including running statistics and `num_batches_tracked`).
* `frozen`: prefixes of the frozen CLIP copy that Dassl saves with every model (GPA-perturbed for PromptSRC,
  spec §5.5) and where open_clip keeps the same tensor. Never imported; only compared with our backbone.
* `dropped`: non-learned buffers the official loaders delete before loading (`token_prefix`/`token_suffix`,
  and PromptKD's `...2` copies): class-list dependent, recomputed from the class names.

Anything else in a checkpoint is an error that lists it: the official `strict=False` would silently ignore it
(or leave a prompt random, spec §5.7, §5.8). MMRL will be one more `Layout` here once `methods/mmrl.py` exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import Tensor

from sempt_cli.data.registry import DEMO_KEY, canonical_dataset_name, get_dataset_info
from sempt_cli.errors import SettingsError, WeightsError

OFFICIAL_TEACHER_DEPTH = 9
"""PromptKD's `load_clip_to_cpu_teacher` builds every teacher with IVLP depth 9/9 and 4/4 tokens (spec §3.1)."""

DASSL_MODEL_NAME = "VLPromptLearner"
"""The name PromptSRC and PromptKD register their model under: the folder their checkpoints sit in."""

Kind = Literal["teacher", "student"]


@dataclass(frozen=True)
class PromptStack:
    """One tower's IVLP prompts in both namings."""

    tower: str  # "vision" | "text", the tower name in our settings (prompts.<tower>_depth)
    first: str  # official name of layer 0
    deep: str  # official name of layer i >= 1, with "{}" for i
    ours: str = ""  # our name of layer i, with "{}" for i (default: "<tower>.prompts.tokens.{}")

    def official(self, layer: int) -> str:
        return self.first if layer == 0 else self.deep.format(layer)

    def our_name(self, layer: int) -> str:
        return (self.ours or f"{self.tower}.prompts.tokens.{{}}").format(layer)

    def depth_in(self, keys: Iterable[str], *, official: bool) -> int:
        """1 + the deepest layer present (0 if none): a gap then shows up as a missing key, by name."""
        if official:
            pattern = re.compile(re.escape(self.deep).replace(r"\{\}", r"(\d+)") + "$")
        else:
            pattern = re.compile(re.escape(self.our_name(0))[: -len("0")] + r"(\d+)$")
        layers = set()
        for key in keys:
            if official and key == self.first:
                layers.add(0)
            elif match := pattern.match(key):
                layers.add(int(match.group(1)))
        return max(layers) + 1 if layers else 0


@dataclass(frozen=True)
class Rule:
    """One official tensor and ours; `conv1x1` marks an official 1×1 Conv2d weight that is our Linear weight."""

    ours: str
    official: str
    conv1x1: bool = False

    def to_official(self, value: Tensor) -> Tensor:
        return value[:, :, None, None] if self.conv1x1 else value

    def to_ours(self, value: Tensor) -> Tensor:
        return value[:, :, 0, 0] if self.conv1x1 else value

    def official_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        return (*ours, 1, 1) if self.conv1x1 else tuple(ours)


@dataclass(frozen=True)
class Geometry:
    """Prompt depth and length per tower, as a checkpoint holds them (depth 0: that tower has no prompts)."""

    depths: dict[str, int]
    lengths: dict[str, int]
    widths: dict[str, int]  # token width per tower (the prompts' second dimension), 0 without prompts

    def settings(self) -> dict[str, int]:
        """The `prompts.*` settings that build a model with exactly these prompts."""
        out = {}
        for tower, depth in self.depths.items():
            out[f"prompts.{tower}_depth"] = depth
            if depth:
                out[f"prompts.{tower}_length"] = self.lengths[tower]
        return out

    def describe(self) -> str:
        return ", ".join(f"{t} depth {d}" + (f" × {self.lengths[t]} tokens" if d else "")
                         for t, d in self.depths.items())


@dataclass(frozen=True)
class Layout:
    """One official model family's checkpoint layout; see the module docstring."""

    name: str
    kind: Kind
    methods: tuple[str, ...]  # our methods whose learned state this layout holds
    stacks: tuple[PromptStack, ...]
    marker: str  # a key prefix only this family's checkpoints have (tells teacher and student files apart)
    fixed: tuple[Rule, ...] = ()
    frozen: tuple[tuple[str, str], ...] = ()  # (official prefix, open_clip prefix)
    dropped: tuple[str, ...] = ()

    # ------------------------------------------------------------------ geometry and rules
    def geometry(self, keys_and_shapes: Mapping[str, Tensor], *, official: bool = True) -> Geometry:
        """Depths and lengths from a state dict (official names, or ours with `official=False`)."""
        depths, lengths, widths = {}, {}, {}
        for stack in self.stacks:
            depths[stack.tower] = stack.depth_in(keys_and_shapes, official=official)
            names = [stack.official(i) if official else stack.our_name(i) for i in range(depths[stack.tower])]
            present = [keys_and_shapes[n] for n in names if n in keys_and_shapes and keys_and_shapes[n].dim() == 2]
            lengths[stack.tower] = int(present[0].shape[0]) if present else 0
            widths[stack.tower] = int(present[0].shape[1]) if present else 0
        return Geometry(depths, lengths, widths)

    def rules(self, geometry: Geometry) -> list[Rule]:
        """Every tensor a checkpoint of this geometry holds, in both namings."""
        rules = [Rule(stack.our_name(layer), stack.official(layer))
                 for stack in self.stacks for layer in range(geometry.depths[stack.tower])]
        return rules + list(self.fixed)

    def frozen_name(self, official: str) -> str | None:
        """Where open_clip keeps an official frozen tensor, or None if `official` is not one."""
        if "VPT" in official:  # every prompt and projector tensor of these families says VPT: never frozen
            return None
        for prefix, ours in self.frozen:
            if official == prefix or (prefix.endswith(".") and official.startswith(prefix)):
                return ours + official[len(prefix):] if prefix.endswith(".") else ours
        return None

    # ------------------------------------------------------------------ conversions
    def to_ours(
        self,
        state: Mapping[str, Tensor],
        expected: Mapping[str, Tensor],
        *,
        source: str,
    ) -> dict[str, Tensor]:
        """Our learned state from an official state dict, checked against `expected` (a model's learned state).

        Every learned official tensor must map, every expected one be present with the right shape; the frozen
        backbone copy and the dropped buffers are left out. Errors list the official names."""
        geometry = self.geometry(state)
        rules = self.rules(geometry)
        mapped = {rule.official for rule in rules}
        unmapped = sorted(k for k in state if k not in mapped and k not in self.dropped and self.frozen_name(k) is None)
        if unmapped:
            raise WeightsError(
                f"{source} has tensors sempt does not know where to put: {_some(unmapped)}.",
                f"It does not look like a {self.name} checkpoint; MMRL, MaPLe and other methods' files are "
                "not supported.",
            )
        by_ours = {rule.ours: rule for rule in rules}
        missing = sorted({rule.official for rule in rules if rule.official not in state}
                         | {self._official_guess(k) for k in expected if k not in by_ours})
        if missing:
            raise WeightsError(
                f"{source} lacks tensors this model needs: {_some(missing)}.",
                "A prompt set is missing in the middle of a tower, or the file holds another method's model.",
            )
        unexpected = sorted(rule.official for rule in rules if rule.ours not in expected)
        wrong = [f"{rule.official} is {tuple(state[rule.official].shape)} but the model expects "
                 f"{rule.official_shape(tuple(expected[rule.ours].shape))}"
                 for rule in rules if rule.ours in expected
                 and tuple(state[rule.official].shape) != rule.official_shape(tuple(expected[rule.ours].shape))]
        if unexpected or wrong:
            parts = ([f"no place for {_some(unexpected)}"] if unexpected else []) + wrong[:3]
            raise WeightsError(
                f"{source} does not fit the model built for it: {'; '.join(parts)}.",
                "Pass the --backbone it was trained on (ViT-L-14-quickgelu for PromptKD teachers, "
                "ViT-B-16-quickgelu for PromptSRC B/16 teachers and PromptKD students).",
            )
        return {rule.ours: rule.to_ours(state[rule.official]) for rule in rules}

    def to_official(self, tensors: Mapping[str, Tensor], *, source: str) -> dict[str, Tensor]:
        """The official state dict holding our learned `tensors` (learned tensors only: the official loaders
        load with strict=False, so the frozen CLIP comes from their own copy)."""
        rules = self.rules(self.geometry(tensors, official=False))
        by_ours = {rule.ours: rule for rule in rules}
        unmapped = sorted(k for k in tensors if k not in by_ours)
        if unmapped:
            raise WeightsError(
                f"{source} has learned tensors the official {self.name} layout has no place for: "
                f"{_some(unmapped)}.",
                "Only plain PromptSRC/IVLP teachers and PromptKD students (without SemPT) can be exported.",
            )
        missing = sorted(rule.ours for rule in rules if rule.ours not in tensors)
        if missing:
            raise WeightsError(f"{source} lacks learned tensors of its own layout: {_some(missing)}.")
        return {rule.official: rule.to_official(tensors[rule.ours]) for rule in rules}

    def official_names(self, geometry: Geometry) -> dict[str, str]:
        """Our name -> official name for a checkpoint of `geometry`."""
        return {rule.ours: rule.official for rule in self.rules(geometry)}

    def _official_guess(self, ours: str) -> str:
        """The official name of one of our tensors, for error messages about a depth the file does not reach."""
        for stack in self.stacks:
            match = re.fullmatch(re.escape(stack.our_name(0))[: -len("0")] + r"(\d+)", ours)
            if match:
                return stack.official(int(match.group(1)))
        return ours


def _conv(ours: str, official: str) -> tuple[Rule, Rule]:
    return Rule(f"{ours}.weight", f"{official}.weight", conv1x1=True), Rule(f"{ours}.bias", f"{official}.bias")


def _batchnorm(ours: str, official: str) -> tuple[Rule, ...]:
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return tuple(Rule(f"{ours}.{n}", f"{official}.{n}") for n in names)


VISION = PromptStack("vision", "image_encoder.VPT", "image_encoder.transformer.resblocks.{}.VPT_shallow")
TEXT = PromptStack("text", "prompt_learner.ctx", "text_encoder.transformer.resblocks.{}.VPT_shallow")

PROMPTSRC_TEACHER = Layout(
    name="PromptSRC/IVLP",
    kind="teacher",
    methods=("promptsrc", "ivlp"),
    stacks=(VISION, TEXT),
    marker="prompt_learner.ctx",
    frozen=(
        ("image_encoder.", "visual."),
        ("prompt_learner.ZS_image_encoder.", "visual."),  # PromptSRC's prompt-free copy of the image tower
        ("text_encoder.", ""),  # transformer.*, positional_embedding, ln_final.*, text_projection
        ("logit_scale", "logit_scale"),
    ),
    dropped=("prompt_learner.token_prefix", "prompt_learner.token_suffix",
             "prompt_learner.token_prefix2", "prompt_learner.token_suffix2"),
)
"""PromptSRC and IVLP teachers (`CustomCLIP` of trainers/promptsrc.py and independentVL.py), which is also what
PromptKD loads as its teacher (`CustomCLIP_teacher`)."""

PROMPTKD_STUDENT = Layout(
    name="PromptKD student",
    kind="student",
    methods=("promptkd",),
    stacks=(VISION,),
    marker="VPT_image_trans.",
    fixed=(*_conv("projector.fc1", "VPT_image_trans.conv1.0"), *_batchnorm("projector.bn", "VPT_image_trans.conv1.1"),
           *_conv("projector.fc2", "VPT_image_trans.conv1.3")),
    frozen=(("image_encoder.", "visual."), ("logit_scale", "logit_scale")),
)
"""PromptKD's student `CustomCLIP`: ViT-B/16 visual prompts + `Feature_Trans_Module_two_layer` (Conv 1×1 → BN →
ReLU → Conv 1×1, spec §3.2)."""

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (PROMPTSRC_TEACHER, PROMPTKD_STUDENT)}


def layout_for(kind: str, method: str) -> Layout:
    """The official layout one of our checkpoints (sidecar `kind`, `method`) is written in."""
    for layout in LAYOUTS.values():
        if layout.kind == kind and method in layout.methods:
            return layout
    known = ", ".join(f"{m} {layout.kind}s" for layout in LAYOUTS.values() for m in layout.methods)
    raise WeightsError(f"There is no official checkpoint layout for {method} {kind}s; there is one for {known}.")


def detect_layout(state: Mapping[str, Tensor]) -> Layout | None:
    """Which official family a state dict is from (by its marker keys), if any."""
    for layout in LAYOUTS.values():
        if any(key == layout.marker or (layout.marker.endswith(".") and key.startswith(layout.marker))
               for key in state):
            return layout
    return None


def prompt_keys(vision_depth: int, text_depth: int) -> dict[str, str]:
    """`vision.<i>` / `text.<i>` (layer i of a tower's `DeepPrompts`) -> official name, for the teacher layout."""
    depths = {"vision": vision_depth, "text": text_depth}
    return {f"{stack.tower}.{layer}": stack.official(layer)
            for stack in PROMPTSRC_TEACHER.stacks for layer in range(depths[stack.tower])}


def shallow_teacher_warning(geometry: Geometry, source: str) -> str | None:
    """The spec §5.7 trap, said out loud: PromptKD builds its teacher 9 deep and loads with strict=False, so a
    shallower checkpoint (e.g. a depth-3 cross-dataset PromptSRC) leaves the deeper prompts random there."""
    shallow = {t: d for t, d in geometry.depths.items() if 0 < d < OFFICIAL_TEACHER_DEPTH}
    if not shallow:
        return None
    held = " and ".join(f"{t} prompts {d} deep" for t, d in shallow.items())
    random = ", ".join(f"{t} blocks {d}..{OFFICIAL_TEACHER_DEPTH - 1}" for t, d in shallow.items())
    return (
        f"{source} holds {held}, but the official PromptKD code builds its teacher {OFFICIAL_TEACHER_DEPTH} deep and, "
        f"loading with strict=False, keeps random prompts where the file has none ({random}): students it distilled "
        f"from this file learned from a partly random teacher. sempt imports the depth the file holds "
        f"({geometry.describe()}) and keeps no random prompt."
    )


# ---------------------------------------------------------------------------------------------------- datasets

OFFICIAL_FOLDERS: dict[str, tuple[str, str | None]] = {
    "standfordcars": ("stanford_cars", None),  # teacher_model/README.md's spelling (spec §3.1)
    "imagenetxd": ("imagenet", "cross-dataset"),  # teacher_model/ImageNet-xd/VLPromptLearner_large/model.pth.tar-20
}
"""Folder spellings of the published layouts that the dataset registry does not know, with the setting they imply."""

SETTING_FOLDERS = {"base2new": "base2novel", "base2novel": "base2novel", "fewshot": "few-shot",
                   "crossdataset": "cross-dataset", "xd": "cross-dataset", "crossdomain": "cross-domain"}
"""Folder names of the official output layouts (`output/base2new/train_base/<dataset>/...`) and their setting."""

_SEARCH_DEPTH = 8  # output/base2new/train_base/<dataset>/shots_16/<trainer>/<cfg>/seed1/VLPromptLearner/<file>


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def dataset_from_path(path: str | Path) -> tuple[str | None, str | None]:
    """(dataset key, setting) read off the official folder layout of `path`, each None when it does not say.

    `teacher_model/<DATASET.NAME>/VLPromptLearner/model-best.pth.tar` (incl. the README's "StandfordCars" and
    "ImageNet-xd") and `output/<setting>/.../<dataset>/...` are recognised; the demo world never is."""
    dataset, setting = None, None
    for part in list(Path(path).parts[:-1])[::-1][:_SEARCH_DEPTH]:
        key = _normalise(part)
        if dataset is None:
            if key in OFFICIAL_FOLDERS:
                dataset, implied = OFFICIAL_FOLDERS[key]
                setting = setting or implied
            else:
                found = canonical_dataset_name(part)
                dataset = found if found != DEMO_KEY else None
        if setting is None and key in SETTING_FOLDERS:
            setting = SETTING_FOLDERS[key]
    return dataset, setting


def official_folder(dataset: str, setting: str, kind: Kind, epochs: int) -> Path:
    """Where the official code looks for a model (relative to its repository root), so an export drops in."""
    if kind == "student":
        return Path(DASSL_MODEL_NAME) / "model-best.pth.tar"
    if dataset == "imagenet" and setting == "cross-dataset":
        return Path("teacher_model") / "ImageNet-xd" / f"{DASSL_MODEL_NAME}_large" / f"model.pth.tar-{epochs}"
    try:
        name = get_dataset_info(dataset).dassl_name
    except KeyError:
        raise SettingsError(f"Unknown dataset {dataset!r} in the checkpoint's sidecar.") from None
    return Path("teacher_model") / name / DASSL_MODEL_NAME / "model-best.pth.tar"


def _some(keys: list[str], shown: int = 6) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
