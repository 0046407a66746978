"""Official checkpoint layouts as data: which tensor of an official model's state dict is which of ours.

A method whose official code saves Dassl checkpoints declares its `Layout` in its own file
(`Method.official_layout`); `sempt interop` reads and writes any declared layout (`interop.official`,
`interop.convert`). This module is pure: state dicts in, state dicts out, errors that name the official keys.

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
* `folder`: where the official scripts write (and read) such a model, so an export drops in.

Anything else in a checkpoint is an error that lists it: the official `strict=False` would silently ignore it
(or leave a prompt random, spec §5.7, §5.8). MMRL is the same table with a `space` rule: its geometry (K, d_r,
aligners per tower) sets `mmrl.*` instead of `prompts.*`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import Tensor

from sempt_cli.errors import WeightsError

Kind = Literal["teacher", "student"]


@dataclass(frozen=True)
class ExportPlace:
    """What decides where the official code keeps a run's model: its dataset, setting, kind, shots, seed and the
    epoch the file is named after."""

    dataset: str
    setting: str
    kind: Kind
    shots: int
    seed: int
    epoch: int


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
class TensorRule:
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
    folder: Callable[[ExportPlace], Path]
    """Where the official code reads a model of this family from, relative to its repository root: an export
    drops in there."""
    fixed: tuple[TensorRule, ...] = ()
    frozen: tuple[tuple[str, str], ...] = ()  # (official prefix, open_clip prefix)
    dropped: tuple[str, ...] = ()
    learned: tuple[str, ...] = ("VPT",)  # substrings of learned names under a frozen prefix (never frozen)
    space: TensorRule | None = None  # MMRL: the representation tokens [K, d_r], whose shape is the geometry
    sections: tuple[str, ...] = ("prompts",)  # the settings sections the file's shapes decide
    hint: str = "Pass the --backbone it was trained on."

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

    def rules(self, geometry: Geometry) -> list[TensorRule]:
        """Every tensor a checkpoint of this geometry holds, in both namings."""
        rules = [TensorRule(stack.our_name(layer) + part, stack.official(layer) + part)
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
                f"{source} has tensors sempt does not know where to put: {some(unmapped)}.",
                f"It does not look like a {self.name} checkpoint; another method's file has another layout.",
            )
        by_ours = {rule.ours: rule for rule in rules}
        missing = sorted({rule.official for rule in rules if rule.official not in state}
                         | {self._official_guess(k) for k in expected if k not in by_ours})
        if missing:
            raise WeightsError(
                f"{source} lacks tensors this model needs: {some(missing)}.",
                "A prompt set is missing in the middle of a tower, or the file holds another method's model.",
            )
        unexpected = sorted(rule.official for rule in rules if rule.ours not in expected)
        wrong = [f"{rule.official} is {tuple(state[rule.official].shape)} but the model expects "
                 f"{rule.official_shape(tuple(expected[rule.ours].shape))}"
                 for rule in rules if rule.ours in expected
                 and tuple(state[rule.official].shape) != rule.official_shape(tuple(expected[rule.ours].shape))]
        if unexpected or wrong:
            parts = ([f"no place for {some(unexpected)}"] if unexpected else []) + wrong[:3]
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
                f"{some(unmapped)}.",
                f"Only a plain {self.name} model (without SemPT) has this layout.",
            )
        missing = sorted(rule.ours for rule in rules if rule.ours not in tensors)
        if missing:
            raise WeightsError(f"{source} lacks learned tensors of its own layout: {some(missing)}.")
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


def conv1x1_rules(ours: str, official: str) -> tuple[TensorRule, TensorRule]:
    """An official 1×1 Conv2d (weight [out, in, 1, 1], bias) that is our Linear `ours`."""
    return (TensorRule(f"{ours}.weight", f"{official}.weight", conv1x1=True),
            TensorRule(f"{ours}.bias", f"{official}.bias"))


def batchnorm_rules(ours: str, official: str) -> tuple[TensorRule, ...]:
    """An official BatchNorm with its running statistics, one to one."""
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return tuple(TensorRule(f"{ours}.{n}", f"{official}.{n}") for n in names)


def some(keys: list[str], shown: int = 6) -> str:
    """The first `shown` of `keys` and how many more, for one-sentence errors."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
