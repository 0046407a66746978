"""Versioned prompt templates for knowledge construction (spec §1, paper §3.2 and Fig. 3).

Prompts are data, not code: `sempt_cli/knowledge/prompts/<version>/*.txt`, shipped as package data and
rendered with `string.Template` (`$name`), so the JSON examples inside them need no escaping. A template
version is recorded in every attribute file and is part of every request (hence of the request cache key);
change wording by adding a new version folder, never by editing a released one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from sempt_cli.data.records import prompt_name
from sempt_cli.data.registry import DEMO_KEY, get_dataset_info
from sempt_cli.errors import SettingsError

TEMPLATE_NAMES = (
    "system",
    "attributes",
    "attributes_merge",
    "descriptions",
    "one_step",
    "reask_attributes",
    "reask_descriptions",
)

DOMAINS: dict[str, str] = {
    DEMO_KEY: "simple coloured geometric shapes on plain backgrounds",
    "imagenet": "everyday objects, animals and scenes",
    "imagenetv2": "everyday objects, animals and scenes",
    "imagenet_sketch": "everyday objects and animals, drawn as sketches",
    "imagenet_a": "everyday objects and animals in unusual, hard photographs",
    "imagenet_r": "everyday objects and animals as art, cartoons, sculptures and other renditions",
    "caltech101": "everyday objects and animals",
    "oxford_pets": "cat and dog breeds",
    "stanford_cars": "car models (make, model and year)",
    "oxford_flowers": "flower species",
    "food101": "dishes of food",
    "fgvc_aircraft": "aircraft models",
    "sun397": "scene categories",
    "dtd": "texture types",
    "eurosat": "land use and land cover in satellite images",
    "ucf101": "human actions in video frames",
}
"""What the classes of each dataset are, in words: the LLM sees it with the class names (paper Fig. 3)."""


def _folder(version: str) -> Any:  # a Traversable (its import path moved in Python 3.11)
    return resources.files("sempt_cli.knowledge").joinpath("prompts").joinpath(version)


def available_versions() -> list[str]:
    root = resources.files("sempt_cli.knowledge").joinpath("prompts")
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("_"))


@cache
def load_templates(version: str) -> dict[str, Template]:
    """Every template of `version`, or a one-sentence error naming the versions that exist."""
    folder = _folder(version)
    if not folder.is_dir():
        raise SettingsError(
            f"Unknown prompt-template version {version!r}; available: {', '.join(available_versions())}."
        )
    missing = [name for name in TEMPLATE_NAMES if not folder.joinpath(f"{name}.txt").is_file()]
    if missing:
        raise SettingsError(f"Prompt-template version {version!r} lacks {', '.join(missing)}.txt.")
    return {name: Template(folder.joinpath(f"{name}.txt").read_text(encoding="utf-8")) for name in TEMPLATE_NAMES}


def render(version: str, name: str, **values: object) -> str:
    """Fill template `name`; a missing value is a bug in the caller (KeyError), not a user error."""
    return load_templates(version)[name].substitute({k: str(v) for k, v in values.items()}).strip()


def dataset_context(dataset: str) -> dict[str, str]:
    """`$dataset` and `$domain` for a dataset key; a registered dataset's domain is its `data add --domain`."""
    info = get_dataset_info(dataset)
    return {"dataset": info.display_name, "domain": info.domain or DOMAINS.get(info.key, "visual categories")}


def class_lines(labels: Sequence[int], classnames: Sequence[str]) -> str:
    """One JSON object per line: the id the answer must echo and the name as CLIP reads it."""
    return "\n".join(json.dumps({"id": label, "name": prompt_name(classnames[label])}) for label in labels)


def bullet_lines(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)
