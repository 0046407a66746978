"""CLIP image preprocessing as every CoOp/PromptKD/PromptSRC trainer config sets it (spec §6).

Train: random resized crop (scale (0.08, 1) by default; MMRL uses (0.5, 1)), horizontal flip, normalise.
Test: resize the shorter side, centre crop, normalise — CLIP's own preprocessing. Interpolation is bicubic
in both (the Dassl default would be bilinear, the configs override it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchvision import transforms as T

__all__ = ["CLIP_MEAN", "CLIP_STD", "build_transform", "clip_test_transform", "clip_train_transform"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3 / 4, 4 / 3)


def clip_train_transform(
    size: int = 224,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    flip_p: float = 0.5,
) -> T.Compose:
    """RandomResizedCrop(size, scale, ratio, bicubic) -> flip(p) -> ToTensor -> Normalize(CLIP)."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=bicubic),
            T.RandomHorizontalFlip(p=flip_p),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def clip_test_transform(size: int = 224) -> T.Compose:
    """Resize(shorter side = size, bicubic) -> CenterCrop(size) -> ToTensor -> Normalize(CLIP)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def build_transform(train: bool, size: int = 224, scale: tuple[float, float] = DEFAULT_SCALE) -> T.Compose:
    """The train or test pipeline, for callers that pick by a flag."""
    return clip_train_transform(size, scale=scale) if train else clip_test_transform(size)
