"""Readers for the CoOp/Dassl on-disk layouts of the 15 benchmarks and the demo world.

Why a reader per layout instead of a torchvision `ImageFolder`: the published numbers depend on the exact
label order and split membership fixed by CoOp's split files (`split_zhou_*.json`), by FGVC's official text
files and by the ImageNet family's wnid folders, and `ImageFolder` gets several of them wrong (ImageNet-V2's
folders are integers, Caltech101 drops two folders and renames four, ...). Everything here follows
`shared/spec/datasets.md` (§1.2, §2); pickled caches (`preprocessed.pkl`, `split_fewshot/*.pkl`) are never
read, because unpickling is unsafe and they freeze absolute paths.

Every problem is raised as a `DatasetError` whose message is one plain sentence naming the dataset, the file
and what is wrong; an absent dataset, split file or image folder is a `MissingDataError` whose hint says
where to get it and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from sempt_cli.data.records import DatasetSplits, Sample, prompt_name
from sempt_cli.data.registry import (
    DEMO_KEY,
    DatasetInfo,
    bundled_imagenet_classnames,
    bundled_wnid_subset,
    dataset_names,
    get_dataset_info,
)
from sempt_cli.errors import DatasetError

__all__ = [
    "MissingDataError",
    "absolute_root",
    "load_dataset",
    "prompt_name",
    "resolve_dataset",
]

SPLIT_KEYS = ("train", "val", "test")
IGNORED_TOP_LEVEL = frozenset({"README.txt"})
"""Entries of the ImageNet-A/R image folder that are not class folders (Dassl `TO_BE_IGNORED`)."""


class MissingDataError(DatasetError):
    """Something the user has to download or move into place is absent (folder, split or meta file)."""


def absolute_root(data_root: str | os.PathLike[str]) -> Path:
    """`~`-expanded, absolute, normalised data root, like Dassl's; symlinks are kept as the user wrote them."""
    return Path(os.path.abspath(os.path.expanduser(data_root)))


def resolve_dataset(name: str) -> DatasetInfo:
    """The registry entry for `name` (any accepted spelling), or a DatasetError listing the known keys."""
    try:
        return get_dataset_info(name)
    except KeyError:
        raise DatasetError(
            f"Unknown dataset {name!r}; choose one of {', '.join(dataset_names())}.",
            hint="Run `sempt data list` to see every dataset and its folder; register your own folder with "
            "`sempt data add NAME PATH`.",
        ) from None


def load_dataset(name: str, data_root: Path | str, *, check_files: bool = True) -> DatasetSplits:
    """Read one dataset from `data_root` in its CoOp/Dassl layout.

    `data_root` is the folder holding the dataset folders (CoOp's `$DATA`); it is expanded (`~`) and made
    absolute. With `check_files=True` every image listed by a split file must exist (Dassl asserts this
    too); the folder-scanned ImageNet family only lists files that exist, so the flag changes nothing there.
    """
    info = resolve_dataset(name)
    root = absolute_root(data_root)
    dataset_dir = info.dataset_dir(root)
    if not dataset_dir.is_dir():
        raise MissingDataError(
            f"Dataset {info.key}: folder {dataset_dir} does not exist.",
            hint=_where_hint(info, dataset_dir),
        )
    reader = _READERS[info.reader]
    return reader(info, root, check_files)


# --------------------------------------------------------------------------------------------- helpers


def _where_hint(info: DatasetInfo, path: Path) -> str:
    return f"Get it from: {info.download}; it must end up at {path}."


def _fail(info: DatasetInfo, path: Path, what: str) -> DatasetError:
    return DatasetError(f"Dataset {info.key}: {path} {what}.")


def _require_file(info: DatasetInfo, path: Path, kind: str) -> None:
    if not path.is_file():
        raise MissingDataError(f"Dataset {info.key}: {kind} {path} does not exist.", hint=_where_hint(info, path))


def _require_dir(info: DatasetInfo, path: Path, kind: str) -> None:
    if not path.is_dir():
        raise MissingDataError(f"Dataset {info.key}: {kind} {path} does not exist.", hint=_where_hint(info, path))


def _read_text(info: DatasetInfo, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(info, path, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise _fail(info, path, f"cannot be read ({exc.strerror or exc})") from exc


def _non_hidden_entries(info: DatasetInfo, folder: Path) -> list[os.DirEntry[str]]:
    """Entries of `folder` not starting with '.', sorted by name (plain case-sensitive string order)."""
    try:
        with os.scandir(folder) as it:
            entries = [entry for entry in it if not entry.name.startswith(".")]
    except OSError as exc:
        raise _fail(info, folder, f"cannot be listed ({exc.strerror or exc})") from exc
    entries.sort(key=lambda entry: entry.name)
    return entries


def _image_files(info: DatasetInfo, folder: Path) -> list[str]:
    """Every non-hidden file of a class folder, sorted by name.

    Dassl keeps unsorted `os.listdir` order here; sorting makes the few-shot draw identical on every file
    system (and so differs from the original only for ImageNet, where the order decides the draw).
    """
    return [entry.name for entry in _non_hidden_entries(info, folder) if entry.is_file()]


class _FileIndex:
    """Existence checks through one directory listing per folder instead of one `stat` per image."""

    def __init__(self) -> None:
        self._listing: dict[str, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        parent = os.path.dirname(path)
        names = self._listing.get(parent)
        if names is None:
            try:
                names = frozenset(os.listdir(parent))
            except OSError:
                names = frozenset()
            self._listing[parent] = names
        # The listing is exact; the stat fallback covers case-insensitive file systems.
        return os.path.basename(path) in names or path.is_file()


def _check_listed_files(info: DatasetInfo, samples: Iterable[Sample], source: Path, image_root: Path) -> None:
    index = _FileIndex()
    missing: list[Path] = []
    total = 0
    for sample in samples:
        total += 1
        if not index.exists(sample.path):
            missing.append(sample.path)
    if missing:
        raise DatasetError(
            f"Dataset {info.key}: image {missing[0]} listed in {source} does not exist "
            f"({len(missing)} of {total} listed images are missing).",
            hint=f"Check that the images are extracted under {image_root}; "
            "`sempt data check` reports every dataset at once.",
        )


def _relative_path(info: DatasetInfo, split_path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(info, split_path, f"has {where} with path {value!r}, not a non-empty string")
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute():
        raise _fail(info, split_path, f"has {where} with absolute path {value!r}; paths must be relative")
    if ".." in PurePosixPath(value).parts:
        raise _fail(info, split_path, f"has {where} with path {value!r} that leaves the image folder")
    return value


def _check_class_coverage(
    info: DatasetInfo, path: Path, names: dict[int, str], expected: int | None, what: str
) -> list[str]:
    """Class names in label order from the labels seen in `what`; all of 0..n-1 must be present."""
    n = max(names) + 1 if names else 0
    if expected is not None and n != expected:
        raise _fail(info, path, f"has {len(names)} classes in {what}, expected {expected}")
    absent = [label for label in range(n) if label not in names]
    if absent:
        raise _fail(info, path, f"has no {what} image for label {absent[0]} ({len(absent)} labels have none)")
    if n == 0:
        raise _fail(info, path, f"has no {what} images")
    return [names[label] for label in range(n)]


# ----------------------------------------------------------------------------------- split JSON (§1.2)


def _read_json_split(info: DatasetInfo, root: Path, check_files: bool) -> DatasetSplits:
    """CoOp's `split_zhou_<Name>.json`: `{"train"|"val"|"test": [[relpath, label, classname], ...]}`.

    Paths resolve against the image folder (the dataset folder itself for StanfordCars); label and class
    name are taken verbatim. The demo world uses the same reader; its class count is whatever its split
    file says, every other dataset must have exactly the registry's count.
    """
    assert info.split_file is not None
    dataset_dir = info.dataset_dir(root)
    split_path = dataset_dir / info.split_file
    image_root = info.image_root(root)
    _require_file(info, split_path, "split file")
    text = _read_text(info, split_path)
    if info.split_sha256 is not None and hashlib.sha256(text.encode("utf-8")).hexdigest() != info.split_sha256:
        raise DatasetError(
            f"Dataset {info.key}: split file {split_path} changed since `sempt data add` wrote it.",
            hint=f"Register the dataset again (`sempt data add {info.key} PATH --force`) if the change is intended.",
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(info, split_path, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if not isinstance(data, dict) or any(not isinstance(data.get(key), list) for key in SPLIT_KEYS):
        raise _fail(info, split_path, 'must be a JSON object with "train", "val" and "test" lists')

    expected = None if info.key == DEMO_KEY else info.num_classes
    names: dict[int, str] = {}
    parsed: dict[str, list[tuple[str, int, str]]] = {}
    for split in SPLIT_KEYS:
        rows: list[tuple[str, int, str]] = []
        for i, entry in enumerate(data[split]):
            where = f'entry {i} of "{split}"'
            if not isinstance(entry, list) or len(entry) != 3:
                shown = json.dumps(entry)[:80]
                raise _fail(info, split_path, f"has {where} = {shown}, not [relative_path, label, classname]")
            rel, label, classname = entry
            rel = _relative_path(info, split_path, where, rel)
            if isinstance(label, bool) or not isinstance(label, int):
                raise _fail(info, split_path, f"has {where} with label {label!r}, not an integer")
            if not isinstance(classname, str) or not classname:
                raise _fail(info, split_path, f"has {where} with class name {classname!r}, not a string")
            if label < 0 or (expected is not None and label >= expected):
                top = "" if expected is None else f"..{expected - 1}"
                raise _fail(info, split_path, f"has {where} with label {label} outside 0{top}")
            known = names.get(label)
            if known is None:
                if split != "train":
                    raise _fail(info, split_path, f"has {where} with label {label}, which no train entry has")
                names[label] = classname
            elif known != classname:
                raise _fail(
                    info,
                    split_path,
                    f"has {where} naming label {label} {classname!r} but earlier entries name it {known!r}",
                )
            rows.append((rel, label, classname))
        parsed[split] = rows
    classnames = _check_class_coverage(info, split_path, names, expected, '"train"')

    _require_dir(info, image_root, "image folder")
    splits = {
        split: [Sample(image_root / rel, label, classname) for rel, label, classname in rows]
        for split, rows in parsed.items()
    }
    if check_files:
        samples = (s for split in SPLIT_KEYS for s in splits[split])
        _check_listed_files(info, samples, split_path, image_root)
    return DatasetSplits(
        name=info.key,
        classnames=classnames,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        image_root=image_root,
    )


# ------------------------------------------------------------------------------------ FGVCAircraft (§2.8)


def _read_fgvc_aircraft(info: DatasetInfo, root: Path, check_files: bool) -> DatasetSplits:
    """FGVC's own files, read every run: labels = line order of `variants.txt`, images `images/<id>.jpg`."""
    dataset_dir = info.dataset_dir(root)
    image_root = info.image_root(root)
    variants_path = dataset_dir / "variants.txt"
    _require_file(info, variants_path, "class list")
    classnames = [line.strip() for line in _read_text(info, variants_path).splitlines() if line.strip()]
    if len(classnames) != info.num_classes:
        raise _fail(info, variants_path, f"lists {len(classnames)} variants, expected {info.num_classes}")
    label_of = {name: label for label, name in enumerate(classnames)}
    if len(label_of) != len(classnames):
        duplicate = next(name for name in classnames if classnames.count(name) > 1)
        raise _fail(info, variants_path, f"lists variant {duplicate!r} twice")

    splits: dict[str, list[Sample]] = {}
    for split in SPLIT_KEYS:
        list_path = dataset_dir / f"images_variant_{split}.txt"
        _require_file(info, list_path, "split file")
        samples: list[Sample] = []
        for lineno, raw in enumerate(_read_text(info, list_path).splitlines(), start=1):
            parts = raw.strip().split(" ")
            if not parts[0]:
                continue
            if len(parts) < 2:
                raise _fail(info, list_path, f"has line {lineno} {raw.strip()!r} without a variant name")
            classname = " ".join(parts[1:])
            label = label_of.get(classname)
            if label is None:
                raise _fail(info, list_path, f"has line {lineno} naming variant {classname!r}, not in variants.txt")
            samples.append(Sample(image_root / f"{parts[0]}.jpg", label, classname))
        splits[split] = samples
        if split == "train":
            present = {sample.label: sample.classname for sample in samples}
            _check_class_coverage(info, list_path, present, info.num_classes, "train")

    _require_dir(info, image_root, "image folder")
    if check_files:
        for split in SPLIT_KEYS:
            list_path = dataset_dir / f"images_variant_{split}.txt"
            _check_listed_files(info, splits[split], list_path, image_root)
    return DatasetSplits(
        name=info.key,
        classnames=classnames,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        image_root=image_root,
    )


# ------------------------------------------------------------------------- ImageNet family (§2.2, §2.13+)


def _read_wnid_classnames(info: DatasetInfo, dataset_dir: Path) -> tuple[list[tuple[str, str]], Path | None]:
    """(wnid, name) pairs in file order from `<dataset>/classnames.txt`, else from the bundled copy.

    The CoOp layout expects every ImageNet-family folder to hold a copy of ImageNet's `classnames.txt`
    (`<wnid> <CLIP name>` per line). When it is absent we fall back to the identical list shipped in
    `sempt_cli/data/classnames/imagenet_classnames.txt`, so users need not copy it around; the returned
    path is None in that case.
    """
    path = dataset_dir / "classnames.txt"
    if not path.is_file():
        return list(bundled_imagenet_classnames().items()), None
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(_read_text(info, path).splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.strip().split(" ")
        if len(parts) < 2:
            raise _fail(info, path, f"has line {lineno} {raw.strip()!r}, not '<wnid> <class name>'")
        wnid = parts[0]
        if wnid in seen:
            raise _fail(info, path, f"lists wnid {wnid} twice")
        seen.add(wnid)
        pairs.append((wnid, " ".join(parts[1:])))
    if len(pairs) != 1000:
        raise _fail(info, path, f"has {len(pairs)} class lines, expected 1000")
    return pairs, path


def _class_folders(
    info: DatasetInfo, folder: Path, ignore: frozenset[str] = frozenset(), allow_files: bool = False
) -> list[str]:
    names: list[str] = []
    for entry in _non_hidden_entries(info, folder):
        if entry.name in ignore:
            continue
        if entry.is_dir():
            names.append(entry.name)
        elif not allow_files:
            raise _fail(info, folder / entry.name, "is a file where only class folders are expected")
    return names


def _folder_samples(
    info: DatasetInfo, folder: Path, wnids: list[str], label_name: Callable[[int, str], str]
) -> list[Sample]:
    samples: list[Sample] = []
    for label, wnid in enumerate(wnids):
        class_dir = folder / wnid
        files = _image_files(info, class_dir)
        if not files:
            raise _fail(info, class_dir, "contains no images")
        classname = label_name(label, wnid)
        samples.extend(Sample(class_dir / file, label, classname) for file in files)
    return samples


def _lookup_names(
    info: DatasetInfo, wnids: list[str], mapping: dict[str, str], source: Path | None, folder: Path
) -> Callable[[int, str], str]:
    for wnid in wnids:
        if wnid not in mapping:
            where = source if source is not None else "the bundled imagenet_classnames.txt"
            raise _fail(info, folder / wnid, f"is not a class folder: {wnid!r} is not a wnid in {where}")
    return lambda _label, wnid: mapping[wnid]


def _read_imagenet(info: DatasetInfo, root: Path, check_files: bool) -> DatasetSplits:
    """ImageNet: train = `images/train/<wnid>/*`, test = `images/val/<wnid>/*`, val = test (no own val).

    Labels are the positions of the sorted wnid folders; names come from `classnames.txt` by wnid (bundled
    fallback, see `_read_wnid_classnames`). File names are sorted within each class, unlike Dassl's
    `os.listdir` order, so the few-shot draw is the same on every machine but not the one a Dassl run on a
    particular file system made.
    """
    dataset_dir = info.dataset_dir(root)
    image_root = info.image_root(root)
    train_dir, val_dir = image_root / "train", image_root / "val"
    _require_dir(info, train_dir, "image folder")
    _require_dir(info, val_dir, "image folder")
    pairs, source = _read_wnid_classnames(info, dataset_dir)
    mapping = dict(pairs)

    wnids = _class_folders(info, train_dir, allow_files=True)
    if len(wnids) != info.num_classes:
        raise _fail(info, train_dir, f"has {len(wnids)} class folders, expected {info.num_classes}")
    val_wnids = _class_folders(info, val_dir, allow_files=True)
    if val_wnids != wnids:
        if not val_wnids:
            raise _fail(
                info,
                val_dir,
                "has no wnid folders (the official val archive is flat; move its images into one folder per wnid)",
            )
        odd = sorted(set(val_wnids).symmetric_difference(wnids))
        raise _fail(info, val_dir, f"has wnid folders that differ from train ({odd[0]} and {len(odd) - 1} more)")
    label_name = _lookup_names(info, wnids, mapping, source, train_dir)
    train = _folder_samples(info, train_dir, wnids, label_name)
    test = _folder_samples(info, val_dir, wnids, label_name)
    return DatasetSplits(
        name=info.key,
        classnames=[mapping[wnid] for wnid in wnids],
        train=train,
        val=test,
        test=test,
        image_root=image_root,
        val_is_test=True,
    )


def _read_imagenetv2(info: DatasetInfo, root: Path, check_files: bool) -> DatasetSplits:
    """ImageNet-V2: folder `k` holds label k (integer order, not string order); name = line k."""
    dataset_dir = info.dataset_dir(root)
    image_root = info.image_root(root)
    _require_dir(info, image_root, "image folder")
    pairs, _source = _read_wnid_classnames(info, dataset_dir)
    classnames = [name for _wnid, name in pairs]
    for k in range(info.num_classes):
        if not (image_root / str(k)).is_dir():
            raise _fail(info, image_root / str(k), f"does not exist (folders 0..{info.num_classes - 1} are needed)")
    test = _folder_samples(info, image_root, [str(k) for k in range(info.num_classes)], lambda k, _w: classnames[k])
    return DatasetSplits(info.key, classnames, train=[], val=None, test=test, image_root=image_root)


def _read_wnid_folders(info: DatasetInfo, root: Path, check_files: bool) -> DatasetSplits:
    """ImageNet-Sketch/-A/-R: sorted wnid folders, label = position, name by wnid; A/R ignore README.txt.

    A/R are 200-way in the Dassl ecosystem; their folders must be exactly the 200 wnids of the bundled
    subset table, whose ImageNet-1k indices (`registry.bundled_wnid_subset`) allow 1000-way scoring.
    """
    dataset_dir = info.dataset_dir(root)
    image_root = info.image_root(root)
    _require_dir(info, image_root, "image folder")
    pairs, source = _read_wnid_classnames(info, dataset_dir)
    mapping = dict(pairs)
    ignore = IGNORED_TOP_LEVEL if info.wnid_subset else frozenset()
    wnids = _class_folders(info, image_root, ignore=ignore)
    if len(wnids) != info.num_classes:
        raise _fail(info, image_root, f"has {len(wnids)} class folders, expected {info.num_classes}")
    if info.wnid_subset:
        allowed = {wnid for wnid, _index, _name in bundled_wnid_subset(info.key)}
        for wnid in wnids:
            if wnid not in allowed:
                raise _fail(info, image_root / wnid, f"is not one of the {len(allowed)} {info.display_name} classes")
    label_name = _lookup_names(info, wnids, mapping, source, image_root)
    test = _folder_samples(info, image_root, wnids, label_name)
    classnames = [mapping[wnid] for wnid in wnids]
    return DatasetSplits(info.key, classnames, train=[], val=None, test=test, image_root=image_root)


_READERS: dict[str, Callable[[DatasetInfo, Path, bool], DatasetSplits]] = {
    "json_split": _read_json_split,
    "fgvc_aircraft": _read_fgvc_aircraft,
    "imagenet": _read_imagenet,
    "imagenetv2": _read_imagenetv2,
    "wnid_folders": _read_wnid_folders,
}
