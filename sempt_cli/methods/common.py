"""What several method files share: the frozen template ensemble, tokenised prompts per class list, and the
demo-world preset rules of IVLP-style prompts. Anything here is used by at least two methods; a method's own
helpers stay in its file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.prompted import PromptedTextTower, PromptSpec
from sempt_cli.presets import Rule


def template_ensemble(clip: LoadedClip, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
    """Frozen text features per class, averaged over templates *before* normalising (official quirk, §5.6)."""
    frozen = PromptedTextTower(clip.model, PromptSpec(0), ctx_init=None, tokenizer=clip.tokenizer)
    names = [name.replace("_", " ") for name in classnames]
    total: Tensor | None = None
    with torch.no_grad():
        for template in templates:
            features = frozen.encode(frozen.build_prompts([template.format(n) for n in names])).float()
            total = features if total is None else total + features
    assert total is not None
    return total / len(templates)


T = TypeVar("T")

CACHED_CLASS_LISTS = 4
"""Class lists kept besides the training one: evaluation asks for the same few again and again (base, novel, all,
a transfer target)."""


class PerClassList(Generic[T]):
    """A value built once per class list (tokenised prompts: tokenising 1000 names costs ~40 ms per call): the
    training list's for good (`train`), `CACHED_CLASS_LISTS` others first in, first out."""

    def __init__(self, build: Callable[[Sequence[str]], T], train_classnames: Sequence[str]) -> None:
        self._build = build
        self._train_key = tuple(train_classnames)
        self.train = build(train_classnames)
        self._others: dict[tuple[str, ...], T] = {}

    def __call__(self, classnames: Sequence[str]) -> T:
        key = tuple(classnames)
        if key == self._train_key:
            return self.train
        if key not in self._others:
            if len(self._others) >= CACHED_CLASS_LISTS:
                self._others.pop(next(iter(self._others)))
            self._others[key] = self._build(key)
        return self._others[key]


DEMO_BATCH_AND_CROPS = Rule({"data.batch_size": 16, "data.crop_scale_min": 0.8}, when={"demo": True})
"""The demo CLIPs' CPU-sized batches; their 48-pixel pictures carry object size and position as attributes,
which crops down to 8% of the area destroy (the demo CLIPs were pre-trained with small shifts only), so the demo
crops keep most of the picture."""

DEMO_DEEP_PROMPTS = Rule({"prompts.vision_depth": 4, "prompts.text_depth": 3},
                         when={"demo": True, "preset:prompts.vision_depth": lambda depth: depth > 3})
"""The tiny demo CLIPs have 6/4 (teacher) and 4/3 (student) blocks: keep the official depth *ratio* (9 of 12
layers) instead of a depth they do not have."""

IVLP_DEMO_RULES = (
    DEMO_BATCH_AND_CROPS,
    Rule({"train.lr": 0.01}, when={"demo": True}),
    DEMO_DEEP_PROMPTS,
    Rule({"train.epochs": 10}, when={"demo": True, "preset:train.epochs": lambda epochs: epochs > 10}),
)
"""Demo presets of the IVLP-prompt methods (PromptSRC and its variants, PromptKD, RESTORE): batch 16, lr 0.01,
scaled depth, at most 10 epochs."""
