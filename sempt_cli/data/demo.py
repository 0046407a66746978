"""The built-in demo world: a procedurally generated benchmark plus a pre-training corpus for tiny CLIPs.

It lets the whole pipeline run for real on a CPU in minutes and is a *controlled* test of SemPT's claim that
shared attributes carry knowledge from base to novel classes. It is not a substitute for the real
benchmarks; demo numbers say nothing about them.

The world (ground truth in `sempt_cli.data.demo_render`)
    Five attribute dimensions, each value drawn visibly: shape (circle, square, triangle, star, cross, moon),
    color (red, green, blue, yellow, purple, orange), pattern (solid, striped, dotted, checkered, ringed),
    size (small, medium, large) and background (dark, white, sandy, grassy): 2160 combinations. 40 classes
    are 40 of them, each with an invented pronounceable name ("gilatu", "kresnum") drawn from a random stream
    independent of the attributes, so a name says nothing about its class. Base = labels 0-19, novel =
    20-39. Every value occurs in both halves, value counts are balanced, and most classes have a neighbour
    that differs in only 1-2 attributes (so recognising one attribute is never enough). Images carry
    nuisances (position, rotation, radius, colour and lighting jitter, drop shadow, clutter specks, pixel
    noise); a linear probe on raw pixels reaches roughly 0.7 with 20-40 images per class.

On disk (`ensure_demo_world`)
    `<cache>/demo-world/<hash>/demo/images/<name>/<name>_NNNN.png`, `demo/split_zhou_Demo.json` (CoOp §1.2
    format, 40/10/50 images per class) and `demo/world.json` (ground truth and generator facts). `<hash>`
    covers `GENERATOR_VERSION`, the source text of `demo_render.py` (the renderer and the class list), the
    image size, the seed and the split sizes; bump `GENERATOR_VERSION` when changing how this module writes
    files. The rendering seed changes the images only: the classes and names are the same for every seed.

Pre-training corpus (`generate_pretraining_corpus`): how names and attributes relate
    Real CLIP knows "water lily" because the name was on the web next to pictures of water lilies, while
    attribute words ("floating leaf pads") are seen across thousands of things. The corpus mirrors that:
    * half the samples show one of the 2160 combinations at random, benchmark or not, with an attribute
      caption ("a small red striped circle on a dark background", "a circle with stripes"): attributes are
      common, well-learned words, and most combinations belong to no benchmark class;
    * the other half show a benchmark class. The caption names it with probability `name_rate` (else it is
      an attribute caption), optionally with some attributes ("a photo of a gilatu.", "a gilatu, green with
      stripes"). `name_rate` is a long tail from 0.8 down to 0.08, dealt out in rank pairs so that base and
      novel get the same spread: some names are famous, some are rare, and the base/novel split itself
      carries no frequency signal, as with a real benchmark's alphabetical split. Zero-shot by name is then
      good for famous names and weak for rare ones, which is where attribute descriptions add information.
      Novel classes gain from attributes more than base classes only because prompt learning sees base
      labels (it can repair a rare base name, not a rare novel one), which is the effect SemPT claims.
      `novel_name_scale` < 1 makes novel names rarer still, for experiments only.
    * Caption noise: mentioned attributes are random subsets (dropped attributes are the norm), about 10 %
      of attribute-bearing captions carry one wrong value, and 5 % of name captions use the name of the
      nearest other class (a mislabel on the web).
    Captions use a small, simple vocabulary; invented names split into sub-word tokens, which is fine.

Attribute descriptions (`demo_attribute_descriptions`): what an LLM would write from the ground truth,
    S short descriptions per class over different subsets of its true values, in varied phrasing, now and
    then a vague one. They never contain the class name.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sempt_cli.data import demo_render
from sempt_cli.data.demo_render import (
    ATTRIBUTES,
    CORPUS_STREAM,
    IMAGES_PER_CLASS,
    DemoClass,
    DemoWorld,
    build_world,
    hamming,
    image_rng,
    render_attributes,
    render_class_image,
)
from sempt_cli.errors import DatasetError
from sempt_cli.io import atomic_write_json, stable_hash

__all__ = [
    "ATTRIBUTES",
    "GENERATOR_VERSION",
    "IMAGES_PER_CLASS",
    "CorpusSample",
    "DemoClass",
    "DemoWorld",
    "build_world",
    "check_world",
    "demo_attribute_descriptions",
    "demo_world",
    "ensure_demo_world",
    "generate_pretraining_corpus",
    "generate_pretraining_samples",
    "generator_hash",
    "hamming",
    "load_demo_world",
    "name_mentions",
    "nearest_neighbours",
    "render_attributes",
    "render_class_image",
]

GENERATOR_VERSION = 1
"""Bump when the files written here change in a way the render-module hash does not see."""

DATASET_FOLDER = "demo"
IMAGE_DIR = "images"
SPLIT_FILE = "split_zhou_Demo.json"
WORLD_FILE = "world.json"
CACHE_SUBDIR = "demo-world"
_STALE_TMP_SECONDS = 3600


@lru_cache(maxsize=1)
def demo_world() -> DemoWorld:
    """The canonical demo world (fixed classes and names)."""
    return build_world()


def check_world(world: DemoWorld) -> list[str]:
    """Violations of the benchmark's constraints, as sentences; empty when the world is valid."""
    problems: list[str] = []
    names = world.classnames
    if len(names) % 2:
        problems.append(f"{len(names)} classes is not an even number")
    if len(set(names)) != len(names):
        problems.append("class names are not unique")
    combos = [tuple(sorted(c.attributes.items())) for c in world.classes]
    if len(set(combos)) != len(combos):
        problems.append("two classes share an attribute combination")
    base = {tuple(sorted(c.attributes.items())) for c in world.base_classes}
    for c in world.novel_classes:
        if tuple(sorted(c.attributes.items())) in base:
            problems.append(f"novel class {c.name} repeats a base combination")
    for dim, values in world.attributes.items():
        for value in values:
            for half, classes in (("base", world.base_classes), ("novel", world.novel_classes)):
                if not any(c.attributes.get(dim) == value for c in classes):
                    problems.append(f"{dim}={value} never occurs among the {half} classes")
    words = {w for values in world.attributes.values() for v in values for w in v.split()}
    for name in names:
        problems += [f"class name {name} contains the attribute word {w!r}" for w in words if w in name]
    return problems


# ------------------------------------------------------------------------------------------ on disk


def _source_digest() -> str:
    """Hash of the renderer's and class list's source, so editing either regenerates the world."""
    return hashlib.sha256(Path(demo_render.__file__).read_bytes()).hexdigest()


def generator_hash(size: int = 48, seed: int = 0, world: DemoWorld | None = None) -> str:
    """The cache key of a generated world: generator version, renderer source, parameters, ground truth."""
    world = world or demo_world()
    return stable_hash(GENERATOR_VERSION, _source_digest(), size, seed, IMAGES_PER_CLASS, world.to_dict())


def _split_of(index: int) -> str:
    n_train, n_val = IMAGES_PER_CLASS["train"], IMAGES_PER_CLASS["val"]
    return "train" if index < n_train else "val" if index < n_train + n_val else "test"


def _write_world(target: Path, world: DemoWorld, size: int, seed: int, digest: str) -> None:
    """Write the whole dataset folder under `target` (a private temporary folder)."""
    dataset = target / DATASET_FOLDER
    splits: dict[str, list[list[Any]]] = {"train": [], "val": [], "test": []}
    total = sum(IMAGES_PER_CLASS.values())
    for label, cls in enumerate(world.classes):
        folder = dataset / IMAGE_DIR / cls.name
        folder.mkdir(parents=True)
        for index in range(total):
            image = render_class_image(world, label, index, seed=seed, size=size)
            filename = f"{cls.name}_{index:04d}.png"
            Image.fromarray(image).save(folder / filename, format="PNG")
            splits[_split_of(index)].append([f"{cls.name}/{filename}", label, cls.name])
    atomic_write_json(dataset / SPLIT_FILE, splits, indent=4)
    facts = {
        "name": "sempt demo world",
        "note": "Procedurally generated; not a substitute for the real benchmarks.",
        "generator": {
            "version": GENERATOR_VERSION,
            "hash": digest,
            "render_source_sha256": _source_digest(),
            "size": size,
            "seed": seed,
            "images_per_class": dict(IMAGES_PER_CLASS),
        },
        **world.to_dict(),
        "base": [c.name for c in world.base_classes],
        "novel": [c.name for c in world.novel_classes],
    }
    atomic_write_json(dataset / WORLD_FILE, facts)  # written last: its presence marks a complete folder


def _is_complete(root: Path, digest: str) -> bool:
    try:
        facts = json.loads((root / DATASET_FOLDER / WORLD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return facts.get("generator", {}).get("hash") == digest and (root / DATASET_FOLDER / SPLIT_FILE).is_file()


def _remove_stale_temporaries(parent: Path) -> None:
    """Delete temporary folders left by interrupted runs (older than an hour, so never a live one)."""
    now = time.time()
    for entry in parent.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)


def ensure_demo_world(cache_dir: Path, *, size: int = 48, seed: int = 0) -> Path:
    """Generate the demo world under `cache_dir` unless already there; return the data root.

    The data root is the folder containing `demo/`, so `load_dataset("demo", root)` reads it. Generation goes
    into a private temporary folder that is renamed into place when complete, so an interrupted run never
    leaves a half-written world, and concurrent runs agree on one result. About 10 s for the default size.
    """
    if size < 32:
        raise DatasetError(f"Demo images must be at least 32 pixels a side, not {size}.")
    world = demo_world()
    digest = generator_hash(size, seed, world)
    parent = Path(cache_dir).expanduser().resolve() / CACHE_SUBDIR
    final = parent / digest
    if _is_complete(final, digest):
        return final
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(parent)
        if _is_complete(final, digest):  # another process finished meanwhile
            return final
        if final.exists():  # damaged by hand (files deleted): move it aside before regenerating
            trash = parent / f".tmp-damaged-{uuid.uuid4().hex}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp = parent / f".tmp-{digest}-{uuid.uuid4().hex}"
        try:
            _write_world(tmp, world, size, seed, digest)
            try:
                os.replace(tmp, final)
            except OSError:
                if not _is_complete(final, digest):  # not a concurrent winner: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise DatasetError(
            f"Could not write the demo world under {parent}: {exc.strerror or exc}.",
            hint="Set a writable cache directory (settings `cache_dir`).",
        ) from exc
    return final


def load_demo_world(root: Path) -> DemoWorld:
    """The ground truth stored next to a generated world (`<root>/demo/world.json`)."""
    path = Path(root) / DATASET_FOLDER / WORLD_FILE
    try:
        return DemoWorld.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(
            f"Demo world ground truth {path} is missing or unreadable.", hint="Run `sempt data demo` to regenerate it."
        ) from exc


# --------------------------------------------------------------------------------------------- phrasing

_PATTERN_NOUN = {
    "solid": "one solid color",
    "striped": "stripes",
    "dotted": "dots",
    "checkered": "a checker pattern",
    "ringed": "rings",
}
_BACKGROUND_PHRASE = {
    "dark": ("on a dark background", "on black"),
    "white": ("on a white background", "on white"),
    "sandy": ("on a sandy background", "on sand"),
    "grassy": ("on a grassy background", "on grass"),
}


def _noun_phrase(values: Mapping[str, str], rng: random.Random) -> str:
    """'small red striped circle on sand' from any subset of attribute values (no article)."""
    words = [values[d] for d in ("size", "color") if d in values]
    pattern_as_noun = "pattern" in values and rng.random() < 0.4
    if "pattern" in values and not pattern_as_noun:
        words.append(values["pattern"])
    words.append(values.get("shape", "shape"))
    phrase = " ".join(words)
    if pattern_as_noun:
        phrase += f" with {_PATTERN_NOUN[values['pattern']]}"
    if "background" in values:
        phrase += " " + rng.choice(_BACKGROUND_PHRASE[values["background"]])
    return phrase


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _subset(attributes: Mapping[str, str], k: int, rng: random.Random) -> dict[str, str]:
    dims = rng.sample(list(attributes), k)
    return {d: attributes[d] for d in ATTRIBUTES if d in dims}


# ------------------------------------------------------------------------------------ pre-training corpus


@dataclass(frozen=True, eq=False)
class CorpusSample:
    """One pre-training pair plus the facts behind it (for tests and analysis; training needs two fields)."""

    image: np.ndarray
    caption: str
    attributes: dict[str, str]
    classname: str | None
    """The benchmark class whose combination the image shows, if any."""
    named: str | None
    """The class name the caption mentions, if any (differs from `classname` under name noise)."""
    noise: str
    """"" or what is wrong with the caption: "wrong-attribute" or "wrong-name"."""


def _attribute_caption(values: Mapping[str, str], rng: random.Random) -> str:
    phrase = _noun_phrase(values, rng)
    style = rng.random()
    if style < 0.3:
        return f"a photo of {_article(phrase)}."
    if style < 0.6:
        return _article(phrase)
    if style < 0.8:
        return phrase
    return f"a picture of {_article(phrase)}"


def _named_caption(name: str, values: Mapping[str, str], rng: random.Random) -> str:
    if not values:
        return rng.choice((f"a photo of a {name}.", f"a {name}.", name, f"a picture of a {name}."))
    phrase = _noun_phrase(values, rng)
    templates = (
        f"a photo of a {name}, {_article(phrase)}.",
        f"a {name}, {phrase}",
        f"{_article(phrase)} called a {name}",
        f"{name}: {_article(phrase)}",
    )
    if "color" in values and "pattern" in values and rng.random() < 0.4:
        return f"a {name}, {values['color']} with {_PATTERN_NOUN[values['pattern']]}"
    return rng.choice(templates)


def _corrupt(values: dict[str, str], rng: random.Random) -> dict[str, str]:
    """Replace one mentioned value by a wrong one."""
    dim = rng.choice(list(values))
    wrong = dict(values)
    wrong[dim] = rng.choice([v for v in ATTRIBUTES[dim] if v != values[dim]])
    return wrong


def generate_pretraining_samples(
    n: int,
    seed: int = 0,
    size: int = 48,
    *,
    start: int = 0,
    class_fraction: float = 0.5,
    attribute_noise: float = 0.1,
    name_noise: float = 0.05,
    novel_name_scale: float = 1.0,
    world: DemoWorld | None = None,
    render: bool = True,
) -> list[CorpusSample]:
    """Samples `start .. start+n-1` of the pre-training corpus for `seed` (see the module docstring).

    Sample i depends only on (seed, i, size, options), so a corpus can be made in chunks or in parallel
    and any prefix is the same. Images are uint8 arrays (size, size, 3): about 7 KB each at 48 px; with
    `render=False` they are empty arrays (the captions, drawn from their own stream, are the same), which is
    how `name_mentions` counts a corpus in a second.
    """
    world = world or demo_world()
    classes = world.classes
    novel = {c.name for c in world.novel_classes}
    neighbour = {
        c.name: min((o for o in classes if o is not c), key=lambda o: hamming(c.attributes, o.attributes)).name
        for c in classes
    }
    by_combo = {tuple(c.attributes[d] for d in ATTRIBUTES): c.name for c in classes}
    samples: list[CorpusSample] = []
    for i in range(start, start + n):
        rng = random.Random(f"{seed}-caption-{i}")
        cls: DemoClass | None = None
        if rng.random() < class_fraction:
            cls = classes[rng.randrange(len(classes))]
            attributes = dict(cls.attributes)
        else:
            attributes = {d: rng.choice(values) for d, values in ATTRIBUTES.items()}
        classname = by_combo.get(tuple(attributes[d] for d in ATTRIBUTES))
        rate = 0.0
        if cls is not None:
            rate = world.name_rates.get(cls.name, 0.3) * (novel_name_scale if cls.name in novel else 1.0)
        named: str | None = None
        noise = ""
        if cls is not None and rng.random() < rate:
            named = cls.name
            if rng.random() < name_noise:
                named, noise = neighbour[cls.name], "wrong-name"
            mentioned = _subset(attributes, rng.choice((0, 0, 1, 2, 2, 3)), rng)
        else:
            mentioned = _subset(attributes, rng.choices((1, 2, 3, 4, 5), (10, 25, 30, 20, 15))[0], rng)
        if mentioned and not noise and rng.random() < attribute_noise:
            mentioned, noise = _corrupt(mentioned, rng), "wrong-attribute"
        caption = _named_caption(named, mentioned, rng) if named else _attribute_caption(mentioned, rng)
        image = (render_attributes(attributes, image_rng(seed, CORPUS_STREAM, 0, i), size) if render
                 else np.zeros((0, 0, 3), dtype=np.uint8))
        samples.append(CorpusSample(image, caption, attributes, classname, named, noise))
    return samples


def generate_pretraining_corpus(n: int, seed: int = 0, size: int = 48, **options: Any) -> list[tuple[np.ndarray, str]]:
    """`n` (image, caption) pairs for contrastive pre-training; options as `generate_pretraining_samples`."""
    return [(s.image, s.caption) for s in generate_pretraining_samples(n, seed, size, **options)]


def name_mentions(n: int, seed: int = 0) -> dict[str, int]:
    """How many captions of the first `n` corpus samples (seed `seed`) spell each class name: how often the
    demo CLIPs saw it during pre-training (for the per-class analysis of `sempt eval --per-class`)."""
    counts = {c.name: 0 for c in demo_world().classes}
    for sample in generate_pretraining_samples(n, seed, render=False):
        if sample.named is not None:
            counts[sample.named] += 1
    return counts


def nearest_neighbours(world: DemoWorld | None = None) -> dict[str, tuple[int, list[str]]]:
    """Per class: the fewest attributes in which another class differs from it, and those closest classes
    (a class one attribute away from another can be told apart only by that attribute)."""
    world = world or demo_world()
    out = {}
    for c in world.classes:
        others = [(hamming(c.attributes, o.attributes), o.name) for o in world.classes if o is not c]
        closest = min(d for d, _ in others)
        out[c.name] = (closest, [name for d, name in others if d == closest])
    return out


# ------------------------------------------------------------------------------- attribute descriptions

_VAGUE = (
    "a simple geometric figure",
    "a shape that stands out from the background",
    "something {color} that catches the eye",
    "a familiar {shape} form",
)


def _description(values: Mapping[str, str], rng: random.Random) -> str:
    """One LLM-style phrase about the given true values (2-5 of them)."""
    options = [_article(_noun_phrase(values, rng))]
    noun = " ".join(values[d] for d in ("size", "shape") if d in values) if "shape" in values else ""
    noun = noun or " ".join([*(values[d] for d in ("size",) if d in values), "shape"])
    if "color" in values and "pattern" in values:
        options.append(f"{_article(noun)} that is {values['color']} with {_PATTERN_NOUN[values['pattern']]}")
        colored = " ".join(v for v in (values.get("size"), values["color"], values.get("shape", "shape")) if v)
        options.append(f"{_article(colored)} covered in {_PATTERN_NOUN[values['pattern']]}")
    if "background" in values and len(values) > 1:
        others = {d: v for d, v in values.items() if d != "background"}
        options.append(
            f"{_article(_noun_phrase(others, rng))}, usually seen {_BACKGROUND_PHRASE[values['background']][0]}"
        )
    adjectives = [values[d] for d in ("size", "color", "pattern") if d in values]
    if "shape" in values and len(adjectives) >= 2:
        options.append(f"its {values['shape']} shape is {', '.join(adjectives[:-1])} and {adjectives[-1]}")
    return rng.choice(options)


def demo_attribute_descriptions(
    world: DemoWorld | None = None, num_descriptions: int = 6, seed: int = 0
) -> dict[str, list[str]]:
    """For every class, `num_descriptions` distinct short descriptions built from its TRUE attribute values.

    Each description covers a different subset of 2-5 attributes (as SemPT's step 2 asks an LLM to do);
    about one class in four gets one vague description mentioning a single value or none, as LLMs produce.
    Deterministic in (world, num_descriptions, seed)."""
    world = world or demo_world()
    dims = list(world.attributes)
    subsets = [c for k in (2, 3, 4, 5) for c in itertools.combinations(dims, k)]
    if not 1 <= num_descriptions <= len(subsets):
        raise ValueError(f"num_descriptions must be between 1 and {len(subsets)}")
    out: dict[str, list[str]] = {}
    for label, cls in enumerate(world.classes):
        rng = random.Random(f"{seed}-describe-{label}")
        texts: list[str] = []
        if num_descriptions > 2 and rng.random() < 0.25:
            texts.append(rng.choice(_VAGUE).format(**cls.attributes))
        for subset in _weighted_subsets(subsets, rng):
            if len(texts) == num_descriptions:
                break
            text = _description({d: cls.attributes[d] for d in subset}, rng)
            if text not in texts:
                texts.append(text)
        out[cls.name] = texts
    return out


def _weighted_subsets(subsets: Sequence[tuple[str, ...]], rng: random.Random) -> list[tuple[str, ...]]:
    """All subsets in random order, mid-sized ones (3 attributes) first more often, like concise LLM text."""
    return sorted(subsets, key=lambda s: rng.random() + 0.35 * abs(len(s) - 3))
