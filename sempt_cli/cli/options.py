"""Generate Typer options from the settings model, so flags never drift from the settings they set.

`@settings_options("data", "model")` adds one `--flag` per leaf setting of those sections (booleans get a
`--flag/--no-flag` pair) plus `--config`, and hands the command a resolved `ResolvedSettings` as `resolved`.
Values arrive as text and are validated by pydantic, so a bad flag is reported exactly like a bad
environment variable or config-file entry.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sempt_cli.errors import SettingsError
from sempt_cli.settings import (
    CORE_SECTIONS,
    ResolvedSettings,
    SettingField,
    iter_fields,
    load_settings,
    section_title,
    sections,
)

METHOD_SECTIONS = "@methods"
"""Stands for every method's own settings section in `settings_options(...)` (they come from the registry)."""


def _option_for(field: SettingField) -> inspect.Parameter:
    help_text = f"{field.description} [default: {field.default}; env {field.env_var}]"
    if field.is_bool:
        flags = (f"--{field.flag_name}/--no-{field.flag_name}",)
        annotation: Any = Annotated[Optional[bool], typer.Option(*flags, help=help_text,  # noqa: UP045
                                                                 rich_help_panel=section_title(field.section),
                                                                 show_default=False)]
    else:
        annotation = Annotated[Optional[str], typer.Option(field.flag, help=help_text,  # noqa: UP045
                                                           rich_help_panel=section_title(field.section),
                                                           show_default=False, metavar="VALUE")]
    return inspect.Parameter(
        f"opt__{field.section}__{field.name}", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


_CONFIG_PARAM = inspect.Parameter(
    "opt__config",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", help="TOML config file (default: $SEMPT_CONFIG, then ./sempt.toml).",
                     rich_help_panel="Paths", show_default=False),
    ],
)


def overrides_from_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The flags the user actually gave, keyed by dotted setting name."""
    return {
        name.removeprefix("opt__").replace("__", ".", 1): value
        for name, value in options.items()
        if name != "opt__config" and value is not None
    }


def reflow(docstring: str) -> str:
    """One line per paragraph: rich help keeps a docstring's line breaks, which would wrap mid-sentence."""
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def parse_list(text: str | None, flag: str, kind: type = str) -> list[Any] | None:
    """A comma-separated flag value as a list of `kind`, or None when the flag was not given."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise SettingsError(f"{flag} needs at least one value (comma-separated).")
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise SettingsError(f"{flag} must be a comma-separated list of {kind.__name__} values, not {text!r}.") from None


def resolve_from_options(options: Mapping[str, Any]) -> ResolvedSettings:
    return load_settings(overrides_from_options(options), config_file=options.get("opt__config"))


def sections_of_methods() -> list[str]:
    """The settings sections that method plug-ins declared (PromptSRC's, MMRL's, a third-party method's ...)."""
    return [name for name in sections() if name not in CORE_SECTIONS]


def settings_options(*sections: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command taking `options: dict` with generated flags for `sections` (a section, or
    `section.field` for one setting of a section that otherwise does not apply, or `METHOD_SECTIONS` for the
    own sections of every registered method).

    The command receives the raw flag values as `options` and resolves them itself (it may need to pick a
    preset first, e.g. from `--method`), usually with `resolve_from_options(options, preset)`.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True)
        chosen = [name for name in sections if name != METHOD_SECTIONS]
        if METHOD_SECTIONS in sections:
            chosen += [name for name in sections_of_methods() if name not in chosen]
        generated = [_option_for(field) for field in iter_fields(chosen) if field.flag_name] + [_CONFIG_PARAM]
        kept = [p for p in own.parameters.values() if p.name != "options"]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            options = {name: kwargs.pop(name) for name in list(kwargs) if name.startswith("opt__")}
            return command(options=options, **kwargs)

        parameters = kept + generated
        wrapper.__doc__ = reflow(command.__doc__ or "")
        wrapper.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]  # read by inspect
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__
        return wrapper

    return decorate
