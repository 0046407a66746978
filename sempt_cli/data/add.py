"""`sempt data add`: turn a folder of images (or a manifest) into a dataset every command can use.

Why validate everything once, up front: a training run that dies on the 3,000th image, or silently trains on
the same picture twice, costs hours; a dataset that passes here is read by the benchmark reader every time
after. Why write a `split_zhou_<Name>.json`: that file is what makes the benchmarks reproducible (spec §1.2),
so a user dataset gets one too, made once with a fixed seed in CoOp's proportions (`read_and_split_data`:
50 % train, 20 % val, the rest test, per class; spec §1.4) and then few-shot sampling and base/novel
subsampling run exactly as for the benchmarks. Unlike CoOp's fallback the draw is reproducible: file names
are sorted and the shuffle uses a private `random.Random(SPLIT_SEED)`.

Accepted inputs:

* a folder in ImageFolder layout, one sub-folder per class (images may sit in nested folders; files without
  an image extension and hidden entries are ignored); class names are the folder names with `_` as spaces;
* a CSV manifest with a header naming a `path` and a `label` column and optionally a `split` column
  (train/val/test), or a JSON manifest: a list of `{"path", "label", "split"?}` objects, or an object with
  `"train"`, `"val"`, `"test"` lists of such objects or of `[path, label, classname]` rows (a split file).
  Paths are relative to the manifest's folder (absolute ones must lie inside it). Labels are class names, or
  integers into `--classnames FILE`.

Every problem is a `DatasetError` with one sentence naming the file or class, raised before anything is
written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sempt_cli.data.records import prompt_name
from sempt_cli.data.registry import benchmark_name
from sempt_cli.data.user import (
    NAME_PATTERN,
    UserEntry,
    entry_path,
    split_path,
    user_entries,
    write_entry,
)
from sempt_cli.errors import DatasetError
from sempt_cli.io import atomic_write_text

__all__ = [
    "CONTEXT_LENGTH",
    "IMAGE_EXTENSIONS",
    "LEARNED_CONTEXT",
    "P_TRAIN",
    "P_VAL",
    "SPLIT_SEED",
    "AddResult",
    "add_dataset",
    "split_counts",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLIT_SEED = 1
"""Seed of the train/val/test draw: fixed, so the split never depends on when or where `data add` ran."""
P_TRAIN, P_VAL = 0.5, 0.2
"""CoOp's `read_and_split_data` proportions; the rest is test."""
P_VAL_OF_TRAIN = 0.2
"""CoOp's `split_trainval`: a manifest with train and test but no val gives 20 % of each class's train to val."""
CONTEXT_LENGTH = 77
"""CLIP's text context, start and end tokens included."""
LEARNED_CONTEXT = 16
"""The longest learned text context among the methods (DPT's 16 tokens): a class name must fit beside it."""
_SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}
_PATH_COLUMNS = ("path", "image", "file", "filename", "filepath", "impath")
_LABEL_COLUMNS = ("label", "class", "classname", "category")


@dataclass(frozen=True)
class _Item:
    """One image as found: its path relative to the image root (POSIX), its class name, its split if given."""

    rel: str
    classname: str
    split: str | None
    where: str
    """Where it was listed, for messages (the file itself, or 'row N of manifest M')."""


@dataclass
class AddResult:
    """What `add_dataset` registered (or found already registered, `written=False`)."""

    entry: UserEntry
    entry_file: Path
    written: bool
    ignored_files: int = 0


def _fail(message: str) -> DatasetError:
    return DatasetError(message)


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, val, test) for a class of `n` images in CoOp's proportions (Python's round, half to even)."""
    n_train, n_val = round(n * P_TRAIN), round(n * P_VAL)
    return n_train, n_val, n - n_train - n_val


@cache
def _min_split_size() -> int:
    return next(n for n in range(1, 100) if min(split_counts(n)) > 0)


# ------------------------------------------------------------------------------------------------ arguments


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise _fail(f"Dataset name {name!r} must be lower-case letters, digits, '_' or '-', starting with a letter "
                    "(at most 64 characters).")
    taken = benchmark_name(name)
    if taken is not None:
        raise _fail(f"Dataset name {name!r} is taken by the built-in dataset {taken!r}; choose another name.")


def _check_template(template: str) -> None:
    if template.count("{}") != 1 or "\n" in template:
        raise _fail(f"Template {template!r} must be one line with exactly one '{{}}' where the class name goes.")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        raise _fail(f"Template {template!r} has braces other than the one '{{}}' for the class name.") from None


def _check_domain(domain: str | None) -> None:
    if domain is not None and (not domain.strip() or "\n" in domain or len(domain) > 200):
        raise _fail(f"Domain {domain!r} must be one non-empty line of at most 200 characters, e.g. 'bird species'.")


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(f"The {what} {path} does not exist.") from None
    except UnicodeDecodeError:
        raise _fail(f"The {what} {path} is not UTF-8 text.") from None
    except OSError as exc:
        raise _fail(f"The {what} {path} cannot be read ({exc.strerror or exc}).") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


# -------------------------------------------------------------------------------------------- ImageFolder


def _visible(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            entries = [entry for entry in it if not entry.name.startswith(".")]
    except OSError as exc:
        raise _fail(f"Folder {folder} cannot be listed ({exc.strerror or exc}).") from None
    return sorted(entries, key=lambda entry: entry.name)


def _image_files(folder: Path, root: Path) -> tuple[list[str], int]:
    """Image files under `folder` (recursively, sorted), relative to `root`; and how many other files it holds."""
    found: list[str] = []
    ignored = 0
    for entry in _visible(folder):
        path = folder / entry.name
        if entry.is_dir():
            more, skipped = _image_files(path, root)
            found.extend(more)
            ignored += skipped
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            found.append(path.relative_to(root).as_posix())
        else:
            ignored += 1
    return found, ignored


def _scan_image_folder(root: Path) -> tuple[list[str], list[_Item], int]:
    """Class folders (sorted, as CoOp's `read_and_split_data`) and their images."""
    folders = [entry.name for entry in _visible(root) if entry.is_dir()]
    if not folders:
        raise _fail(f"Folder {root} has no class sub-folders (ImageFolder layout: one sub-folder per class).")
    items: list[_Item] = []
    ignored = 0
    for folder in folders:
        files, skipped = _image_files(root / folder, root)
        ignored += skipped
        if not files:
            raise _fail(f"Class folder {root / folder} contains no images.")
        items.extend(_Item(rel, folder, None, str(root / rel)) for rel in files)
    return folders, items, ignored


def _folder_classnames(folders: list[str], classnames_file: Path | None) -> dict[str, str]:
    """Folder -> class name: the folder name with `_` as spaces, or the class-name file's line for it.

    The file lists one name per line in sorted-folder order, or `folder<TAB>name` lines in any order.
    """
    if classnames_file is None:
        return {folder: folder.replace("_", " ").strip() for folder in folders}
    lines = _read_lines(classnames_file, "class-name file")
    if lines and all("\t" in line for line in lines):
        mapping = {}
        for line in lines:
            folder, _, name = line.partition("\t")
            folder, name = folder.strip(), name.strip()
            if folder not in folders:
                raise _fail(f"The class-name file {classnames_file} names folder {folder!r}, which is not a class "
                            "folder.")
            mapping[folder] = name
        missing = [folder for folder in folders if folder not in mapping]
        if missing:
            raise _fail(f"The class-name file {classnames_file} gives no name for class folder {missing[0]!r}.")
        return mapping
    if len(lines) != len(folders):
        raise _fail(f"The class-name file {classnames_file} has {len(lines)} names for {len(folders)} class folders "
                    "(one name per line, in sorted folder order).")
    return dict(zip(folders, lines, strict=True))


# ----------------------------------------------------------------------------------------------- manifests


def _column(header: Sequence[str], names: Sequence[str]) -> str | None:
    lowered = {column.strip().lower(): column for column in header}
    return next((lowered[name] for name in names if name in lowered), None)


_Row = tuple[Any, Any, Any, str, "int | None"]


def _manifest_rows(path: Path) -> list[_Row]:
    """(path, label, split or None, where, label number of a split-file row or None) per row of a CSV or JSON
    manifest, in file order."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        lines = _read_lines(path, "manifest")
        if not lines:
            raise _fail(f"The manifest {path} is empty.")
        reader = csv.DictReader(io.StringIO("\n".join(lines)))
        header = reader.fieldnames or []
        path_col, label_col = _column(header, _PATH_COLUMNS), _column(header, _LABEL_COLUMNS)
        split_col = _column(header, ("split",))
        if path_col is None or label_col is None:
            raise _fail(f"The manifest {path} needs a header with 'path' and 'label' columns (found "
                        f"{', '.join(header) or 'none'}).")
        return [(row.get(path_col) or "", row.get(label_col) or "", row.get(split_col) if split_col else None,
                 f"row {i} of {path}", None) for i, row in enumerate(reader, start=2)]
    if suffix != ".json":
        raise _fail(f"{path} is neither a folder nor a .csv or .json manifest.")
    try:
        data = json.loads("\n".join(_read_lines(path, "manifest")) or "null")
    except json.JSONDecodeError as exc:
        raise _fail(f"The manifest {path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    if isinstance(data, list):
        return [_json_row(path, entry, None, f"entry {i} of {path}") for i, entry in enumerate(data)]
    is_split = isinstance(data, dict) and data and set(data) <= set(_SPLITS)
    if is_split and all(isinstance(v, list) for v in data.values()):
        return [_json_row(path, entry, split, f'entry {i} of "{split}" in {path}')
                for split in _SPLITS for i, entry in enumerate(data.get(split, []))]
    raise _fail(f"The manifest {path} must be a JSON list of {{\"path\", \"label\"}} objects or an object with "
                "\"train\", \"val\" and \"test\" lists.")


def _json_row(path: Path, entry: Any, split: str | None, where: str) -> _Row:
    if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int) and isinstance(entry[2], str):
        return entry[0], entry[2], split, where, entry[1]  # a split-file row [path, label, classname]
    if isinstance(entry, dict):
        path_key = _column(list(entry), _PATH_COLUMNS)
        label_key = _column(list(entry), _LABEL_COLUMNS)
        if path_key is not None and label_key is not None:
            return entry[path_key], entry[label_key], split if split is not None else entry.get("split"), where, None
    raise _fail(f"The manifest {path} has {where} = {json.dumps(entry)[:60]}, not an object with 'path' and "
                "'label'.")


def _read_manifest(manifest: Path, classnames_file: Path | None) -> tuple[list[str], list[_Item]]:
    """Class names in label order and one item per row; paths checked to exist inside the manifest's folder."""
    root = manifest.parent
    names_in_file = _read_lines(classnames_file, "class-name file") if classnames_file is not None else None
    items: list[_Item] = []
    seen: dict[str, str] = {}
    numbers: dict[str, int | None] = {}
    for raw_path, raw_label, raw_split, where, number in _manifest_rows(manifest):
        if not isinstance(raw_path, str) or not raw_path.strip():
            raise _fail(f"The manifest has {where} without an image path.")
        rel = _inside(root, raw_path.strip(), where)
        if rel in seen:
            raise _fail(f"Image {root / rel} is listed twice in the manifest ({seen[rel]} and {where}).")
        seen[rel] = where
        if not (root / rel).is_file():
            raise _fail(f"Image {root / rel} listed in {where} does not exist.")
        classname = _label_name(raw_label, names_in_file, classnames_file, where)
        if numbers.setdefault(classname, number) != number:
            raise _fail(f"The manifest's {where} gives class {classname!r} label {number}, unlike earlier rows.")
        items.append(_Item(rel, classname, _split(raw_split, where), str(root / rel)))
    if not items:
        raise _fail(f"The manifest {manifest} lists no images.")
    if len({item.split is None for item in items}) > 1:
        first = next(item for item in items if item.split is None)
        raise _fail(f"The manifest gives a split for some images but not for {first.where}.")
    if names_in_file is not None:
        listed = {item.classname for item in items}
        empty = [name for name in names_in_file if name not in listed]
        if empty:
            raise _fail(f"Class {empty[0]!r} of {classnames_file} has no images in the manifest.")
        return names_in_file, items
    labels = {name: number for name, number in numbers.items() if number is not None}
    if numbers and len(labels) == len(numbers):
        ordered = sorted(labels, key=lambda name: labels[name])  # a split file keeps its own label order
        if [labels[name] for name in ordered] != list(range(len(ordered))):
            raise _fail(f"The labels of {manifest} are not 0..{len(ordered) - 1}, one per class.")
        return ordered, items
    return sorted(numbers), items


def _inside(root: Path, raw: str, where: str) -> str:
    """The path relative to `root` in POSIX form; a path outside it cannot go into a shareable split file."""
    absolute = Path(os.path.normpath(root / raw))
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        raise _fail(f"Image {raw} in {where} lies outside the manifest's folder {root}; paths must be inside it.") \
            from None


def _label_name(raw: Any, names: list[str] | None, names_file: Path | None, where: str) -> str:
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit() and names is not None:
        raw = int(raw.strip())
    if isinstance(raw, int) and not isinstance(raw, bool):
        if names is None:
            raise _fail(f"The manifest's {where} has integer label {raw}; pass --classnames FILE to name the labels.")
        if not 0 <= raw < len(names):
            raise _fail(f"The manifest's {where} has label {raw}, but {names_file} names labels 0..{len(names) - 1}.")
        return names[raw]
    if not isinstance(raw, str) or not raw.strip():
        raise _fail(f"The manifest's {where} has no class label.")
    if names is not None and raw.strip() not in names:
        raise _fail(f"The manifest's {where} has class {raw.strip()!r}, which {names_file} does not list.")
    return raw.strip()


def _split(raw: Any, where: str) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    split = _SPLIT_ALIASES.get(str(raw).strip().lower())
    if split is None:
        raise _fail(f"The manifest's {where} has split {raw!r}; use train, val or test.")
    return split


# ------------------------------------------------------------------------------------------ class and image checks


@cache
def _tokenizer() -> Callable[[str], list[int]]:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer().encode


def _check_classnames(classnames: Sequence[str], template: str, count_tokens: Callable[[str], int] | None) -> None:
    """Names must be distinct, non-empty and fit CLIP's 77 tokens in the template and beside a learned context."""
    count = count_tokens or (lambda text: len(_tokenizer()(text)))
    seen: dict[str, str] = {}
    for name in classnames:
        if not name.strip():
            raise _fail("A class name is empty.")
        clean = prompt_name(name).strip().lower()
        if clean in seen:
            raise _fail(f"Classes {seen[clean]!r} and {name!r} have the same name as CLIP reads it.")
        seen[clean] = name
        budget = CONTEXT_LENGTH - 2  # start and end of text
        templated = count(template.format(prompt_name(name)))
        learned = LEARNED_CONTEXT + count(f"{prompt_name(name)}.")
        if max(templated, learned) > budget:
            raise _fail(f"Class name {name!r} is too long for CLIP's {CONTEXT_LENGTH}-token context "
                        f"({max(templated, learned) + 2} tokens with the template or a {LEARNED_CONTEXT}-token learned "
                        "prompt); shorten it with --classnames FILE.")


def _inspect(path: Path) -> tuple[str | None, str | None]:
    """(sha256 of the bytes, why it does not decode) for one image file."""
    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, exc.strerror or str(exc)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB")
    except Exception as exc:  # any decoder failure means the file is unusable
        return hashlib.sha256(data).hexdigest(), f"{type(exc).__name__}: {exc}"
    return hashlib.sha256(data).hexdigest(), None


def _check_images(root: Path, items: Sequence[_Item], num_threads: int) -> None:
    """Every image decodes, and no two files have the same content (a copy in train and test leaks the answer)."""
    paths = [root / item.rel for item in items]
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        results = list(pool.map(_inspect, paths))
    owner: dict[str, Path] = {}
    for path, (digest, problem) in zip(paths, results, strict=True):
        if problem is not None:
            raise _fail(f"Image {path} cannot be read ({problem}).")
        assert digest is not None
        if digest in owner:
            raise _fail(f"Images {owner[digest]} and {path} have identical content; keep one of them.")
        owner[digest] = path


# ---------------------------------------------------------------------------------------------------- splits


def _generate_split(classnames: Sequence[str], by_class: dict[str, list[str]]) -> dict[str, list[list[Any]]]:
    """CoOp's `read_and_split_data` per class in label order: shuffle, 50 % train, 20 % val, the rest test."""
    rng = random.Random(SPLIT_SEED)
    out: dict[str, list[list[Any]]] = {split: [] for split in _SPLITS}
    for label, name in enumerate(classnames):
        files = list(by_class[name])
        counts = split_counts(len(files))
        if min(counts) == 0:
            raise _fail(f"Class {name!r} has {len(files)} image(s); a train/val/test split in CoOp's 50/20/30 "
                        f"proportions needs at least {_min_split_size()} per class.")
        rng.shuffle(files)
        n_train, n_val, _ = counts
        parts = {"train": files[:n_train], "val": files[n_train:n_train + n_val], "test": files[n_train + n_val:]}
        for split in _SPLITS:
            out[split].extend([rel, label, name] for rel in parts[split])
    return out


def _given_split(classnames: Sequence[str], items: Sequence[_Item]) -> dict[str, list[list[Any]]]:
    """The manifest's own split (file order); without val rows, CoOp's `split_trainval` carves 20 % of train."""
    label = {name: i for i, name in enumerate(classnames)}
    out: dict[str, list[list[Any]]] = {split: [] for split in _SPLITS}
    for item in items:
        assert item.split is not None
        out[item.split].append([item.rel, label[item.classname], item.classname])
    for split in ("train", "test"):
        present = {row[1] for row in out[split]}
        missing = [name for name in classnames if label[name] not in present]
        if missing:
            raise _fail(f"Class {missing[0]!r} has no {split} images in the manifest's split.")
    if not out["val"]:
        rng = random.Random(SPLIT_SEED)
        groups: dict[int, list[list[Any]]] = {}
        for row in out["train"]:
            groups.setdefault(row[1], []).append(row)
        train: list[list[Any]] = []
        val: list[list[Any]] = []
        for y, rows in groups.items():
            n_val = round(len(rows) * P_VAL_OF_TRAIN)
            if n_val == 0 or n_val == len(rows):
                raise _fail(f"Class {classnames[y]!r} has {len(rows)} train image(s) and no val images in the "
                            "manifest; give it val rows or at least 3 train images.")
            order = list(range(len(rows)))
            rng.shuffle(order)
            chosen = set(order[:n_val])
            val.extend(row for i, row in enumerate(rows) if i in chosen)
            train.extend(row for i, row in enumerate(rows) if i not in chosen)
        out["train"], out["val"] = train, val
    return out


def _check_shots(split: dict[str, list[list[Any]]], classnames: Sequence[str], shots: int) -> None:
    if shots <= 0:
        return
    counts = [0] * len(classnames)
    for _rel, label, _name in split["train"]:
        counts[label] += 1
    for label, count in enumerate(counts):
        if count < shots:
            raise _fail(f"Class {classnames[label]!r} has {count} training image(s) after the split, fewer than the "
                        f"{shots} shots asked for; add images or pass --shots {count}.")


def split_json_text(split: dict[str, list[list[Any]]]) -> str:
    """CoOp's writer format: `json.dump(..., indent=4, separators=(",", ": "))`, keys train, val, test."""
    return json.dumps({key: split[key] for key in _SPLITS}, indent=4, separators=(",", ": "), ensure_ascii=False)


# -------------------------------------------------------------------------------------------------- add


def add_dataset(
    name: str,
    path: Path,
    *,
    template: str = "a photo of a {}.",
    classnames_file: Path | None = None,
    domain: str | None = None,
    shots: int = 16,
    force: bool = False,
    num_threads: int = 4,
    count_tokens: Callable[[str], int] | None = None,
) -> AddResult:
    """Validate a folder or manifest, write its split file and its entry, and return the entry.

    Nothing is written unless every check passes. Registering the same data again under the same name with the
    same options writes nothing (`written=False`); anything else needs `force`. `count_tokens` replaces
    CLIP's BPE tokenizer (tests).
    """
    _check_name(name)
    _check_template(template)
    _check_domain(domain)
    if shots < 0:
        raise _fail(f"--shots must be 0 or more, not {shots}.")
    source = Path(os.path.abspath(os.path.expanduser(path)))
    if classnames_file is not None:
        classnames_file = Path(os.path.abspath(os.path.expanduser(classnames_file)))
    if not source.exists():
        raise _fail(f"{source} does not exist.")
    ignored = 0
    if source.is_dir():
        root = source
        folders, items, ignored = _scan_image_folder(root)
        names = _folder_classnames(folders, classnames_file)
        items = [_Item(item.rel, names[item.classname], None, item.where) for item in items]
        classnames = [names[folder] for folder in folders]
    else:
        root = source.parent
        classnames, items = _read_manifest(source, classnames_file)
    if len(classnames) < 2:
        raise _fail(f"{source} has {len(classnames)} class; base-to-novel and classification need at least 2.")
    _check_classnames(classnames, template, count_tokens)
    _check_images(root, items, num_threads)

    if items[0].split is None:
        by_class: dict[str, list[str]] = {name_: [] for name_ in classnames}
        for item in items:
            by_class[item.classname].append(item.rel)
        split = _generate_split(classnames, by_class)
    else:
        split = _given_split(classnames, items)
    _check_shots(split, classnames, shots)

    text = split_json_text(split)
    target = split_path(name)
    entry = UserEntry(
        name=name, image_root=root, split_file=target, classnames=tuple(classnames),
        sizes=(len(split["train"]), len(split["val"]), len(split["test"])), template=template, domain=domain,
        source=str(source), split_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        generated_split=items[0].split is None,
    )
    existing = user_entries().get(name)
    if existing is not None and not force:
        if existing == entry and target.is_file() and target.read_text(encoding="utf-8") == text:
            return AddResult(entry, entry_path(name), written=False, ignored_files=ignored)
        raise _fail(f"Dataset {name!r} is already registered from {existing.source} with other contents or options; "
                    "pass --force to replace it.")
    atomic_write_text(target, text)
    return AddResult(entry, write_entry(entry), written=True, ignored_files=ignored)
