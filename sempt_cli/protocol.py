"""The method protocol: what the engine needs from a prompt-learning method, and the registry of methods.

A method is a plug-in on one engine, not a copy of a trainer, and one file (`methods/<name>.py`, or a module of
another package registered through the `sempt.methods` entry point). It declares, as class attributes, its
`name`, its `title` and `role` in tables, whether it is `supervised`, its own settings section (`options`, a
`SettingsSection` model; flags, `config show` and help panels are built from it) and its official
hyper-parameters as data (`preset_table`), and implements

* its trainable parameters (everything else is frozen), and `parameter_groups()` when parts of them have their
  own learning rate, weight decay or warm-up in the official code (DPT's text prompts); by default one group at
  the `train.*` rates,
* `training_forward(batch)` — its objective as (image embeddings, class embeddings, a loss on logits, extra
  terms), from which the default `training_loss(batch)` is built,
* `class_embeddings(classnames)` and `image_embeddings(images)` — both L2-normalised, so that
* `logits(image_embeddings, class_embeddings)` is its inference rule, and `classifier(classnames, in_domain=)`
  the same rule with the class side prepared once per evaluation (a method may score differently when the
  images do not come from its training distribution: MMRL's decoupled inference),
* `matching_embeddings(image_embeddings)` — the part of an image embedding compared with class embeddings by
  cosine (all of it, unless a method carries more than one image feature, as MMRL does),
* `class_side_needs_images` + `class_embeddings_for(image_embeddings, classnames)` — class embeddings that depend
  on the image (a text context shifted per image): [B, C, D], one set per image, which `logits` scores row by row
  (`TrainingForward.class_embeddings` may then be [B, C, D] too). Such a method has no image-free class
  embedding, so it may refuse `class_embeddings(classnames)` with one sentence; what needs one (`sempt embed`, a
  PromptKD teacher's class vectors) then stops there, while evaluation and SemPT go through
  `class_embeddings_for` and `class_embedding_dim`,
* optional hooks at the end of an epoch / of training (e.g. PromptSRC's Gaussian prompt aggregation),
* `presets(...)` — its official hyper-parameters per evaluation setting (its `preset_table` resolved), applied
  below user settings.

SemPT wraps a method through the same protocol: it re-scores the wrapped method's `training_forward` against
attribute-enhanced class embeddings and replaces `classifier`, which is why SemPT stays one file for every
baseline (`methods/sempt.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sempt_cli.errors import SemptError, SettingsError
from sempt_cli.models.checkpoint import check_state, learned_state_dict
from sempt_cli.models.official_layout import Layout
from sempt_cli.plugins import load_plugins
from sempt_cli.presets import Presets
from sempt_cli.settings import Settings, SettingsSection, register_section

Role = Literal["teacher", "student", "baseline", "zero-shot"]


@dataclass
class Batch:
    """A training batch. (`epoch`, `indices`) identify each augmented view exactly, which is what per-view
    caches such as PromptKD's teacher image features are keyed by."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    epoch: int = 0

    def to(self, device: torch.device) -> Batch:
        images, labels, indices = (t.to(device, non_blocking=True) for t in (self.images, self.labels, self.indices))
        return Batch(images, labels, indices, self.epoch)


@dataclass
class LossOutput:
    """The scalar to minimise and its named parts (for progress bars and logs).

    Parts are detached 0-dim tensors (`loss.detach()`), not floats: the trainer reads them back every few steps
    in one transfer, so a step never waits for the device and a compiled step has no graph break. Floats are
    still accepted (read back per step)."""

    total: Tensor
    parts: dict[str, Tensor | float] = field(default_factory=dict)

    def __add__(self, other: LossOutput) -> LossOutput:
        return LossOutput(self.total + other.total, self.parts | other.parts)

    def scaled(self, weight: float, suffix: str = "") -> LossOutput:
        """`weight` × this loss, its parts renamed `<part><suffix>` (parts stay unweighted, for reading)."""
        return LossOutput(weight * self.total, {f"{k}{suffix}": v for k, v in self.parts.items()})


@dataclass
class TrainingForward:
    """One training step's forward pass, split where a classifier enters.

    `head_loss(logits)` is the method's own loss on logits against `class_embeddings` (cross-entropy with the
    labels, KD against a teacher, ...); `extra` holds the terms that do not go through that classifier (e.g.
    PromptSRC's consistency losses). A wrapper can therefore score the same image embeddings against other
    class embeddings and apply the method's own loss to them, without running the encoders twice (which would
    also update BatchNorm statistics twice). `class_embeddings` is [C, D], or [B, C, D] for a method whose class
    side depends on the image (`Method.class_side_needs_images`).
    """

    image_embeddings: Tensor
    class_embeddings: Tensor
    head_loss: Callable[[Tensor], LossOutput]
    extra: LossOutput | None = None


@dataclass
class ParameterGroup:
    """Parameters the optimizer steps at their own rates, because a method's official code does (one optimizer
    per part in Dassl). `lr`, `weight_decay` and `warmup_epochs` left at None come from `train.*`; every group
    follows the same warm-up + cosine shape, at its own peak `lr` (the warm-up LR is `train.warmup_lr` for all, as
    Dassl's constant warm-up is). Frozen parameters in `params` are dropped by the trainer."""

    name: str
    params: list[nn.Parameter]
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: int | None = None

    @property
    def default(self) -> bool:
        """Whether every rate comes from `train.*` (where a wrapper's own parameters can join)."""
        return self.lr is None and self.weight_decay is None and self.warmup_epochs is None


def cross_entropy_head(labels: Tensor, weight: float = 1.0) -> Callable[[Tensor], LossOutput]:
    """The head loss of a method trained with labels (`TrainingForward.head_loss`): `weight` × the cross-entropy
    of the logits, taken in fp32 whatever the autocast dtype; its part "ce" stays unweighted."""

    def head_loss(logits: Tensor) -> LossOutput:
        ce = F.cross_entropy(logits.float(), labels)
        return LossOutput(ce if weight == 1 else weight * ce, {"ce": ce.detach()})

    return head_loss


Classifier = Callable[[Tensor], Tensor]
"""Image embeddings [B, D] → logits [B, C] for a fixed class list (`Method.classifier`)."""


def contiguous_block(full: Sequence[str], names: Sequence[str]) -> slice:
    """Where `names` sit in `full` as one contiguous block (base = first m, novel = the rest): rows are found by
    position, so duplicate names (ImageNet's two 'missile's) cannot be confused."""
    full, names = list(full), list(names)
    for start in range(len(full) - len(names) + 1):
        if full[start : start + len(names)] == names:
            return slice(start, start + len(names))
    raise SemptError("These classes are not a contiguous block of the class list the model was built for.")


class Method(nn.Module, ABC):
    """Base class of every prompt-learning method; see the module docstring for the contract."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    """How tables and plots name it ("PromptSRC"); `name` when empty."""
    role: ClassVar[Role] = "baseline"
    """teacher (trained with labels, distilled from), student (learns from a teacher), baseline (a supervised
    method compared as itself: tables show no role), zero-shot."""
    description: ClassVar[str] = ""
    options: ClassVar[type[SettingsSection] | None] = None
    """Its own settings section (a `SettingsSection` subclass whose `section` class attribute names it), if any;
    subclasses that are presets of a method inherit it."""
    preset_table: ClassVar[Presets] = Presets()
    """Its official hyper-parameters per setting, dataset and backbone, as data (`sempt_cli.presets`)."""
    official_layout: ClassVar[Layout | None] = None
    """How its official code's checkpoints name its learned tensors, if it has one (`sempt interop` imports and
    exports every declared layout). Subclasses inherit it: one that learns other tensors sets its own, or None."""
    image_side_needs_classes: bool = False
    """True when image embeddings depend on the candidate classes (DPT's class-aware visual prompts): evaluation
    then encodes images once per class list with `image_embeddings_among`. Per instance (DPT without CAVPT
    and a wrapper such as SemPT set their own), so not a ClassVar."""
    class_side_needs_images: bool = False
    """True when class embeddings depend on the image (CoCoOp-style conditional context): `class_embeddings_for`
    then gives [B, C, D] and `classifier` computes them per image batch. Per instance, like the flag above."""
    unused_parameters: bool = False
    """True when some trainable parameter can get no gradient in a training step (DPT's K-way head when no ground
    truth is among the top classes): DistributedDataParallel must then look for unused parameters, an extra
    autograd traversal every step that every other method is spared. Per instance, like the flag above."""
    settings_sections: ClassVar[tuple[str, ...]] = ()
    """Settings sections, besides model, data and train, that shape what this method learns (its run key)."""
    supervised: ClassVar[bool] = True
    """Trained with labels (`train-teacher --method`, `distill --baseline` without a teacher); False for methods
    that learn from a teacher (PromptKD) or not at all (zero-shot)."""

    def __init__(self, train_classnames: Sequence[str]) -> None:
        super().__init__()
        self.train_classnames = list(train_classnames)

    def parameter_groups(self) -> list[ParameterGroup]:
        """How the optimizer steps the trainable parameters: each in exactly one group. One group at the
        `train.*` rates unless the official code gives parts their own (so `--lr` moves the default group)."""
        return [ParameterGroup("all", [p for p in self.parameters() if p.requires_grad])]

    def training_forward(self, batch: Batch) -> TrainingForward:
        """The method's objective on one (micro-)batch, split where the classifier enters (see TrainingForward)."""
        raise SemptError(f"{type(self).__name__} has nothing to train; pick a prompt-learning method.")

    def training_loss(self, batch: Batch) -> LossOutput:
        """The method's objective on one (micro-)batch, averaged over its images."""
        step = self.training_forward(batch)
        loss = step.head_loss(self.logits(step.image_embeddings, step.class_embeddings))
        return loss if step.extra is None else loss + step.extra

    @abstractmethod
    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        """L2-normalised text-side embeddings [C, D] for any class list (base, novel, another dataset); a method
        with `class_side_needs_images` may refuse (see the module docstring)."""

    def class_embeddings_for(self, image_embeddings: Tensor, classnames: Sequence[str]) -> Tensor:
        """Class embeddings as the images of `image_embeddings` [B, D'] see them: [B, C, D] when
        `class_side_needs_images`, else `class_embeddings(classnames)` [C, D], the same for every image."""
        return self.class_embeddings(classnames)

    def class_embedding_dim(self) -> int:
        """D, the width of the class embeddings (what a wrapper sizes its layers by), known without an image."""
        return int(self.class_embeddings(self.train_classnames[:1]).shape[-1])

    @abstractmethod
    def image_embeddings(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings [B, D] in the same space as `class_embeddings`."""

    def image_embeddings_among(self, images: Tensor, classnames: Sequence[str]) -> Tensor:
        """Image embeddings when the candidates are `classnames`; the same for every class list unless
        `image_side_needs_classes`."""
        return self.image_embeddings(images)

    def logit_scale(self) -> Tensor:
        return torch.tensor(100.0)

    def logits(self, image_embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
        """Inference rule; cosine similarity times CLIP's (frozen) logit scale unless a method says otherwise.
        `class_embeddings` is [C, D], or [B, C, D] per image (`class_embeddings_for`)."""
        if class_embeddings.dim() == 3:
            return self.logit_scale() * torch.einsum("bd,bcd->bc", image_embeddings,
                                                     class_embeddings.to(image_embeddings.dtype))
        return self.logit_scale() * image_embeddings @ class_embeddings.t().to(image_embeddings.dtype)

    def matching_embeddings(self, image_embeddings: Tensor) -> Tensor:
        """The part of `image_embeddings` [B, D'] that lives in the class-embedding space [B, D] (identity here)."""
        return image_embeddings

    def classifier(self, classnames: Sequence[str], *, in_domain: bool = True) -> Classifier:
        """The inference rule for `classnames`, with the class side computed once (not once per image batch).

        `in_domain` says the images come from the dataset the method was trained on (False for cross-dataset
        targets and the ImageNet variants). With `class_side_needs_images` the class side is computed per image
        batch (`class_embeddings_for`)."""
        if self.class_side_needs_images:
            names = list(classnames)
            return lambda image_embeddings: self.logits(image_embeddings,
                                                        self.class_embeddings_for(image_embeddings, names))
        embeddings = self.class_embeddings(classnames)
        return lambda image_embeddings: self.logits(image_embeddings, embeddings)

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of 1-based `epoch` (also when resuming mid-epoch)."""

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        """Called after the last optimizer step of 1-based `epoch`."""

    def on_train_end(self) -> None:
        """Called once after the last epoch (e.g. to load aggregated prompts)."""

    def trainable_state(self) -> dict[str, Tensor]:
        """Everything training changes: trainable parameters plus persistent buffers of the modules that own
        them (e.g. a projector's BatchNorm statistics)."""
        return learned_state_dict(self)

    def load_trainable_state(self, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
        """Copy `state` in place after checking it has exactly this method's keys and shapes."""
        check_state(state, self.trainable_state(), source=source)
        targets = dict(self.named_parameters()) | dict(self.named_buffers())
        with torch.no_grad():
            for name, value in state.items():
                targets[name].copy_(value)

    def extra_state(self) -> dict[str, Tensor]:
        """Method-internal training state to include in resumable checkpoints (e.g. aggregation sums)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore what `extra_state` returned."""

    @classmethod
    def presets(cls, settings: Settings, backbone: str) -> dict[str, Any]:
        """Official hyper-parameters for `settings.data.setting`, as dotted setting keys."""
        return cls.preset_table.resolve(settings, backbone)

    @classmethod
    def display_title(cls) -> str:
        return cls.title or cls.name


_METHODS: dict[str, type[Method]] = {}

MethodT = TypeVar("MethodT", bound=type[Method])


def register_method(cls: MethodT) -> MethodT:
    """Class decorator adding a method to the registry under `cls.name`, and its settings section (if it declares
    one) to the settings tree."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise SettingsError(f"Two methods are registered under the name {cls.name!r}.")
    _METHODS[cls.name] = cls
    if cls.options is not None:
        register_section(cls.options)
    return cls


def _registry() -> dict[str, type[Method]]:
    load_plugins()
    return _METHODS


def method_names() -> list[str]:
    return sorted(_registry())


def supervised_method_names() -> list[str]:
    """Methods trained with labels: what `train-teacher --method` and `few-shot --baseline` accept."""
    return [name for name, cls in sorted(_registry().items()) if cls.supervised]


def get_method(name: str) -> type[Method]:
    try:
        return _registry()[name]
    except KeyError:
        raise SettingsError(f"Unknown method {name!r}; choose one of {', '.join(method_names())}.") from None
