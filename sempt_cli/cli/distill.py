"""`sempt distill`: train a baseline with SemPT on top (by default): PromptKD from a teacher checkpoint, or a
supervised prompt learner (MMRL, DPT, RESTORE, PromptSRC, ...) from labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sempt_cli.cli.options import METHOD_SECTIONS, overrides_from_options, settings_options
from sempt_cli.cli.render import print_run
from sempt_cli.errors import SettingsError


@settings_options("paths", "model", "data", "train", "prompts", METHOD_SECTIONS, "sempt")
def distill(
    options: dict[str, Any],
    teacher: Annotated[
        Path | None,
        typer.Option("--teacher", help="Teacher checkpoint (model.safetensors of a run); PromptKD only.",
                     show_default=False),
    ] = None,
    baseline: Annotated[
        str, typer.Option("--baseline", help="promptkd (needs --teacher) or a supervised method: mmrl, dpt, ...")
    ] = "promptkd",
) -> None:
    """Train a baseline with SemPT on top (unless --no-sempt): PromptKD from a teacher, or a supervised one.

    PromptKD distils the teacher into a student on the dataset's unlabelled training images; student backbone,
    dataset and setting follow the teacher unless given, and the teacher's seen classes come from its checkpoint.
    A supervised baseline (mmrl, dpt, restore, promptsrc, ...) trains from labels with its official
    hyper-parameters; its own training classes are the seen ones and its frozen text encoder encodes the
    descriptions. SemPT reads <attributes-dir>/<dataset>.json (or --attributes). Everything constant is cached
    (see --teacher-cache-gb, --recompute-teacher)."""
    from sempt_cli.methods import get_method
    from sempt_cli.pipeline.distill import baselines, resolve_distill_settings
    from sempt_cli.pipeline.distill import distill as run
    from sempt_cli.pipeline.runs import resolve_with_preset
    from sempt_cli.pipeline.teacher import train_teacher

    if baseline not in baselines():
        raise SettingsError(f"Unknown baseline {baseline!r}; choose one of {', '.join(baselines())}.")
    overrides, config = overrides_from_options(options), options.get("opt__config")
    console = Console(stderr=True)
    if get_method(baseline).supervised:
        if teacher is not None:
            raise SettingsError(f"{baseline} learns from labels and takes no --teacher; only promptkd distils.")
        resolved = resolve_with_preset(baseline, overrides, config_file=config)
        enabled = resolved.settings.sempt.enabled
        result = train_teacher(baseline, resolved, sempt=enabled, console=console)
    else:
        if teacher is None:
            raise SettingsError(f"{baseline} distils a teacher: pass --teacher RUN/model.safetensors.")
        resolved = resolve_distill_settings(baseline, teacher, overrides, config_file=config)
        enabled = resolved.settings.sempt.enabled
        result = run(baseline, teacher, resolved, console=console)
    title = f"{baseline}{' w/ SemPT' if enabled else ''}{'' if get_method(baseline).supervised else ' student'}"
    print_run(f"{title} on {resolved.settings.data.dataset}", result.metrics, result.checkpoint)
