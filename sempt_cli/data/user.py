"""Datasets registered by the user with `sempt data add`: one small TOML entry each, metadata only.

Why a file per dataset in a config folder instead of a Dassl class per dataset: the official repositories make
users write a Python class registered by import side effects; here `data add` validates a folder once and leaves
an entry that every later command (and settings validation, which knows no paths) finds by name. The folder is
`$SEMPT_DATASETS_DIR`, else `$XDG_CONFIG_HOME/sempt/datasets` (usually `~/.config/sempt/datasets`): it is
configuration, not cache, so clearing the cache never forgets a dataset. Each entry points at the image folder
and at the `split_zhou_<Name>.json` written next to it, so the benchmark reader serves user datasets unchanged.

Like `registry`, this module imports no torch and no image library: it runs on every settings validation.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sempt_cli.errors import DatasetError
from sempt_cli.io import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "DATASETS_DIR_ENV",
    "ENTRY_FORMAT",
    "NAME_PATTERN",
    "UserEntry",
    "dassl_name",
    "datasets_dir",
    "entry_path",
    "remove_entry",
    "split_path",
    "user_entries",
    "write_entry",
]

DATASETS_DIR_ENV = "SEMPT_DATASETS_DIR"
ENTRY_FORMAT = 1
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
"""Dataset names: lower-case letters, digits, `_` and `-`, starting with a letter (they become file names)."""


def datasets_dir() -> Path:
    """Where entries live: `$SEMPT_DATASETS_DIR`, else `$XDG_CONFIG_HOME/sempt/datasets`."""
    explicit = os.environ.get(DATASETS_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sempt" / "datasets"


def dassl_name(name: str) -> str:
    """CamelCase form for the split file name, as CoOp names its datasets: `my_birds` -> `MyBirds`."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_-]+", name) if part)


def entry_path(name: str, folder: Path | None = None) -> Path:
    """`<datasets dir>/<name>.toml`."""
    return (folder or datasets_dir()) / f"{name}.toml"


def split_path(name: str, folder: Path | None = None) -> Path:
    """`<datasets dir>/<name>/split_zhou_<Name>.json`: the split `data add` writes once."""
    return (folder or datasets_dir()) / name / f"split_zhou_{dassl_name(name)}.json"


@dataclass(frozen=True)
class UserEntry:
    """One registered dataset: where its images and split are, its classes, and how prompts talk about it."""

    name: str
    image_root: Path
    split_file: Path
    classnames: tuple[str, ...]
    sizes: tuple[int, int, int]
    template: str = "a photo of a {}."
    domain: str | None = None
    source: str = ""
    """What `data add` was given (a folder or a manifest), for `data list` and messages."""
    split_sha256: str = ""
    """sha256 of the split file as written, so a changed split is noticed instead of silently used."""
    generated_split: bool = True

    def to_toml(self) -> str:
        """The entry as TOML (strings JSON-quoted, which TOML basic strings accept)."""
        q = lambda value: json.dumps(value, ensure_ascii=False)  # noqa: E731 - a local quoting shorthand
        lines = [
            "# Registered with `sempt data add`; remove with `sempt data remove`.",
            f"format = {ENTRY_FORMAT}",
            f"name = {q(self.name)}",
            f"source = {q(self.source)}",
            f"image_root = {q(str(self.image_root))}",
            f"split_file = {q(str(self.split_file))}",
            f"split_sha256 = {q(self.split_sha256)}",
            f"generated_split = {'true' if self.generated_split else 'false'}",
            f"template = {q(self.template)}",
        ]
        if self.domain is not None:
            lines.append(f"domain = {q(self.domain)}")
        lines.append(f"sizes = [{', '.join(str(n) for n in self.sizes)}]")
        lines.append("classnames = [")
        lines.extend(f"    {q(name)}," for name in self.classnames)
        lines.append("]")
        return "\n".join(lines) + "\n"


def _bad(path: Path, what: str) -> DatasetError:
    return DatasetError(
        f"The dataset entry {path} {what}.",
        hint="Register the dataset again with `sempt data add --force`, or delete the file.",
    )


def _read_entry(path: Path) -> UserEntry:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise _bad(path, f"is not valid TOML ({exc})") from None
    name = raw.get("name")
    if raw.get("format") != ENTRY_FORMAT:
        raise _bad(path, f"has format {raw.get('format')!r}, not {ENTRY_FORMAT}")
    if name != path.stem:
        raise _bad(path, f"names the dataset {name!r}, not {path.stem!r} like its file")
    strings = ("source", "image_root", "split_file", "split_sha256", "template")
    for key in strings:
        if not isinstance(raw.get(key), str):
            raise _bad(path, f"lacks the text field {key!r}")
    classnames, sizes = raw.get("classnames"), raw.get("sizes")
    if not isinstance(classnames, list) or not classnames or not all(isinstance(c, str) for c in classnames):
        raise _bad(path, "lacks a non-empty list of class names")
    if not isinstance(sizes, list) or len(sizes) != 3 or not all(isinstance(n, int) for n in sizes):
        raise _bad(path, "lacks sizes = [train, val, test]")
    domain = raw.get("domain")
    return UserEntry(
        name=name,
        image_root=Path(raw["image_root"]),
        split_file=Path(raw["split_file"]),
        classnames=tuple(classnames),
        sizes=(sizes[0], sizes[1], sizes[2]),
        template=raw["template"],
        domain=domain if isinstance(domain, str) else None,
        source=raw["source"],
        split_sha256=raw["split_sha256"],
        generated_split=bool(raw.get("generated_split", True)),
    )


def _signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime, size) of every entry file: one directory listing decides whether the cache is current."""
    try:
        with os.scandir(folder) as it:
            found = [
                (entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                for entry in it
                if entry.name.endswith(".toml") and not entry.name.startswith(".") and entry.is_file()
            ]
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise DatasetError(f"The dataset folder {folder} cannot be listed ({exc.strerror or exc}).") from None
    return tuple(sorted(found))


@cache
def _entries(folder: str, signature: tuple[tuple[str, int, int], ...]) -> dict[str, UserEntry]:
    return {name[: -len(".toml")]: _read_entry(Path(folder) / name) for name, _, _ in signature}


def user_entries() -> dict[str, UserEntry]:
    """Every registered dataset by name, read once per change of the entries folder."""
    folder = datasets_dir()
    return dict(_entries(str(folder), _signature(folder)))


def split_identity(name: str) -> str:
    """The sha256 of a registered dataset's split file ("" for the benchmark datasets): what run keys add, so a
    dataset re-registered under the same name with other images (`data add --force`) never reuses older runs."""
    entry = user_entries().get(name)
    return entry.split_sha256 if entry is not None else ""


def write_entry(entry: UserEntry) -> Path:
    """Write `<name>.toml` atomically (the commit point of `data add`: the split file is written before)."""
    path = entry_path(entry.name)
    atomic_write_text(path, entry.to_toml())
    return path


def remove_entry(name: str) -> list[Path]:
    """Delete a dataset's entry and the split `data add` wrote for it; returns what was removed."""
    removed = []
    for path in (entry_path(name), split_path(name)):
        if path.is_file():
            path.unlink()
            removed.append(path)
    folder = split_path(name).parent
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return removed
