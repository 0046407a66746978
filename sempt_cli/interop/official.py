"""The official checkpoint layouts that methods declare, found by method and by file, and the official folder names.

Each method whose official code saves Dassl checkpoints declares its `Layout` (`sempt_cli.models.official_layout`)
in its own file as `Method.official_layout` (PromptSRC/IVLP: spec/promptkd-promptsrc.md §1, §3.1, §7.1; PromptKD
students: §3.2; MMRL: spec/mmrl.md §1.2–§1.5, §6.15). This module collects them from the method registry, tells
which family a file is from, and reads dataset, setting, shots and seed off the official output folders. Reading
and writing the files is `interop.dassl`; building models and sidecars is `interop.convert`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from sempt_cli.data.registry import DEMO_KEY, canonical_dataset_name
from sempt_cli.errors import WeightsError
from sempt_cli.methods.promptsrc import PROMPTSRC_TEACHER
from sempt_cli.models.official_layout import Geometry, Layout, some
from sempt_cli.protocol import get_method, method_names
from sempt_cli.settings import STANDARD_SHOTS

if TYPE_CHECKING:
    from sempt_cli.models.prompted import DeepPrompts

OFFICIAL_TEACHER_DEPTH = 9
"""PromptKD's `load_clip_to_cpu_teacher` builds every teacher with IVLP depth 9/9 and 4/4 tokens (spec §3.1)."""


def official_layouts() -> dict[str, Layout]:
    """Every official layout a registered method declares, by name (built-in methods and plug-ins alike)."""
    found: dict[str, Layout] = {}
    for name in method_names():
        layout = get_method(name).official_layout
        if layout is not None:
            found.setdefault(layout.name, layout)
    return found


def layout_for(kind: str, method: str) -> Layout:
    """The official layout one of our checkpoints (sidecar `kind`, `method`) is written in."""
    for layout in official_layouts().values():
        if layout.kind == kind and method in layout.methods:
            return layout
    known = ", ".join(f"{m} {layout.kind}s" for layout in official_layouts().values() for m in layout.methods)
    raise WeightsError(f"There is no official checkpoint layout for {method} {kind}s; there is one for {known}.")


def detect_layout(state: Mapping[str, Tensor], layouts: Iterable[Layout] | None = None) -> Layout | None:
    """Which official family a state dict is from, if any: a layout whose marker key it has. Families may share a
    key (a text context `prompt_learner.ctx` is in more than one trainer's files), so when several markers match,
    the layout that leaves the fewest of its tensors unaccounted for wins (the first declared on a tie).
    `layouts` defaults to every declared one."""
    candidates = [layout for layout in (official_layouts().values() if layouts is None else layouts)
                  if any(key == layout.marker or (layout.marker.endswith(".") and key.startswith(layout.marker))
                         for key in state)]
    return min(candidates, key=lambda layout: _unaccounted(layout, state)) if candidates else None


def _unaccounted(layout: Layout, state: Mapping[str, Tensor]) -> int:
    """How many of `state`'s tensors `layout` has no place for: neither learned, nor frozen, nor dropped."""
    mapped = {rule.official for rule in layout.rules(layout.geometry(state))}
    return sum(key not in mapped and key not in layout.dropped and layout.frozen_name(key) is None for key in state)


def prompt_keys(vision_depth: int, text_depth: int) -> dict[str, str]:
    """`vision.<i>` / `text.<i>` (layer i of a tower's `DeepPrompts`) -> official name, for the teacher layout."""
    depths = {"vision": vision_depth, "text": text_depth}
    return {f"{stack.tower}.{layer}": stack.official(layer)
            for stack in PROMPTSRC_TEACHER.stacks for layer in range(depths[stack.tower])}


def shallow_teacher_warning(geometry: Geometry, source: str) -> str | None:
    """The spec §5.7 trap, said out loud: PromptKD builds its teacher 9 deep and loads with strict=False, so a
    shallower checkpoint (e.g. a depth-3 cross-dataset PromptSRC) leaves the deeper prompts random there."""
    shallow = {t: d for t, d in geometry.depths.items() if 0 < d < OFFICIAL_TEACHER_DEPTH}
    if not shallow:
        return None
    held = " and ".join(f"{t} prompts {d} deep" for t, d in shallow.items())
    random = ", ".join(f"{t} blocks {d}..{OFFICIAL_TEACHER_DEPTH - 1}" for t, d in shallow.items())
    return (
        f"{source} holds {held}, but the official PromptKD code builds its teacher {OFFICIAL_TEACHER_DEPTH} deep and, "
        f"loading with strict=False, keeps random prompts where the file has none ({random}): students it distilled "
        f"from this file learned from a partly random teacher. sempt imports the depth the file holds "
        f"({geometry.describe()}) and keeps no random prompt."
    )


# ---------------------------------------------------------------------------------------------------- datasets

OFFICIAL_FOLDERS: dict[str, tuple[str, str | None]] = {
    "standfordcars": ("stanford_cars", None),  # teacher_model/README.md's spelling (spec §3.1)
    "imagenetxd": ("imagenet", "cross-dataset"),  # teacher_model/ImageNet-xd/VLPromptLearner_large/model.pth.tar-20
}
"""Folder spellings of the published layouts that the dataset registry does not know, with the setting they imply."""

SETTING_FOLDERS = {"base2new": "base2novel", "base2novel": "base2novel", "fewshot": "few-shot",
                   "crossdataset": "cross-dataset", "xd": "cross-dataset", "crossdomain": "cross-domain",
                   "vitb16fewshot": "few-shot"}
"""Folder names of the official output layouts (`output/base2new/train_base/<dataset>/...`) and their setting."""

CROSS_DATASET_CONFIG = "crossdatasets"
"""In a config folder's name, the mark of a cross-dataset run (MMRL's `vit_b16_cross_datasets`, MaPLe's
`vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots`). MMRL's cross-dataset runs sit under `output/base2new/...`:
their config folder, deeper in the path and so read first, says what they are."""

_SEARCH_DEPTH = 8  # output/base2new/train_base/<dataset>/shots_16/<trainer>/<cfg>/seed1/VLPromptLearner/<file>


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def dataset_from_path(path: str | Path) -> tuple[str | None, str | None]:
    """(dataset key, setting) read off the official folder layout of `path`, each None when it does not say.

    `teacher_model/<DATASET.NAME>/VLPromptLearner/model-best.pth.tar` (incl. the README's "StandfordCars" and
    "ImageNet-xd") and `output/<setting>/.../<dataset>/...` are recognised; the demo world never is."""
    dataset, setting = None, None
    for part in list(Path(path).parts[:-1])[::-1][:_SEARCH_DEPTH]:
        key = _normalise(part)
        if dataset is None:
            if key in OFFICIAL_FOLDERS:
                dataset, implied = OFFICIAL_FOLDERS[key]
                setting = setting or implied
            else:
                found = canonical_dataset_name(part)
                dataset = found if found != DEMO_KEY else None
        if setting is None and key in SETTING_FOLDERS:
            setting = SETTING_FOLDERS[key]
        elif setting is None and CROSS_DATASET_CONFIG in key:
            setting = "cross-dataset"
    return dataset, setting


def run_from_path(path: str | Path) -> dict[str, int]:
    """`data.shots` and `data.seed` read off the official output folders (`shots_4/.../seed2`, `seed_1`), where
    they say; the few-shot curves and `sempt eval` records are keyed by them."""
    found: dict[str, int] = {}
    for part in list(Path(path).parts[:-1])[::-1][:_SEARCH_DEPTH]:
        if (match := re.fullmatch(r"shots_(\d+)", part)) and int(match.group(1)) in (0, *STANDARD_SHOTS):
            found.setdefault("data.shots", int(match.group(1)))
        elif match := re.fullmatch(r"seed_?(\d+)", part):
            found.setdefault("data.seed", int(match.group(1)))
    return found


def official_prompt_keys(vision_depth: int, text_depth: int) -> dict[str, str]:
    """Where the official PromptSRC / PromptKD code stores each of our prompt tensors (spec §3.1, §7.1).

    Keys are `vision.<i>` / `text.<i>` (layer i of that tower's `DeepPrompts`), values the official names.
    """
    return prompt_keys(vision_depth, text_depth)


def _deep_prompts(tower: nn.Module | None, name: str) -> DeepPrompts | None:
    """The IVLP prompts of a prompted tower (None for no tower): what official prompts are copied into."""
    from sempt_cli.models.prompted import DeepPrompts  # open_clip loads only when prompts are imported

    if tower is None:
        return None
    prompts = getattr(tower, "prompts", None)
    if not isinstance(prompts, DeepPrompts):
        raise WeightsError(f"The {name} tower has no IVLP deep prompts to import official prompts into.")
    return prompts


def import_official_prompts(
    state: Mapping[str, Tensor],
    *,
    vision: nn.Module | None = None,
    text: nn.Module | None = None,
    source: str = "the official checkpoint",
) -> list[str]:
    """Copy IVLP prompts from an official PromptSRC/PromptKD state dict into prompted towers.

    Missing or mis-shaped prompts are an error: the official loader's strict=False would leave them random
    (spec §5.7). Only the prompts are read; the checkpoint's (GPA-perturbed) backbone copy is not.
    """
    towers = {"vision": _deep_prompts(vision, "vision"), "text": _deep_prompts(text, "text")}
    depths = {name: len(prompts.tokens) if prompts is not None else 0 for name, prompts in towers.items()}
    mapping = official_prompt_keys(depths["vision"], depths["text"])
    missing = [official for official in mapping.values() if official not in state]
    if missing:
        raise WeightsError(
            f"{source} lacks prompts this model needs: {some(missing)}.",
            "Was it trained with a smaller prompt depth? Set the depth it was trained with.",
        )
    used = []
    with torch.no_grad():
        for ours, official in mapping.items():
            tower_name, layer = ours.split(".")
            prompts = towers[tower_name]
            assert prompts is not None  # official_prompt_keys maps only the towers given (depth > 0)
            target = prompts.tokens[int(layer)]
            value = state[official]
            if tuple(value.shape) != tuple(target.shape):
                raise WeightsError(
                    f"{source}: {official} is {tuple(value.shape)} but the model expects {tuple(target.shape)}."
                )
            target.copy_(value.to(target))
            used.append(official)
    return used
