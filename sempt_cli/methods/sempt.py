"""SemPT (spec/sempt-method.md) as a wrapper around any method: semantic alignment (SA), feature enhancement
(FE) and unified training–inference adaptation (UTIA).

With `v` the wrapped method's image embedding, `T_lbl` its class embeddings and `T_atr` [N, S, d] the
description embeddings of every class:

* SA: `s_ij = <v, T_atr[i,j]>`, keep the top-K `j` per class, `w_ij = softmax_j(s_ij / τ_sa)`,
  `Â_i(v) = Σ_j w_ij T_atr[i,j]`;
* FE: `Z_i = MLP([T_lbl_i ; Â_i(v)])`, `T_enh_i = normalize((1−α) T_lbl_i + α Z_i)`;
* UTIA: `L = (1−β) L_lbl + β L_enh`, each the wrapped method's *own* loss on logits against `T_lbl` and
  against `T_enh` (its extra terms are added once); inference uses `T_lbl` for seen classes, `T_enh` for
  unseen ones (`sempt.inference` selects Table 4a's alternatives).
* `calibrated` (not in the paper): hybrid, with the unseen classes' `T_enh` logits mapped by `Calibration`
  onto the scale of the seen classes' `T_lbl` logits. Neither loss constrains the level of the `T_enh` logits
  relative to the `T_lbl` ones (a softmax ignores a common shift), so when seen and unseen classes compete in
  one classifier the hybrid rule sends unseen-class images to seen classes. `fit_calibration` sets the map
  from logits on unlabelled training images only (see its docstring).

`T_enh` depends on the image, so a naive implementation materialises [B, N, 2d] and runs the MLP on it. The
first layer is linear (spec §6): `W [T_lbl; Â] = W_l T_lbl + Σ_j w_ij (W_a T_atr[i,j])`, so `W_l T_lbl` [N, h]
and `W_a T_atr` [N, S, h] are projected once per step (once per evaluation) and only weighted per image;
classes are processed in chunks so that memory stays bounded for N = 1000 (`enhanced_logits`). A wrapped method
whose class embeddings depend on the image (`Method.class_side_needs_images`) gives T_lbl per image, [B, N, d]:
the factorisation still holds, `W_l T_lbl` is then [B, N, h] (projected once per batch), and only the attribute
side is projected once per evaluation.
`enhanced_embeddings_naive` is the formula as written, kept as the reference the tests and the benchmark
compare against.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sempt_cli.errors import SemptError
from sempt_cli.models.checkpoint import check_state
from sempt_cli.protocol import Batch, Classifier, LossOutput, Method, ParameterGroup, contiguous_block
from sempt_cli.settings import SemptHyperParameters

STATE_PREFIX = "sempt."
"""Checkpoint keys of SemPT's own parameters; the wrapped method's keys stay as they are, so a SemPT
checkpoint still holds a complete baseline checkpoint."""

CHUNK_ELEMENTS = 1 << 24
"""Upper bound on B × classes × d per chunk of `enhanced_logits` (64 MiB per fp32 intermediate)."""


@dataclass(frozen=True)
class AttributeBank:
    """T_atr [N, S, d] (L2-normalised) of a class list, looked up by contiguous blocks of that list."""

    classnames: list[str]
    vectors: Tensor

    def rows(self, classnames: Sequence[str]) -> Tensor:
        return self.vectors[contiguous_block(self.classnames, classnames)]

    def to(self, device: torch.device | str) -> AttributeBank:
        return AttributeBank(self.classnames, self.vectors.to(device))


def semantic_weights(image: Tensor, attributes: Tensor, top_k: int, tau: float) -> Tensor:
    """SA weights [B, n, S]: per image and class, a softmax over the top-K descriptions, zero elsewhere."""
    scores = torch.einsum("bd,nsd->bns", image, attributes.to(image.dtype))
    top, index = scores.topk(top_k, dim=-1)
    softmax = F.softmax(top.float() / tau, dim=-1).to(scores.dtype)
    return torch.zeros_like(scores).scatter(-1, index, softmax)


class ProjectedClasses(NamedTuple):
    """The first fusion layer applied to the class side: `W_l T_lbl + b` [n, h] (or per image [B, n, h]) and
    `W_a T_atr` [n, S, h]."""

    labels: Tensor
    attributes: Tensor

    def select(self, rows: slice) -> ProjectedClasses:
        return ProjectedClasses(self.labels[..., rows, :], self.attributes[rows])


class AttributeFusion(nn.Module):
    """FE's fusion `Z = MLP([T_lbl ; Â])`: Linear(2d, d) → GELU → Linear(d, d), or the first Linear alone."""

    def __init__(self, dim: int, kind: str = "mlp") -> None:
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(2 * dim, dim)
        self.fc2 = nn.Linear(dim, dim) if kind == "mlp" else None

    def forward(self, pairs: Tensor) -> Tensor:
        """The module as written, on concatenated [..., 2d] inputs (the naive path)."""
        return self.finish(self.fc1(pairs))

    def project(self, labels: Tensor, attributes: Tensor) -> ProjectedClasses:
        """The first layer split along its input: the class side, computed once for all images."""
        return ProjectedClasses(self.project_labels(labels), self.project_attributes(attributes))

    def project_labels(self, labels: Tensor) -> Tensor:
        """`W_l T_lbl + b`: [n, h], or [B, n, h] for per-image T_lbl."""
        weight = self.fc1.weight
        return F.linear(labels.to(weight.dtype), weight[:, : self.dim], self.fc1.bias)

    def project_attributes(self, attributes: Tensor) -> Tensor:
        """`W_a T_atr` [n, S, h]."""
        weight = self.fc1.weight
        return F.linear(attributes.to(weight.dtype), weight[:, self.dim :])

    def finish(self, hidden: Tensor) -> Tensor:
        """Everything after the first layer's pre-activation."""
        return hidden if self.fc2 is None else self.fc2(F.gelu(hidden))


def enhanced_embeddings_naive(
    image: Tensor, labels: Tensor, attributes: Tensor, fusion: AttributeFusion, alpha: float, top_k: int, tau: float
) -> Tensor:
    """T_enh [B, n, d] exactly as spec §2–3 write it: Â materialised, concatenated with T_lbl ([n, d], or per image
    [B, n, d]), fused."""
    aligned = torch.einsum("bns,nsd->bnd", semantic_weights(image, attributes, top_k, tau), attributes.to(image.dtype))
    pairs = torch.cat([labels.to(aligned.dtype).expand_as(aligned), aligned], dim=-1)
    return F.normalize((1 - alpha) * labels + alpha * fusion(pairs), dim=-1)


def enhanced_logits(
    image: Tensor,
    labels: Tensor,
    attributes: Tensor,
    fusion: AttributeFusion,
    *,
    alpha: float,
    top_k: int,
    tau: float,
    scale: Tensor | float,
    projected: ProjectedClasses | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Tensor:
    """`scale · <v_b, T_enh_i(v_b)>` [B, n] by the factorised first layer, in class chunks; `labels` is T_lbl
    [n, d], or per image [B, n, d].

    When gradients are needed and there is more than one chunk, each chunk is recomputed in the backward pass
    (activation checkpointing), so training memory is bounded like evaluation memory."""
    if projected is None:
        projected = fusion.project(labels, attributes)
    batch, classes = image.shape[0], labels.shape[-2]
    width = max(int(projected.labels.shape[-1]), int(labels.shape[-1]))
    step = max(1, chunk_elements // max(1, batch * width))

    def chunk_logits(image: Tensor, labels: Tensor, attributes: Tensor, label_part: Tensor,
                     attribute_part: Tensor) -> Tensor:
        weights = semantic_weights(image, attributes, top_k, tau)
        hidden = label_part + torch.einsum("bns,nsh->bnh", weights.to(attribute_part.dtype), attribute_part)
        fused = fusion.finish(hidden)
        enhanced = F.normalize((1 - alpha) * labels.to(fused.dtype) + alpha * fused, dim=-1)
        return torch.einsum("bd,bnd->bn", image.to(enhanced.dtype), enhanced)

    recompute = torch.is_grad_enabled() and classes > step
    pieces = []
    for start in range(0, classes, step):
        rows = slice(start, start + step)
        part = projected.select(rows)
        args = (image, labels[..., rows, :], attributes[rows], part.labels, part.attributes)
        pieces.append(checkpoint(chunk_logits, *args, use_reentrant=False) if recompute else chunk_logits(*args))
    return scale * torch.cat(pieces, dim=1)


@dataclass(frozen=True)
class Calibration:
    """`scale · z + bias` applied to the T_enh logits of unseen classes under the `calibrated` rule."""

    scale: float
    bias: float

    def apply(self, logits: Tensor) -> Tensor:
        return logits * self.scale + self.bias

    def to_tensors(self) -> dict[str, Tensor]:
        return {"scale": torch.tensor([self.scale], dtype=torch.float64),
                "bias": torch.tensor([self.bias], dtype=torch.float64)}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor]) -> Calibration:
        return cls(float(tensors["scale"].item()), float(tensors["bias"].item()))


def fit_calibration(reference: Tensor, enhanced: Tensor) -> Calibration:
    """The affine map that gives the T_enh logits [M, n] the mean and standard deviation of the reference
    logits [M, n] of the *same* images and classes (the wrapped method's own T_lbl logits).

    Matching on the same (image, class) pairs needs no label: every statistic is over all pairs, whatever class
    an image shows, so it holds for unlabelled images of all classes (PromptKD) and for labelled images of the
    seen classes only (MMRL). Moment matching rather than a least-squares regression of one on the other: a
    regression shrinks the slope by the correlation, which would put the unseen group's top logits below the
    seen group's again. Statistics are taken in float64 so the fit does not depend on the batch order."""
    if reference.shape != enhanced.shape or reference.numel() < 2:
        raise SemptError("The calibration needs the T_lbl and T_enh logits of the same images and classes.")
    ref, enh = reference.double().flatten(), enhanced.double().flatten()
    spread = float(enh.std(unbiased=False))
    if not spread > 0:
        raise SemptError("The T_enh logits on the calibration images are constant, so no scale can be fitted.")
    scale = float(ref.std(unbiased=False)) / spread
    return Calibration(scale, float(ref.mean()) - scale * float(enh.mean()))


class SemPT(Method):
    """Any method with SA/FE/UTIA on top; see the module docstring."""

    name = "sempt"
    description = "Semantic prompt tuning: attribute-enhanced class embeddings for unseen classes."

    def __init__(
        self,
        base: Method,
        settings: SemptHyperParameters,
        attributes: AttributeBank | None,
        seen: Collection[str],
        *,
        dim: int | None = None,
    ) -> None:
        super().__init__(base.train_classnames)
        self.image_side_needs_classes = base.image_side_needs_classes
        self.class_side_needs_images = base.class_side_needs_images
        self.unused_parameters = base.unused_parameters
        if dim is None:
            if attributes is None:
                raise SemptError("SemPT needs the description embeddings (or their width) to build its fusion MLP.")
            dim = int(attributes.vectors.shape[-1])
        if attributes is not None and attributes.vectors.shape[1] <= settings.top_k:
            raise SemptError(f"top_k (K={settings.top_k}) must be smaller than the {attributes.vectors.shape[1]} "
                             "descriptions per class of the attribute file.", "Pass a smaller --top-k.")
        device = next((p.device for p in base.parameters()), torch.device("cpu"))
        self.base = base
        self.hyper = settings
        self.attributes = None if attributes is None else attributes.to(device)
        self.seen = frozenset(seen)
        self.fusion = AttributeFusion(dim, settings.fusion).to(device)
        self.fusion.requires_grad_(settings.beta > 0)  # β = 0: L_enh is absent and nothing trains the fusion
        self.calibration: Calibration | None = None  # set by the pipeline for the `calibrated` rule

    # ------------------------------------------------------------------ delegated to the wrapped method
    def logit_scale(self) -> Tensor:
        return self.base.logit_scale()

    def image_embeddings(self, images: Tensor) -> Tensor:
        return self.base.image_embeddings(images)

    def image_embeddings_among(self, images: Tensor, classnames: Sequence[str]) -> Tensor:
        return self.base.image_embeddings_among(images, classnames)

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        """T_lbl: the wrapped method's own class embeddings."""
        return self.base.class_embeddings(classnames)

    def class_embeddings_for(self, image_embeddings: Tensor, classnames: Sequence[str]) -> Tensor:
        """T_lbl as the images see it ([B, C, D] when the wrapped method's class side depends on the image)."""
        return self.base.class_embeddings_for(image_embeddings, classnames)

    def class_embedding_dim(self) -> int:
        return self.base.class_embedding_dim()

    def parameter_groups(self) -> list[ParameterGroup]:
        """The wrapped method's groups unchanged, the fusion MLP joining the first at the default `train.*` rates (a
        group of its own if none is): a baseline's parameters are stepped as without SemPT."""
        groups, fusion = self.base.parameter_groups(), list(self.fusion.parameters())
        for i, group in enumerate(groups):
            if group.default:
                groups[i] = replace(group, params=[*group.params, *fusion])
                return groups
        return [*groups, ParameterGroup("sempt.fusion", fusion)]

    def on_epoch_start(self, epoch: int) -> None:
        self.base.on_epoch_start(epoch)

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        self.base.on_epoch_end(epoch, num_epochs)

    def on_train_end(self) -> None:
        self.base.on_train_end()

    def extra_state(self) -> dict[str, Tensor]:
        return self.base.extra_state()

    def load_extra_state(self, state: Mapping[str, Tensor]) -> None:
        self.base.load_extra_state(state)

    # ------------------------------------------------------------------ SA + FE
    def enhanced_logits(self, image: Tensor, labels: Tensor, attributes: Tensor,
                        projected: ProjectedClasses | None = None) -> Tensor:
        """Logits of `image` against T_enh of the classes whose T_lbl and T_atr are given."""
        return enhanced_logits(image, labels, attributes, self.fusion, alpha=self.hyper.alpha,
                               top_k=self.hyper.top_k, tau=self.hyper.tau_sa, scale=self.logit_scale(),
                               projected=projected)

    def _attributes_for(self, classnames: Sequence[str]) -> Tensor:
        if self.attributes is None:
            raise SemptError("SemPT needs attribute descriptions for these classes, and none were given.",
                             "Generate them with `sempt gen-attributes --dataset DATASET`.")
        return self.attributes.rows(classnames)

    # ------------------------------------------------------------------ UTIA
    def training_loss(self, batch: Batch) -> LossOutput:
        """(1−β)·(the method's loss vs T_lbl) + β·(the same loss vs T_enh) + the method's extra terms."""
        step = self.base.training_forward(batch)
        beta = self.hyper.beta
        loss = step.head_loss(self.base.logits(step.image_embeddings, step.class_embeddings)).scaled(1 - beta, "_lbl")
        if beta > 0:
            attributes = self._attributes_for(self.train_classnames)
            enhanced = self.enhanced_logits(step.image_embeddings, step.class_embeddings, attributes)
            loss = loss + step.head_loss(enhanced).scaled(beta, "_enh")
        return loss if step.extra is None else loss + step.extra

    def uses_enhanced(self, classnames: Sequence[str]) -> Tensor:
        """Which classes are scored against T_enh under `sempt.inference` (hybrid and calibrated: exactly the
        unseen ones)."""
        rule = self.hyper.inference
        return torch.tensor([rule == "enhanced" or (rule in ("hybrid", "calibrated") and name not in self.seen)
                             for name in classnames], dtype=torch.bool)

    @property
    def needs_calibration(self) -> bool:
        """The `calibrated` rule is in force and no calibration has been fitted or loaded yet."""
        return self.hyper.inference == "calibrated" and self.calibration is None

    def calibration_logits(self, image_embeddings: Tensor, classnames: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(T_lbl logits, T_enh logits) [B, n] of the unseen classes among `classnames`: what `fit_calibration`
        matches. The T_lbl side is the wrapped method's own classifier, so its logits are on the scale the seen
        classes are scored on."""
        unseen = [name for name in classnames if name not in self.seen]
        if not unseen:
            raise SemptError("Every class is seen, so there is nothing to calibrate.")
        reference = self.base.classifier(unseen)(image_embeddings)
        labels = self.class_embeddings_for(image_embeddings, unseen)
        attributes = self._attributes_for(unseen).to(labels.device)
        enhanced = self.enhanced_logits(self.matching_embeddings(image_embeddings), labels, attributes)
        return reference.float(), enhanced.float()

    def matching_embeddings(self, image_embeddings: Tensor) -> Tensor:
        return self.base.matching_embeddings(image_embeddings)

    def classifier(self, classnames: Sequence[str], *, in_domain: bool = True) -> Classifier:
        """Seen classes by the wrapped method's own rule (against T_lbl), unseen ones against T_enh, in one logit
        matrix (so they can compete). The wrapped rule is prepared only if some class uses it. When T_lbl depends
        on the image, it and its projection are computed per image batch; the attribute side still once."""
        chosen = self.uses_enhanced(classnames)
        if not bool(chosen.any()):
            return self.base.classifier(classnames, in_domain=in_domain)
        base = None if bool(chosen.all()) else self.base.classifier(classnames, in_domain=in_domain)
        device = self.fusion.fc1.weight.device
        enhanced = chosen.nonzero().flatten().to(device)
        chosen_attributes = self._attributes_for(classnames).to(device)[enhanced]
        attribute_part = self.fusion.project_attributes(chosen_attributes)
        if self.class_side_needs_images:
            names = [classnames[i] for i in enhanced.tolist()]

            def side(image: Tensor) -> tuple[Tensor, ProjectedClasses]:
                labels = self.class_embeddings_for(image, names)
                return labels, ProjectedClasses(self.fusion.project_labels(labels), attribute_part)
        else:
            chosen_labels = self.class_embeddings(classnames)[enhanced]
            projected = ProjectedClasses(self.fusion.project_labels(chosen_labels), attribute_part)

            def side(image: Tensor) -> tuple[Tensor, ProjectedClasses]:
                return chosen_labels, projected
        calibration = None
        if base is not None and self.hyper.inference == "calibrated":  # only where the two groups compete
            if self.calibration is None:
                raise SemptError("The calibrated rule needs a calibration fitted on this model's training images.")
            calibration = self.calibration

        def logits(image: Tensor) -> Tensor:
            labels, projected = side(image)
            scores = self.enhanced_logits(self.matching_embeddings(image), labels, chosen_attributes, projected)
            if base is None:
                return scores
            if calibration is not None:
                scores = calibration.apply(scores)
            out = base(image)
            out[:, enhanced] = scores.to(out.dtype)
            return out

        return logits

    # ------------------------------------------------------------------ checkpoints
    def trainable_state(self) -> dict[str, Tensor]:
        own = {f"{STATE_PREFIX}fusion.{k}": v.detach() for k, v in self.fusion.state_dict().items()}  # even at β = 0
        return self.base.trainable_state() | own

    def load_trainable_state(self, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
        check_state(state, self.trainable_state(), source=source)
        self.base.load_trainable_state({k: v for k, v in state.items() if not k.startswith(STATE_PREFIX)}, source)
        own = {k.removeprefix(f"{STATE_PREFIX}fusion."): v for k, v in state.items() if k.startswith(STATE_PREFIX)}
        self.fusion.load_state_dict(own)

