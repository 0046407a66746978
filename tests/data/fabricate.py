"""Tiny, layout-exact copies of the 15 CoOp/Dassl benchmark datasets, for tests.

Each builder writes the real folder names, real class names (from `sempt_cli/data/classnames/`, ImageNet
wnids included) and real class counts, with only a few 8x8 images per class so that a whole tree costs well
under a second. Split JSONs are written the way CoOp writes them (indent 4, `[relpath, label, classname]`).

`fabricate_dataset(name, root, per_class=(train, val, test))` returns `root` (the data root to pass to
`load_dataset`). For ImageNet `val` is ignored (its val is the test set = `images/val`); for the test-only
variants only `test` is used.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image

from sempt_cli.data.registry import (
    bundled_classnames,
    bundled_imagenet_classnames,
    bundled_wnid_subset,
    get_dataset_info,
)

BENCHMARKS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
    "imagenetv2",
    "imagenet_sketch",
    "imagenet_a",
    "imagenet_r",
)
JSON_SPLIT = (
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
TEST_ONLY = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
UNSORTED_TRAIN = ("oxford_flowers", "stanford_cars")
"""The two official split JSONs whose lists are not label-sorted (spec §1.2)."""

CALTECH_FOLDERS = {"face": "Faces", "leopard": "Leopards", "motorbike": "Motorbikes", "airplane": "airplanes"}
EUROSAT_FOLDERS = {
    "Annual Crop Land": "AnnualCrop",
    "Forest": "Forest",
    "Herbaceous Vegetation Land": "HerbaceousVegetation",
    "Highway or Road": "Highway",
    "Industrial Buildings": "Industrial",
    "Pasture Land": "Pasture",
    "Permanent Crop Land": "PermanentCrop",
    "Residential Buildings": "Residential",
    "River": "River",
    "Sea or Lake": "SeaLake",
}
Row = tuple[str, int, str]


@cache
def _image_bytes(variant: int, fmt: str) -> bytes:
    """A deterministic 8x8 image (a few distinct ones are enough; files are copies of these bytes)."""
    rng = random.Random(variant)
    image = Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3)))
    image.putpixel((variant % 8, 3), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, variant: int = 0) -> None:
    """Write a tiny valid image; PNG for `.png`, JPEG for anything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_image_bytes(variant % 8, "PNG" if path.suffix.lower() == ".png" else "JPEG"))


def write_corrupt_image(path: Path) -> None:
    """A file with an image extension whose content no decoder accepts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")


def write_split_json(path: Path, data: Any) -> None:
    """CoOp's writer format: `json.dump(..., indent=4, separators=(",", ": "))`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=4, separators=(",", ": "))


def read_split_json(path: Path) -> dict[str, list[list[Any]]]:
    return json.loads(path.read_text(encoding="utf-8"))


def classnames_of(name: str) -> list[str]:
    names = bundled_classnames(name)
    assert names is not None, name
    return names


def sun_folder(classname: str) -> str:
    """`outdoor apartment_building` -> `a/apartment_building/outdoor` (inverse of CoOp's cleaning)."""
    parts = classname.split(" ")[::-1]
    return "/".join([parts[0][0], *parts])


def expected_sizes(name: str, per_class: tuple[int, int, int]) -> tuple[int, int, int]:
    """(train, val, test) sizes `load_dataset` must report for a tree built with `per_class`."""
    info = get_dataset_info(name)
    n = info.num_classes
    train, val, test = per_class
    if info.test_only:
        return 0, 0, test * n
    if info.key == "imagenet":
        return train * n, test * n, test * n
    return train * n, val * n, test * n


def _rel_path_builder(name: str) -> Callable[[str, int, str, int], str]:
    """(split, label, classname, running index) -> relative path as the split JSON stores it."""
    if name == "caltech101":
        return lambda _s, _y, c, i: f"{CALTECH_FOLDERS.get(c, c)}/image_{i:04d}.jpg"
    if name == "oxford_pets":
        return lambda _s, _y, c, i: f"{c[0].upper() + c[1:] if i % 2 else c}_{i}.jpg"
    if name == "stanford_cars":
        return lambda s, _y, _c, i: f"{'cars_test' if s == 'test' else 'cars_train'}/{i:05d}.jpg"
    if name == "oxford_flowers":
        return lambda _s, _y, _c, i: f"image_{i:05d}.jpg"
    if name == "food101":
        return lambda _s, _y, c, i: f"{c}/{100000 + i}.jpg"
    if name == "sun397":
        return lambda _s, _y, c, i: f"{sun_folder(c)}/sun_{i:08x}.jpg"
    if name == "dtd":
        return lambda _s, _y, c, i: f"{c}/{c}_{i:04d}.jpg"
    if name == "eurosat":
        return lambda _s, _y, c, i: f"{EUROSAT_FOLDERS[c]}/{EUROSAT_FOLDERS[c]}_{i}.jpg"
    if name == "ucf101":
        return lambda _s, _y, c, i: f"{c}/v_{c.replace('_', '')}_g{(i - 1) % 25 + 1:02d}_c{(i - 1) % 7 + 1:02d}.jpg"
    raise KeyError(name)


def _build_json_split(name: str, root: Path, per_class: tuple[int, int, int]) -> None:
    info = get_dataset_info(name)
    names = classnames_of(name)
    rel_path = _rel_path_builder(name)
    image_root = info.image_root(root)
    counter = 1
    data: dict[str, list[Row]] = {}
    for split, count in zip(("train", "val", "test"), per_class, strict=True):
        rows: list[Row] = []
        for label, classname in enumerate(names):
            for _ in range(count):
                rows.append((rel_path(split, label, classname, counter), label, classname))
                counter += 1
        if name in UNSORTED_TRAIN:
            random.Random(f"{name}-{split}").shuffle(rows)
        data[split] = rows
    for rows in data.values():
        for i, (rel, _label, _classname) in enumerate(rows):
            write_image(image_root / rel, i)
    if name == "caltech101":  # the two folders CoOp ignores exist in the real archive
        write_image(image_root / "BACKGROUND_Google" / "image_0001.jpg")
        write_image(image_root / "Faces_easy" / "image_0001.jpg")
    assert info.split_file is not None
    write_split_json(info.dataset_dir(root) / info.split_file, {k: [list(r) for r in v] for k, v in data.items()})


def _build_fgvc(root: Path, per_class: tuple[int, int, int]) -> None:
    info = get_dataset_info("fgvc_aircraft")
    folder = info.dataset_dir(root)
    names = classnames_of("fgvc_aircraft")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    counter = 1000001
    for split, count in zip(("train", "val", "test"), per_class, strict=True):
        lines = []
        for classname in names:
            for _ in range(count):
                lines.append(f"{counter:07d} {classname}\n")
                write_image(folder / "images" / f"{counter:07d}.jpg", counter)
                counter += 1
        (folder / f"images_variant_{split}.txt").write_text("".join(lines), encoding="utf-8")


def write_imagenet_classnames(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in bundled_imagenet_classnames().items()), encoding="utf-8")


def _build_imagenet_family(name: str, root: Path, per_class: tuple[int, int, int], write_classnames: bool) -> None:
    info = get_dataset_info(name)
    folder = info.dataset_dir(root)
    image_root = info.image_root(root)
    wnids = list(bundled_imagenet_classnames())
    train, _val, test = per_class
    counter = 1
    if name == "imagenet":
        for wnid in wnids:
            for i in range(train):
                write_image(image_root / "train" / wnid / f"{wnid}_{i + 1}.JPEG", i)
            for i in range(test):
                write_image(image_root / "val" / wnid / f"ILSVRC2012_val_{counter:08d}.JPEG", i)
                counter += 1
    elif name == "imagenetv2":
        for k in range(len(wnids)):
            for i in range(test):
                write_image(image_root / str(k) / f"{k:04d}{i:02d}deadbeef.jpeg", i)
    elif name == "imagenet_sketch":
        for wnid in wnids:
            for i in range(test):
                write_image(image_root / wnid / f"sketch_{i}.JPEG", i)
    else:
        for wnid, _index, _classname in bundled_wnid_subset(name):
            for i in range(test):
                write_image(image_root / wnid / f"{name}_{wnid}_{i}.jpg", i)
        (image_root / "README.txt").write_text("ImageNet-A/R readme\n", encoding="utf-8")
    if write_classnames:
        write_imagenet_classnames(folder / "classnames.txt")


def fabricate_dataset(
    name: str, root: Path, per_class: tuple[int, int, int] = (3, 2, 2), *, write_classnames: bool = True
) -> Path:
    """Build dataset `name` under data root `root` with `per_class` (train, val, test) images per class.

    `write_classnames=False` omits the ImageNet family's `classnames.txt` (to exercise the bundled
    fallback). Returns `root`.
    """
    key = get_dataset_info(name).key
    if key in JSON_SPLIT:
        _build_json_split(key, root, per_class)
    elif key == "fgvc_aircraft":
        _build_fgvc(root, per_class)
    elif key in ("imagenet", *TEST_ONLY):
        _build_imagenet_family(key, root, per_class, write_classnames)
    else:
        raise KeyError(f"no fabricator for {name!r}")
    return root


def write_unique_image(path: Path, index: int, size: int = 8) -> None:
    """A tiny PNG whose pixels encode `index`, so no two fabricated files share their content."""
    rng = random.Random(index)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    for bit in range(24):
        if index >> bit & 1:
            image.putpixel((bit % size, bit // size), (255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def fabricate_image_folder(root: Path, classes: dict[str, int], start: int = 0) -> Path:
    """An ImageFolder tree: `root/<class folder>/img_NN.png`, distinct images; returns `root`."""
    index = start
    for folder, count in classes.items():
        for i in range(count):
            write_unique_image(root / folder / f"img_{i:02d}.png", index)
            index += 1
    return root
