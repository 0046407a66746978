"""The official checkpoint layouts: which tensor of a PromptSRC / IVLP / PromptKD / MMRL checkpoint is which of ours.

This module is the one source of truth for the mapping (spec/promptkd-promptsrc.md §1, §3.1, §3.2, §7.1;
spec/mmrl.md §1.2–§1.5, §6.15). It is pure: state dicts in, state dicts out, errors that name the official keys.
Reading and writing the files is `interop.dassl`; building models and sidecars is `interop.convert`.

A `Layout` is one official model family:

* `stacks`: per-layer tensors per tower. IVLP prompts: layer 0 enters at the embedding level
  (`image_encoder.VPT`, `prompt_learner.ctx`), layer i >= 1 right before block i (`...resblocks.{i}.VPT_shallow`);
  ours are `<tower>.prompts.tokens.{i}` (`models.prompted.DeepPrompts`). MMRL's aligners: Linear i (weight and
  bias) feeds the i-th block from the start layer on, in both namings. Depth and length are read off the tensors.
* `fixed`: one-to-one tensors (PromptKD's projector; its 1×1 convs are our Linear layers, [out, in, 1, 1] ↔
  [out, in]; BatchNorm2d ↔ BatchNorm1d including running statistics and `num_batches_tracked`).
* `frozen`: prefixes of the frozen CLIP copy that Dassl saves with every model (GPA-perturbed for PromptSRC,
  spec §5.5) and where open_clip keeps the same tensor. Never imported; only compared with our backbone.
  `learned` marks the names under those prefixes that are learned all the same (`VPT`, MMRL's `proj_rep`).
* `dropped`: non-learned buffers the official loaders delete before loading (`token_prefix`/`token_suffix`,
  and PromptKD's `...2` copies; MMRL's `prompt_embeddings`): class-list dependent, recomputed from the class names.

Anything else in a checkpoint is an error that lists it: the official `strict=False` would silently ignore it
(or leave a prompt random, spec §5.7, §5.8). MMRL (`MMRL_TEACHER`) is the same table with a `space` rule: its
geometry (K, d_r, aligners per tower) sets `mmrl.*` instead of `prompts.*`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from sempt_cli.data.registry import DEMO_KEY, canonical_dataset_name, get_dataset_info
from sempt_cli.errors import SettingsError, WeightsError
from sempt_cli.settings import STANDARD_SHOTS

if TYPE_CHECKING:
    from sempt_cli.models.prompted import DeepPrompts

OFFICIAL_TEACHER_DEPTH = 9
"""PromptKD's `load_clip_to_cpu_teacher` builds every teacher with IVLP depth 9/9 and 4/4 tokens (spec §3.1)."""

DASSL_MODEL_NAME = "VLPromptLearner"
"""The name PromptSRC and PromptKD register their model under: the folder their checkpoints sit in."""

MMRL_MODEL_NAME = "MultiModalRepresentationLearner"
"""MMRL's `register_model` name since commit f6ad5e6 (before: `MultiModalPromptLearner`, spec §6.15)."""

Kind = Literal["teacher", "student"]


@dataclass(frozen=True)
class PromptStack:
    """One tower's per-layer tensors (IVLP prompts, MMRL aligners) in both namings."""

    tower: str  # "vision" | "text", the tower name in our settings (prompts.<tower>_depth)
    first: str  # official name of layer 0
    deep: str  # official name of layer i >= 1, with "{}" for i
    ours: str = ""  # our name of layer i, with "{}" for i (default: "<tower>.prompts.tokens.{}")
    parts: tuple[str, ...] = ("",)  # the tensors of one layer, appended to both names (a Linear: .weight, .bias)

    def official(self, layer: int) -> str:
        return self.first if layer == 0 else self.deep.format(layer)

    def our_name(self, layer: int) -> str:
        return (self.ours or f"{self.tower}.prompts.tokens.{{}}").format(layer)

    def depth_in(self, keys: Iterable[str], *, official: bool) -> int:
        """1 + the deepest layer present (0 if none): a gap then shows up as a missing key, by name."""
        parts = "(?:" + "|".join(re.escape(part) for part in self.parts) + ")$"
        if official:
            pattern = re.compile(re.escape(self.deep).replace(r"\{\}", r"(\d+)") + parts)
        else:
            pattern = re.compile(re.escape(self.our_name(0))[: -len("0")] + r"(\d+)" + parts)
        firsts = {self.first + part for part in self.parts} if official else set()
        layers = set()
        for key in keys:
            if key in firsts:
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

    def placed(self, blocks: Mapping[str, int], source: str) -> Geometry:
        """This geometry on a backbone with `blocks` transformer blocks per tower (prompts need nothing of it)."""
        return self


@dataclass(frozen=True)
class RepresentationGeometry(Geometry):
    """MMRL's shapes: `depths` = aligners per tower, `lengths` = K tokens, `widths` = each tower's width (the
    aligners' outputs), `rep_dim` = d_r (2048 for the official EuroSAT runs, 512 elsewhere).

    The block the first aligner feeds is not in the file: `placed` reads it off the backbone's depth, since the
    official `REP_LAYERS` (6..12 in every config, spec §1.2) and ours both run to the last block."""

    rep_dim: int = 0
    start_layer: int = 0  # 1-based block the tokens enter; 0 until `placed`

    def settings(self) -> dict[str, int]:
        """The `mmrl.*` settings that build a model with exactly these tensors."""
        out = {"mmrl.num_tokens": max(self.lengths.values(), default=0), "mmrl.rep_dim": self.rep_dim}
        return out | ({"mmrl.start_layer": self.start_layer} if self.start_layer else {})

    def describe(self) -> str:
        tokens = f"{max(self.lengths.values(), default=0)} representation tokens × d_r {self.rep_dim}"
        if not self.start_layer:
            return tokens + ", " + ", ".join(f"{d} {t} aligners" for t, d in self.depths.items())
        return tokens + " into " + ", ".join(f"{t} blocks {self.start_layer}..{self.start_layer + d - 1}"
                                             for t, d in self.depths.items())

    def placed(self, blocks: Mapping[str, int], source: str) -> RepresentationGeometry:
        """The start layer from the backbone's blocks: both towers must start at the same block (one REP_LAYERS)."""
        if not self.rep_dim or not all(self.depths.values()):
            raise WeightsError(f"{source} holds no MMRL representation space (representation_learner."
                               "compound_rep_tokens and its r2vproj/r2tproj aligners).")
        starts = {tower: blocks[tower] - depth + 1 for tower, depth in self.depths.items()}
        if len(set(starts.values())) != 1 or min(starts.values()) < 1:
            held = " and ".join(f"{d} {t} aligners" for t, d in self.depths.items())
            have = " and ".join(f"{blocks[t]} {t}" for t in self.depths)
            raise WeightsError(
                f"{source} holds {held}, which do not fit a backbone with {have} blocks: MMRL feeds both towers "
                "from one start layer to the last block.",
                "Pass the --backbone it was trained on (ViT-B-16-quickgelu for the official MMRL).",
            )
        return dataclasses.replace(self, start_layer=next(iter(starts.values())))


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
    learned: tuple[str, ...] = ("VPT",)  # substrings of learned names under a frozen prefix (never frozen)
    space: Rule | None = None  # MMRL: the representation tokens [K, d_r], whose shape is the geometry
    sections: tuple[str, ...] = ("prompts",)  # the settings sections the file's shapes decide
    hint: str = ("Pass the --backbone it was trained on (ViT-L-14-quickgelu for PromptKD teachers, "
                 "ViT-B-16-quickgelu for PromptSRC B/16 teachers and PromptKD students).")

    # ------------------------------------------------------------------ geometry and rules
    def geometry(self, keys_and_shapes: Mapping[str, Tensor], *, official: bool = True) -> Geometry:
        """Depths and lengths from a state dict (official names, or ours with `official=False`)."""
        depths, shapes = {}, {}
        for stack in self.stacks:
            depths[stack.tower] = stack.depth_in(keys_and_shapes, official=official)
            names = [(stack.official(i) if official else stack.our_name(i)) + stack.parts[0]
                     for i in range(depths[stack.tower])]
            present = [keys_and_shapes[n] for n in names if n in keys_and_shapes and keys_and_shapes[n].dim() == 2]
            shapes[stack.tower] = (int(present[0].shape[0]), int(present[0].shape[1])) if present else (0, 0)
        if self.space is None:  # prompts [length, width]
            return Geometry(depths, {t: s[0] for t, s in shapes.items()}, {t: s[1] for t, s in shapes.items()})
        # MMRL: an aligner's weight is [tower width, d_r]; the tokens [K, d_r] give K and d_r
        tokens = keys_and_shapes.get(self.space.official if official else self.space.ours)
        num_tokens, rep_dim = tuple(tokens.shape) if tokens is not None and tokens.dim() == 2 else (0, 0)
        return RepresentationGeometry(depths, dict.fromkeys(depths, int(num_tokens)),
                                      {t: s[0] for t, s in shapes.items()}, rep_dim=int(rep_dim))

    def rules(self, geometry: Geometry) -> list[Rule]:
        """Every tensor a checkpoint of this geometry holds, in both namings."""
        rules = [Rule(stack.our_name(layer) + part, stack.official(layer) + part)
                 for stack in self.stacks for layer in range(geometry.depths[stack.tower]) for part in stack.parts]
        return rules + ([self.space] if self.space is not None else []) + list(self.fixed)

    def frozen_name(self, official: str) -> str | None:
        """Where open_clip keeps an official frozen tensor, or None if `official` is not one."""
        if any(marker in official for marker in self.learned):  # prompts, projectors, MMRL's space: never frozen
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
                f"It does not look like a {self.name} checkpoint; MaPLe, MMRL++ and other methods' files are "
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
            raise WeightsError(f"{source} does not fit the model built for it: {'; '.join(parts)}.", self.hint)
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
                "Only plain PromptSRC/IVLP and MMRL teachers and PromptKD students (without SemPT) can be "
                "exported.",
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
            for part in stack.parts:
                match = re.fullmatch(re.escape(stack.our_name(0))[: -len("0")] + r"(\d+)" + re.escape(part), ours)
                if match:
                    return stack.official(int(match.group(1))) + part
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


def _aligners(tower: str, official: str) -> PromptStack:
    """One tower's MMRL aligners: Linear i (weight [width, d_r], bias) feeds the i-th block from the start layer."""
    deep = f"representation_learner.compound_rep_tokens_{official}.{{}}"
    return PromptStack(tower, deep.format(0), deep, f"space.{tower}.{{}}", parts=(".weight", ".bias"))


MMRL_TEACHER = Layout(
    name="MMRL",
    kind="teacher",
    methods=("mmrl",),
    stacks=(_aligners("vision", "r2vproj"), _aligners("text", "r2tproj")),
    marker="representation_learner.",
    space=Rule("space.tokens", "representation_learner.compound_rep_tokens"),
    fixed=(Rule("proj_rep", "image_encoder.proj_rep"),),
    frozen=(("image_encoder.", "visual."), ("text_encoder.", "")),  # no logit_scale: CustomCLIP keeps no CLIP
    dropped=("prompt_embeddings",),
    learned=("representation_learner.", "image_encoder.proj_rep"),  # the official `names_to_update`
    sections=("mmrl",),
    hint="Pass the --backbone it was trained on (ViT-B-16-quickgelu for the official MMRL).",
)
"""MMRL's `CustomCLIP` (trainers/mmrl.py, spec §1.2–§1.5): `representation_learner.compound_rep_tokens` [K, d_r],
`representation_learner.compound_rep_tokens_r2vproj.{i}` / `..._r2tproj.{i}` (`nn.Linear(d_r, width)` for
`REP_LAYERS[i]`, i.e. ours `space.<tower>.{i}`), `image_encoder.proj_rep` [768, 512] (clip/model_mmrl.py), the
whole frozen CLIP, and the `prompt_embeddings` buffer [C, 77, 512] that `MMRL.load_model` deletes."""

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (PROMPTSRC_TEACHER, PROMPTKD_STUDENT, MMRL_TEACHER)}


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
                   "crossdataset": "cross-dataset", "xd": "cross-dataset", "crossdomain": "cross-domain",
                   "vitb16crossdatasets": "cross-dataset", "vitb16fewshot": "few-shot"}
"""Folder names of the official output layouts (`output/base2new/train_base/<dataset>/...`) and their setting.
MMRL's cross-dataset runs sit under `output/base2new/...`: their config folder (`vit_b16_cross_datasets`), deeper
in the path and so read first, says what they are."""

MMRL_CONFIGS = {"base2novel": "vit_b16", "few-shot": "vit_b16_few_shot", "cross-dataset": "vit_b16_cross_datasets"}
"""The MMRL config (`configs/trainers/MMRL/<cfg>.yaml`) per setting; ImageNet uses `vit_b16_imagenet` in B2N and FS."""

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


def run_from_path(path: str | Path) -> dict[str, int]:
    """`data.shots` and `data.seed` read off the official output folders (`shots_4/.../seed2`, `seed_1`), where
    they say; the few-shot curves and `sempt eval` records are keyed by them."""
    found: dict[str, int] = {}
    for part in list(Path(path).parts[:-1])[::-1][:_SEARCH_DEPTH]:
        if (match := re.fullmatch(r"shots_(\d+)", part)) and int(match.group(1)) in (0, *STANDARD_SHOTS):
            found.setdefault("data.shots", int(match.group(1)))
        elif match := re.fullmatch(r"seed_?(\d+)", part):
            found.setdefault("data.seed", int(match.group(1)))
    return found


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


def mmrl_folder(dataset: str, setting: str, shots: int, seed: int, epochs: int) -> Path:
    """Where MMRL's scripts write (and `--model-dir` reads) a model, relative to its repository root (spec §5):
    `load_model(<dir>)` takes `<dir>/MultiModalRepresentationLearner/model-best.pth*`, else a `model.pth*`."""
    if setting in ("cross-dataset", "cross-domain"):  # trained on ImageNet, in a folder named base2new all the same
        cfg = MMRL_CONFIGS["cross-dataset"]
    else:
        cfg = "vit_b16_imagenet" if dataset == "imagenet" else MMRL_CONFIGS.get(setting, MMRL_CONFIGS["base2novel"])
    task = Path("few_shot") if setting == "few-shot" else Path("base2new") / "train_base"
    return Path("output") / task / dataset / f"shots_{shots}" / "MMRL" / cfg / f"seed{seed}" / MMRL_MODEL_NAME / \
        f"model.pth.tar-{epochs}"


def _some(keys: list[str], shown: int = 6) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def official_prompt_keys(vision_depth: int, text_depth: int) -> dict[str, str]:
    """Where the official PromptSRC / PromptKD code stores each of our prompt tensors (spec §3.1, §7.1).

    Keys are `vision.<i>` / `text.<i>` (layer i of that tower's `DeepPrompts`), values the official names.
    """
    return prompt_keys(vision_depth, text_depth)


def _deep_prompts(tower: nn.Module | None, name: str) -> DeepPrompts | None:
    """The IVLP prompts of a prompted tower (None for no tower): what official prompts are copied into."""
    from sempt_cli.models.prompted import DeepPrompts  # open_clip loads only when prompts are imported

    if tower is None:
        return None
    prompts = getattr(tower, "prompts", None)
    if not isinstance(prompts, DeepPrompts):
        raise WeightsError(f"The {name} tower has no IVLP deep prompts to import official prompts into.")
    return prompts


def import_official_prompts(
    state: Mapping[str, Tensor],
    *,
    vision: nn.Module | None = None,
    text: nn.Module | None = None,
    source: str = "the official checkpoint",
) -> list[str]:
    """Copy IVLP prompts from an official PromptSRC/PromptKD state dict into prompted towers.

    Missing or mis-shaped prompts are an error: the official loader's strict=False would leave them random
    (spec §5.7). Only the prompts are read; the checkpoint's (GPA-perturbed) backbone copy is not.
    """
    towers = {"vision": _deep_prompts(vision, "vision"), "text": _deep_prompts(text, "text")}
    depths = {name: len(prompts.tokens) if prompts is not None else 0 for name, prompts in towers.items()}
    mapping = official_prompt_keys(depths["vision"], depths["text"])
    missing = [official for official in mapping.values() if official not in state]
    if missing:
        raise WeightsError(
            f"{source} lacks prompts this model needs: {_some(missing)}.",
            "Was it trained with a smaller prompt depth? Set the depth it was trained with.",
        )
    used = []
    with torch.no_grad():
        for ours, official in mapping.items():
            tower_name, layer = ours.split(".")
            prompts = towers[tower_name]
            assert prompts is not None  # official_prompt_keys maps only the towers given (depth > 0)
            target = prompts.tokens[int(layer)]
            value = state[official]
            if tuple(value.shape) != tuple(target.shape):
                raise WeightsError(
                    f"{source}: {official} is {tuple(value.shape)} but the model expects {tuple(target.shape)}."
                )
            target.copy_(value.to(target))
            used.append(official)
    return used
