"""Presets as data: a method's official hyper-parameters per setting, dataset and backbone, as a table of rules.

A preset is read top to bottom; every rule whose conditions hold contributes its values, later rules winning::

    PRESETS = Presets(
        Rule({"train.epochs": 20, "train.lr": 0.0025}),                          # always
        Rule({"train.epochs": 50}, when={"data.setting": "few-shot"}),
        Rule({"train.lr": 0.005}, when={"backbone": "L-14"}),                    # substring of the backbone name
        Rule({"data.batch_size": 16}, when={"demo": True}),                       # the built-in demo CLIPs
    )

Conditions name a dotted setting (one value, or a collection of accepted values, or a predicate), a value the
rules above have set (`preset:train.epochs`, same forms), `backbone` (a substring) or `demo`. A value is a
constant, or `Computed(fn)` for the few that are derived (a per-dataset table, a scaled epoch count): `fn` sees
the settings, the backbone and the values collected so far.
Presets sit below everything the user says (`load_settings`), so a flag always wins.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from sempt_cli.settings import Settings

DEMO_BACKBONE_PREFIX = "sempt-demo"


def is_demo_backbone(backbone: str) -> bool:
    """The built-in tiny CLIPs of the demo world (their presets scale depth, batch and crops to them)."""
    return backbone.startswith(DEMO_BACKBONE_PREFIX)


@dataclass(frozen=True)
class PresetContext:
    """What a `Computed` value or a predicate sees: the first-pass settings, the backbone, the values so far."""

    settings: Settings
    backbone: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Computed:
    """A preset value derived from the context (e.g. λ from a per-dataset table)."""

    compute: Callable[[PresetContext], Any]


@dataclass(frozen=True)
class Rule:
    """`values` apply when every condition in `when` holds (see the module docstring)."""

    values: Mapping[str, Any]
    when: Mapping[str, Any] = field(default_factory=dict)

    def applies(self, context: PresetContext) -> bool:
        return all(_holds(key, expected, context) for key, expected in self.when.items())


def _holds(key: str, expected: Any, context: PresetContext) -> bool:
    if key == "demo":
        return is_demo_backbone(context.backbone) == bool(expected)
    if key == "backbone":
        return str(expected) in context.backbone
    actual: Any
    if key.startswith("preset:"):
        actual = context.values.get(key.removeprefix("preset:"))
        if actual is None:
            return False
    else:
        actual = context.settings
        for part in key.split("."):
            actual = getattr(actual, part)
    if callable(expected):
        return bool(expected(actual))
    if isinstance(expected, Collection) and not isinstance(expected, str):
        return actual in expected
    return bool(actual == expected)


@dataclass(frozen=True)
class Presets:
    """An ordered table of rules; `extended` makes a variant's table (CoOp = PromptSRC's table + one rule)."""

    rules: tuple[Rule, ...]

    def __init__(self, *rules: Rule) -> None:
        object.__setattr__(self, "rules", tuple(rules))

    def extended(self, *rules: Rule) -> Presets:
        return Presets(*self.rules, *rules)

    def resolve(self, settings: Settings, backbone: str) -> dict[str, Any]:
        """The dotted-key values of every rule that applies, in order."""
        values: dict[str, Any] = {}
        for rule in self.rules:
            context = PresetContext(settings, backbone, values)
            if rule.applies(context):
                values |= {key: value.compute(PresetContext(settings, backbone, dict(values)))
                           if isinstance(value, Computed) else value for key, value in rule.values.items()}
        return values
