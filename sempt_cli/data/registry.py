"""The datasets sempt knows: the benchmarks with the facts of their CoOp/Dassl on-disk layout, and the
user's own folders registered with `sempt data add` (`sempt_cli.data.user`).

This module is pure metadata (no torch, no image I/O) so that settings validation and `sempt data list`
stay instant. Readers live in `sempt_cli.data.readers`. A registered dataset is described by the same
`DatasetInfo` as a benchmark (an absolute folder and split file, the CoOp split-JSON reader), so every command
reads it through the same code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from sempt_cli.data.user import UserEntry, dassl_name, user_entries

ReaderKind = Literal["json_split", "fgvc_aircraft", "imagenet", "imagenetv2", "wnid_folders"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a user must have on disk for one dataset, and what the reader can expect to find."""

    key: str
    display_name: str
    dassl_name: str
    folder: str
    image_dir: str
    num_classes: int
    split_file: str | None = None
    test_only: bool = False
    sizes: tuple[int, int, int] | None = None
    template: str = "a photo of a {}."
    download: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    reader: ReaderKind = "json_split"
    """Which on-disk layout `sempt_cli.data.readers` expects (split JSON unless stated otherwise)."""
    bundled_classnames: str | None = None
    """File in `sempt_cli/data/classnames/` with the names in label order (a verification aid and the
    fallback for the ImageNet family's `classnames.txt`)."""
    wnid_subset: str | None = None
    """For ImageNet-A/R: the bundled table of the 200 wnids the dataset must contain."""
    domain: str | None = None
    """What the classes are, in words, for a registered dataset (`data add --domain`; the LLM prompts' `$domain`)."""
    classnames: tuple[str, ...] = ()
    """A registered dataset's class names in label order (benchmarks ship theirs as files instead)."""
    registered: bool = False
    """True for a dataset added with `sempt data add` (its `folder` and `split_file` are absolute paths)."""
    split_sha256: str | None = None
    """For a registered dataset: the sha256 its split file had when `data add` wrote it."""

    def dataset_dir(self, data_root: Path) -> Path:
        """Where this dataset's folder must be under the data root."""
        return Path(data_root) / self.folder

    def image_root(self, data_root: Path) -> Path:
        """The folder split-file paths are relative to (the dataset folder itself for StanfordCars)."""
        base = self.dataset_dir(data_root)
        return base / self.image_dir if self.image_dir else base


_CLASSNAMES_FROM_IMAGENET = "copy classnames.txt from the ImageNet folder (or let sempt use its bundled copy)"

DEMO_KEY = "demo"
"""The built-in, procedurally generated demo world (`sempt_cli.data.demo`); it needs no download.

It is written in the CoOp JSON-split layout under the cache dir and read by the same reader as the real
datasets; its root is resolved by `sempt_cli.data.demo`, not the user's data root."""

DATASETS: dict[str, DatasetInfo] = {
    info.key: info
    for info in (
        DatasetInfo(
            DEMO_KEY, "Demo world", "Demo", "demo", "images", 40,
            split_file="split_zhou_Demo.json",
            download="nothing: it is generated on first use (`sempt data demo`)",
        ),
        DatasetInfo(
            "imagenet", "ImageNet", "ImageNet", "imagenet", "images", 1000,
            sizes=(1281167, 50000, 50000),
            download="ILSVRC2012 train/val from image-net.org into imagenet/images/{train,val}/<wnid>/ "
            "(val re-arranged into wnid folders) plus imagenet/classnames.txt",
            reader="imagenet", bundled_classnames="imagenet_classnames.txt",
        ),
        DatasetInfo(
            "caltech101", "Caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", 100,
            split_file="split_zhou_Caltech101.json", sizes=(4128, 1649, 2465),
            download="101_ObjectCategories.tar.gz (data.caltech.edu) extracted into caltech-101/, plus "
            "split_zhou_Caltech101.json from CoOp's Google Drive",
            bundled_classnames="caltech101.txt",
        ),
        DatasetInfo(
            "oxford_pets", "OxfordPets", "OxfordPets", "oxford_pets", "images", 37,
            split_file="split_zhou_OxfordPets.json", sizes=(2944, 736, 3669),
            template="a photo of a {}, a type of pet.",
            download="images.tar.gz and annotations.tar.gz (robots.ox.ac.uk/~vgg/data/pets) into "
            "oxford_pets/, plus split_zhou_OxfordPets.json from CoOp's Google Drive",
            aliases=("pets",),
            bundled_classnames="oxford_pets.txt",
        ),
        DatasetInfo(
            "stanford_cars", "StanfordCars", "StanfordCars", "stanford_cars", "", 196,
            split_file="split_zhou_StanfordCars.json", sizes=(6509, 1635, 8041),
            download="cars_train/ and cars_test/ (Stanford Cars) into stanford_cars/, plus "
            "split_zhou_StanfordCars.json from CoOp's Google Drive",
            aliases=("cars",),
            bundled_classnames="stanford_cars.txt",
        ),
        DatasetInfo(
            "oxford_flowers", "Flowers102", "OxfordFlowers", "oxford_flowers", "jpg", 102,
            split_file="split_zhou_OxfordFlowers.json", sizes=(4093, 1633, 2463),
            template="a photo of a {}, a type of flower.",
            download="102flowers.tgz (robots.ox.ac.uk/~vgg/data/flowers/102) extracted to "
            "oxford_flowers/jpg/, plus cat_to_name.json and split_zhou_OxfordFlowers.json from CoOp's "
            "Google Drive",
            aliases=("flowers102", "flowers"),
            bundled_classnames="oxford_flowers.txt",
        ),
        DatasetInfo(
            "food101", "Food101", "Food101", "food-101", "images", 101,
            split_file="split_zhou_Food101.json", sizes=(50500, 20200, 30300),
            template="a photo of {}, a type of food.",
            download="food-101.tar.gz (data.vision.ee.ethz.ch) extracted to food-101/, plus "
            "split_zhou_Food101.json from CoOp's Google Drive",
            bundled_classnames="food101.txt",
        ),
        DatasetInfo(
            "fgvc_aircraft", "FGVCAircraft", "FGVCAircraft", "fgvc_aircraft", "images", 100,
            sizes=(3334, 3333, 3333),
            template="a photo of a {}, a type of aircraft.",
            download="fgvc-aircraft-2013b.tar.gz (robots.ox.ac.uk/~vgg/data/fgvc-aircraft); move its data/ "
            "folder to fgvc_aircraft/",
            aliases=("aircraft",),
            reader="fgvc_aircraft", bundled_classnames="fgvc_aircraft.txt",
        ),
        DatasetInfo(
            "sun397", "SUN397", "SUN397", "sun397", "SUN397", 397,
            split_file="split_zhou_SUN397.json", sizes=(15880, 3970, 19850),
            download="SUN397.tar.gz (vision.princeton.edu) extracted to sun397/SUN397/, plus "
            "split_zhou_SUN397.json from CoOp's Google Drive",
            bundled_classnames="sun397.txt",
        ),
        DatasetInfo(
            "dtd", "DTD", "DescribableTextures", "dtd", "images", 47,
            split_file="split_zhou_DescribableTextures.json", sizes=(2820, 1128, 1692),
            template="{} texture.",
            download="dtd-r1.0.1.tar.gz (robots.ox.ac.uk/~vgg/data/dtd) extracted to dtd/, plus "
            "split_zhou_DescribableTextures.json from CoOp's Google Drive",
            aliases=("describabletextures",),
            bundled_classnames="dtd.txt",
        ),
        DatasetInfo(
            "eurosat", "EuroSAT", "EuroSAT", "eurosat", "2750", 10,
            split_file="split_zhou_EuroSAT.json", sizes=(13500, 5400, 8100),
            template="a centered satellite photo of {}.",
            download="EuroSAT.zip (RGB, github.com/phelber/eurosat) extracted to eurosat/2750/, plus "
            "split_zhou_EuroSAT.json from CoOp's Google Drive",
            bundled_classnames="eurosat.txt",
        ),
        DatasetInfo(
            "ucf101", "UCF101", "UCF101", "ucf101", "UCF-101-midframes", 101,
            split_file="split_zhou_UCF101.json", sizes=(7639, 1898, 3783),
            template="a photo of a person doing {}.",
            download="UCF-101-midframes.zip and split_zhou_UCF101.json from CoOp's Google Drive, "
            "extracted to ucf101/",
            bundled_classnames="ucf101.txt",
        ),
        DatasetInfo(
            "imagenetv2", "ImageNet-V2", "ImageNetV2", "imagenetv2",
            "imagenetv2-matched-frequency-format-val", 1000, test_only=True, sizes=(0, 0, 10000),
            download="imagenetv2-matched-frequency.tar.gz (github.com/modestyachts/ImageNetV2) extracted to "
            f"imagenetv2/; {_CLASSNAMES_FROM_IMAGENET}",
            aliases=("imagenet_v2",),
            reader="imagenetv2", bundled_classnames="imagenet_classnames.txt",
        ),
        DatasetInfo(
            "imagenet_sketch", "ImageNet-Sketch", "ImageNetSketch", "imagenet-sketch", "images", 1000,
            test_only=True, sizes=(0, 0, 50889),
            download="ImageNet-Sketch (github.com/HaohanWang/ImageNet-Sketch) with its class folders under "
            f"imagenet-sketch/images/; {_CLASSNAMES_FROM_IMAGENET}",
            reader="wnid_folders", bundled_classnames="imagenet_classnames.txt",
        ),
        DatasetInfo(
            "imagenet_a", "ImageNet-A", "ImageNetA", "imagenet-adversarial", "imagenet-a", 200,
            test_only=True, sizes=(0, 0, 7500),
            download="imagenet-a.tar (github.com/hendrycks/natural-adv-examples) extracted to "
            f"imagenet-adversarial/imagenet-a/; {_CLASSNAMES_FROM_IMAGENET}",
            reader="wnid_folders", bundled_classnames="imagenet_classnames.txt",
            wnid_subset="imagenet_a_subset.tsv",
        ),
        DatasetInfo(
            "imagenet_r", "ImageNet-R", "ImageNetR", "imagenet-rendition", "imagenet-r", 200,
            test_only=True, sizes=(0, 0, 30000),
            download="imagenet-r.tar (github.com/hendrycks/imagenet-r) extracted to "
            f"imagenet-rendition/imagenet-r/; {_CLASSNAMES_FROM_IMAGENET}",
            reader="wnid_folders", bundled_classnames="imagenet_classnames.txt",
            wnid_subset="imagenet_r_subset.tsv",
        ),
    )
}


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


_LOOKUP: dict[str, str] = {}
for _info in DATASETS.values():
    for _name in (_info.key, _info.dassl_name, _info.display_name, _info.folder, *_info.aliases):
        _LOOKUP[_normalise(_name)] = _info.key


def benchmark_name(name: str) -> str | None:
    """The benchmark (or demo world) key `name` spells, or None: user datasets may not take these names."""
    return _LOOKUP.get(_normalise(name))


def _user_info(entry: UserEntry) -> DatasetInfo:
    return DatasetInfo(
        entry.name, entry.name, dassl_name(entry.name), str(entry.image_root), "", len(entry.classnames),
        split_file=str(entry.split_file), sizes=entry.sizes, template=entry.template,
        download=f"registered with `sempt data add` from {entry.source}; register it again if it moved",
        domain=entry.domain, classnames=entry.classnames, registered=True, split_sha256=entry.split_sha256,
    )


def user_datasets() -> dict[str, DatasetInfo]:
    """The datasets registered with `sempt data add`, by name."""
    return {name: _user_info(entry) for name, entry in user_entries().items()}


def all_datasets() -> dict[str, DatasetInfo]:
    """The benchmarks (demo world first), then the registered datasets."""
    return {**DATASETS, **user_datasets()}


def dataset_names() -> list[str]:
    """Canonical keys of every supported dataset, the demo world first, registered datasets last."""
    return list(all_datasets())


def canonical_dataset_name(name: str) -> str | None:
    """Map any common spelling ("OxfordFlowers", "flowers102", "ImageNet-V2"), a registered name, or the folder
    or manifest a dataset was registered from (`--dataset ~/data/birds` after `data add birds ~/data/birds`) to
    its key, or None."""
    key = benchmark_name(name)
    if key is not None:
        return key
    entries = user_entries()
    wanted = _normalise(name)
    named = next((user for user in entries if _normalise(user) == wanted), None)
    if named is not None or not name.strip():
        return named
    path = os.path.abspath(os.path.expanduser(name))
    return next((user for user, entry in entries.items() if entry.source == path), None)


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry entry for any accepted spelling of a dataset name; KeyError if unknown."""
    key = canonical_dataset_name(name)
    if key is None:
        raise KeyError(name)
    return DATASETS[key] if key in DATASETS else user_datasets()[key]


def read_bundled_text(filename: str) -> str:
    """Text of a file shipped in `sempt_cli/data/classnames/` (works from wheels and zip imports)."""
    folder = resources.files("sempt_cli.data").joinpath("classnames")
    return folder.joinpath(filename).read_text(encoding="utf-8")


def bundled_classnames(name: str) -> list[str] | None:
    """The shipped class-name list of a dataset in label order (underscores kept), or None if none ships.

    For the ImageNet family this is the 1000 CLIP names; for ImageNet-A/R the 200 names of the subset.
    """
    info = get_dataset_info(name)
    if info.wnid_subset is not None:
        return [row[2] for row in bundled_wnid_subset(info.key)]
    if info.bundled_classnames is None:
        return None
    if info.bundled_classnames == "imagenet_classnames.txt":
        return list(bundled_imagenet_classnames().values())
    return [line for line in read_bundled_text(info.bundled_classnames).splitlines() if line.strip()]


@cache
def _imagenet_classnames() -> tuple[tuple[str, str], ...]:
    pairs = []
    for line in read_bundled_text("imagenet_classnames.txt").splitlines():
        if line.strip():
            wnid, _, classname = line.strip().partition(" ")
            pairs.append((wnid, classname))
    return tuple(pairs)


def bundled_imagenet_classnames() -> dict[str, str]:
    """wnid -> CLIP class name for the 1000 ImageNet classes, in sorted-wnid (= label) order."""
    return dict(_imagenet_classnames())


@cache
def _wnid_subset(filename: str) -> tuple[tuple[str, int, str], ...]:
    rows = []
    for line in read_bundled_text(filename).splitlines()[1:]:
        if line.strip():
            _label, wnid, index, classname = line.split("\t")
            rows.append((wnid, int(index), classname))
    return tuple(rows)


def bundled_wnid_subset(name: str) -> list[tuple[str, int, str]]:
    """(wnid, ImageNet-1k index, CLIP name) for the 200 classes of ImageNet-A or -R, in label order.

    The 1k indices let a 1000-way classifier be scored on these datasets (`logits[:, indices]`), which is
    equivalent to the Dassl 200-way classifier for text-prompted CLIP heads.
    """
    info = get_dataset_info(name)
    if info.wnid_subset is None:
        raise KeyError(f"{info.key} is not an ImageNet subset dataset")
    return list(_wnid_subset(info.wnid_subset))


def label_space(name: str) -> str:
    """The dataset whose classes `name`'s labels are: "imagenet" for the ImageNet family (-V2, -Sketch, -A, -R),
    the dataset itself otherwise. Knowledge per class (seen classes, attribute files) is shared within a space."""
    key = canonical_dataset_name(name) or name
    return "imagenet" if key in DATASETS and imagenet_rows(key) is not None else key


def imagenet_rows(name: str) -> list[int] | None:
    """For a dataset of the ImageNet family (ImageNet, -V2, -Sketch, -A, -R): the ImageNet-1k label of each of
    its labels, so anything computed per ImageNet class serves it; None for every other dataset."""
    info = get_dataset_info(name)
    if info.bundled_classnames != "imagenet_classnames.txt":
        return None
    if info.wnid_subset is not None:
        return [index for _, index, _ in bundled_wnid_subset(info.key)]
    return list(range(len(bundled_imagenet_classnames())))


def all_classnames(name: str) -> list[str]:
    """Every class of a dataset in label order without touching images: the shipped list, or the demo world's
    (which is defined by code, not by files)."""
    key = canonical_dataset_name(name)
    if key == DEMO_KEY:
        from sempt_cli.data.demo import demo_world

        return [c.name for c in demo_world().classes]
    info = get_dataset_info(name)
    if info.registered:
        return list(info.classnames)
    names = bundled_classnames(name)
    if names is None:  # pragma: no cover - every registered dataset ships its list
        raise KeyError(f"sempt ships no class-name list for {name}")
    return names
