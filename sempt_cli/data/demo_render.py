"""The demo world's ground truth and its renderer: everything that decides which images land on disk.

Why a separate module: the text of this file is part of the demo cache key (`sempt_cli.data.demo`), so
editing the caption templates or the description phrasing in `demo.py` does not invalidate a generated world
(and every model trained on it), while any change here (a colour, a shape, the class list) regenerates it.

Pure numpy; no torch, no PIL. Images are rendered at 2x and box-downsampled, which anti-aliases edges.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

WORLD_SEED = 20240611
"""Fixes the class list and names. Rendering seeds vary images only, so every seed shows the same task."""

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star", "cross", "moon"),
    "color": ("red", "green", "blue", "yellow", "purple", "orange"),
    "pattern": ("solid", "striped", "dotted", "checkered", "ringed"),
    "size": ("small", "medium", "large"),
    "background": ("dark", "white", "sandy", "grassy"),
}
"""Attribute dimensions and their values, in the order captions and descriptions use them.

US spelling ("color") because that is what CLIP-style web captions mostly use."""

NUM_CLASSES = 40
IMAGES_PER_CLASS: dict[str, int] = {"train": 40, "val": 10, "test": 50}
"""Per class. 40 train images leave room for 16-shot sampling; 50 test images per class give 1000 test images
per half, so a base or novel accuracy has a binomial standard error of about 1.5 points."""

_SUPERSAMPLE = 2

_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 45),
    "green": (45, 165, 65),
    "blue": (45, 85, 215),
    "yellow": (235, 210, 50),
    "purple": (140, 55, 180),
    "orange": (240, 135, 35),
}
_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "dark": (30, 32, 42),
    "white": (228, 228, 222),
    "sandy": (196, 172, 126),
    "grassy": (72, 108, 52),
}
_RADIUS: dict[str, float] = {"small": 0.15, "medium": 0.215, "large": 0.29}
"""Shape radius as a fraction of the image side; each step is about 40 % larger, jittered by 7 %."""

# Name generation: consonant-vowel syllables; the result is checked against every caption word.
_ONSETS = tuple("b d f g k l m n p r s t v z br dr gl kr pl qu sk sn tr vr zh".split())  # noqa: SIM905
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_CODAS = ("", "", "", "n", "r", "l", "m", "x", "sk", "th", "sh")


@dataclass(frozen=True)
class DemoClass:
    """One benchmark class: an invented name for a unique combination of attribute values."""

    name: str
    attributes: dict[str, str]

    def __hash__(self) -> int:  # the dict field would make the generated hash fail; treat as read-only
        return hash((self.name, tuple(sorted(self.attributes.items()))))


@dataclass(frozen=True)
class DemoWorld:
    """The demo world's ground truth. Base = first half of `classes` (label order), novel = second half.

    `name_rates` is the probability that a pre-training caption of a class's image mentions the class name:
    a long tail, dealt out so that base and novel get the same spread (see `sempt_cli.data.demo`)."""

    attributes: dict[str, tuple[str, ...]]
    classes: tuple[DemoClass, ...]
    name_rates: dict[str, float] = field(default_factory=dict)
    world_seed: int = WORLD_SEED

    @property
    def classnames(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_base(self) -> int:
        return len(self.classes) // 2

    @property
    def base_classes(self) -> tuple[DemoClass, ...]:
        return self.classes[: self.num_base]

    @property
    def novel_classes(self) -> tuple[DemoClass, ...]:
        return self.classes[self.num_base :]

    def split_of(self, name: str) -> str:
        """Whether a class name is "base" or "novel"."""
        return "base" if name in {c.name for c in self.base_classes} else "novel"

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_seed": self.world_seed,
            "attributes": {k: list(v) for k, v in self.attributes.items()},
            "classes": [
                {
                    "label": label,
                    "name": c.name,
                    "split": "base" if label < self.num_base else "novel",
                    "attributes": dict(c.attributes),
                    "pretraining_name_rate": self.name_rates.get(c.name),
                }
                for label, c in enumerate(self.classes)
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemoWorld:
        classes = tuple(DemoClass(c["name"], dict(c["attributes"])) for c in data["classes"])
        rates = {
            c["name"]: float(c["pretraining_name_rate"])
            for c in data["classes"]
            if c.get("pretraining_name_rate") is not None
        }
        return cls(
            {k: tuple(v) for k, v in data["attributes"].items()},
            classes,
            rates,
            int(data.get("world_seed", WORLD_SEED)),
        )


def hamming(a: Mapping[str, str], b: Mapping[str, str]) -> int:
    """Number of attribute dimensions in which two combinations differ."""
    return sum(a[k] != b[k] for k in a)


def _invent_names(rng: random.Random, n: int, forbidden: set[str]) -> list[str]:
    """Pronounceable, meaningless names; none contains a caption word, none contains another name."""
    names: list[str] = []
    while len(names) < n:
        syllables = 2 if rng.random() < 0.75 else 3
        parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
        name = "".join(parts) + rng.choice(_CODAS)
        if not 5 <= len(name) <= 9 or any(w in name for w in forbidden):
            continue
        if any(name in other or other in name for other in names):
            continue
        names.append(name)
    return names


def _class_combos(rng: random.Random, n: int) -> list[dict[str, str]]:
    """Grow combinations by mutating 1-2 attributes of earlier ones, so that near neighbours are common."""
    dims = list(ATTRIBUTES)
    combos: list[dict[str, str]] = []
    while len(combos) < n:
        if combos and rng.random() < 0.6:
            parent = rng.choice(combos)
            child = dict(parent)
            for dim in rng.sample(dims, 1 if rng.random() < 0.55 else 2):
                child[dim] = rng.choice([v for v in ATTRIBUTES[dim] if v != parent[dim]])
        else:
            child = {dim: rng.choice(values) for dim, values in ATTRIBUTES.items()}
        if child not in combos:
            combos.append(child)
    rng.shuffle(combos)
    return combos


def _nearest(combo: Mapping[str, str], others: list[dict[str, str]]) -> int:
    return min(hamming(combo, o) for o in others if o is not combo)


def _acceptable(combos: list[dict[str, str]]) -> bool:
    """The constraints the benchmark needs (see `check_world`), plus enough near neighbours to be hard."""
    half = len(combos) // 2
    base, novel = combos[:half], combos[half:]
    for dim, values in ATTRIBUTES.items():
        for value in values:
            if not any(c[dim] == value for c in base) or not any(c[dim] == value for c in novel):
                return False
            count = sum(c[dim] == value for c in combos)
            if not 0.5 <= count * len(values) / len(combos) <= 1.5:
                return False  # balanced: no value dominates the class list or is nearly absent
    near_own = [_nearest(c, part) <= 2 for part in (base, novel) for c in part]
    near_base = [min(hamming(c, b) for b in base) <= 2 for c in novel]
    ones = [_nearest(c, combos) == 1 for c in combos]
    return (
        sum(near_own) >= 0.7 * len(combos)
        and sum(near_base) >= 0.6 * half
        and 0.25 * len(combos) <= sum(ones) <= 0.5 * len(combos)
    )


def _name_rates(rng: random.Random, n: int) -> list[float]:
    """A long tail of name frequencies (0.8 down to 0.08, geometric), dealt in pairs to base and novel.

    Pairs of adjacent ranks go one to each half (which one is random), so both halves see the same spread of
    well-known and rarely named classes; the base/novel split itself carries no frequency signal."""
    half = n // 2
    levels = [0.8 * (0.1 ** (k / (n - 1))) for k in range(n)]
    base_rates: list[float] = []
    novel_rates: list[float] = []
    for k in range(0, n, 2):
        pair = [levels[k], levels[k + 1]]
        rng.shuffle(pair)
        base_rates.append(pair[0])
        novel_rates.append(pair[1])
    rng.shuffle(base_rates)
    rng.shuffle(novel_rates)
    return [round(r, 4) for r in base_rates[:half] + novel_rates[:half]]


_OTHER_CAPTION_WORDS = (
    "stripe dot check checker ring plain sand grass photo shape image picture pattern with background called "
    "thing object kind color colour big tiny pale black light on of the an and is it one has its"
)


def caption_words() -> set[str]:
    """Every attribute value and dimension name: no invented class name may contain one of these."""
    words = {w for values in ATTRIBUTES.values() for v in values for w in v.split()}
    words |= set(ATTRIBUTES)
    words |= set(_OTHER_CAPTION_WORDS.split())
    return words


def build_world(world_seed: int = WORLD_SEED, num_classes: int = NUM_CLASSES) -> DemoWorld:
    """Deterministically build the class list: combinations, then names drawn independently of them."""
    if num_classes % 2 or num_classes < 8:
        raise ValueError("the demo world needs an even number of classes, at least 8")
    rng = random.Random(world_seed)
    for _ in range(10_000):
        combos = _class_combos(rng, num_classes)
        if _acceptable(combos):
            break
    else:  # pragma: no cover - the constraints are loose enough that this never happens for sane sizes
        raise RuntimeError("could not find a class set satisfying the demo world's constraints")
    name_rng = random.Random(f"{world_seed}-names")  # independent stream: names carry no attribute signal
    names = _invent_names(name_rng, num_classes, {w for w in caption_words() if len(w) >= 3})
    rates = _name_rates(random.Random(f"{world_seed}-rates"), num_classes)
    classes = tuple(DemoClass(name, combo) for name, combo in zip(names, combos, strict=True))
    return DemoWorld(dict(ATTRIBUTES), classes, dict(zip(names, rates, strict=True)), world_seed)


# --------------------------------------------------------------------------------------------- rendering


def _star(x: np.ndarray, y: np.ndarray, outer: float = 1.15, inner: float = 0.5, n: int = 5) -> np.ndarray:
    """Exact n-pointed star polygon, by folding the angle into one half-spike."""
    rho = np.hypot(x, y)
    seg = 2 * math.pi / n
    f = np.mod(np.arctan2(y, x), seg)
    a = np.minimum(f, seg - f)
    px, py = rho * np.cos(a), rho * np.sin(a)
    dx, dy = inner * math.cos(seg / 2) - outer, inner * math.sin(seg / 2)
    return (dx * py - dy * (px - outer)) * (dy * outer) >= 0


def _polygon(x: np.ndarray, y: np.ndarray, n: int, apothem: float, offset: float = 0.0) -> np.ndarray:
    inside = np.ones(x.shape, dtype=bool)
    for k in range(n):
        a = offset + 2 * math.pi * k / n
        inside &= x * math.cos(a) + y * math.sin(a) <= apothem
    return inside


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape in coordinates normalised by its radius (extent about 1 in every direction)."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return (np.abs(x) <= 0.86) & (np.abs(y) <= 0.86)
    if shape == "triangle":
        return _polygon(x, y - 0.12, 3, 0.62, offset=math.pi / 2)
    if shape == "star":
        return _star(x, y)
    if shape == "cross":
        arm = 0.36
        return ((np.abs(x) <= arm) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= arm) & (np.abs(x) <= 1.0))
    if shape == "moon":
        return (x * x + y * y <= 1.0) & ((x - 0.55) ** 2 + y * y > 0.72**2)
    raise ValueError(f"unknown shape {shape!r}")


def pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Where the pattern's marks go, in the shape's own (rotated) pixel coordinates."""
    p1, p2 = rng.random(2)
    if pattern == "solid":
        return np.zeros(u.shape, dtype=bool)
    if pattern == "striped":
        return np.mod(u / period + p1, 1.0) < 0.5
    if pattern == "dotted":
        fu = np.mod(u / (1.15 * period) + p1, 1.0) - 0.5
        fv = np.mod(v / (1.15 * period) + p2, 1.0) - 0.5
        return fu * fu + fv * fv < 0.3**2
    if pattern == "checkered":
        return (np.floor(u / period + p1) + np.floor(v / period + p2)) % 2 == 0
    if pattern == "ringed":
        return np.mod(np.hypot(u, v) / period + 0.25 * p1, 1.0) < 0.5
    raise ValueError(f"unknown pattern {pattern!r}")


@lru_cache(maxsize=8)
def _grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of a res x res canvas; read-only, shared by every image."""
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) + 0.5
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _background(kind: str, res: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(_BACKGROUNDS[kind], dtype=np.float32) * rng.uniform(0.9, 1.1)
    base = base + rng.normal(0.0, 6.0, 3)
    yy, xx = (g / res - 0.5 for g in _grid(res))
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle))[..., None]
    img = np.broadcast_to(base, (res, res, 3)).copy()
    if kind in ("dark", "white"):
        img += ramp * rng.uniform(15, 35)
    elif kind == "sandy":  # mottled grain: coarse noise blown up, plus fine grain
        coarse = rng.normal(0.0, 1.0, (res // 6 + 1, res // 6 + 1)).repeat(6, 0).repeat(6, 1)[:res, :res]
        img += (coarse * 14 + rng.normal(0.0, 10.0, (res, res)))[..., None] * np.array([1.0, 0.92, 0.75])
    else:  # grassy: slanted blade-like streaks
        slant = rng.uniform(-0.35, 0.35)
        phase = (xx + slant * yy) * res
        blades = np.sin(phase * rng.uniform(0.9, 1.3)) + 0.6 * np.sin(phase * 0.37 + rng.uniform(0, 6))
        img += (blades * 14 + rng.normal(0.0, 6.0, (res, res)))[..., None] * np.array([0.7, 1.0, 0.55])
    return img


def render_attributes(attributes: Mapping[str, str], rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """Render one image (uint8, size x size x 3) showing the given attribute values, with nuisance jitter.

    Nuisances: position, rotation, radius, colour, pattern period and phase, lighting, drop shadow, a few
    grey specks of clutter, global brightness/contrast and pixel noise. All randomness comes from `rng`."""
    if size < 16:
        raise ValueError("demo images need at least 16 pixels a side")
    res = size * _SUPERSAMPLE
    img = _background(attributes["background"], res, rng)

    radius = _RADIUS[attributes["size"]] * res * rng.uniform(0.93, 1.07)
    margin = max(0.0, res / 2 - 1.05 * radius - 1)
    cx, cy = res / 2 + rng.uniform(-1, 1, 2) * min(margin, 0.16 * res)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = _grid(res)
    cos, sin = math.cos(theta), math.sin(theta)

    def local(dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
        gx, gy = xx - cx - dx, yy - cy - dy
        return gx * cos + gy * sin, -gx * sin + gy * cos

    shadow_off = 0.06 * radius + _SUPERSAMPLE
    su, sv = local(shadow_off, shadow_off)
    shadow = shape_mask(attributes["shape"], su / radius, sv / radius)
    img[shadow] *= 0.62

    u, v = local(0.0, 0.0)
    mask = shape_mask(attributes["shape"], u / radius, v / radius)
    color = np.array(_COLORS[attributes["color"]], dtype=np.float32)
    color = np.clip(color * rng.uniform(0.88, 1.08) + rng.normal(0.0, 9.0, 3), 0, 255)
    luma = float(color @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    ink = color * 0.35 if luma > 140 else color + (255 - color) * 0.62
    period = max(0.52 * radius, 4.0 * _SUPERSAMPLE) * rng.uniform(0.9, 1.1)
    marks = pattern_mask(attributes["pattern"], u, v, period, rng) & mask
    light = 1.0 + 0.12 * (u * math.cos(theta) - v * math.sin(theta)) / radius  # soft lighting from one side
    fill = np.where(marks[..., None], ink, color) * light[..., None]
    img[mask] = fill[mask]

    for _ in range(int(rng.integers(0, 4))):  # clutter: small neutral specks anywhere
        sx, sy = rng.uniform(0, res, 2)
        sr = rng.uniform(1.0, 2.2) * _SUPERSAMPLE
        speck = (xx - sx) ** 2 + (yy - sy) ** 2 <= sr * sr
        img[speck] = rng.uniform(20, 235)

    img = img.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    img = (img - 128.0) * rng.uniform(0.85, 1.12) + 128.0 + rng.uniform(-12, 12)
    img += rng.normal(0.0, rng.uniform(4.0, 12.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def image_rng(seed: int, stream: int, key: int, index: int) -> np.random.Generator:
    """The generator for one image: a pure function of its identity, so images can be made in any order."""
    return np.random.default_rng([seed % (1 << 64), stream, key, index])  # negative seeds are fine too


CLASS_STREAM = 1
CORPUS_STREAM = 2


def render_class_image(world: DemoWorld, label: int, index: int, *, seed: int = 0, size: int = 48) -> np.ndarray:
    """Image `index` of class `label`: deterministic in (seed, label, index, size)."""
    return render_attributes(world.classes[label].attributes, image_rng(seed, CLASS_STREAM, label, index), size)
