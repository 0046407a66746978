"""`sempt distill`: train a student from a teacher checkpoint (PromptKD stage II)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sempt_cli.cli.options import overrides_from_options, settings_options
from sempt_cli.cli.render import print_run
from sempt_cli.errors import SettingsError


@settings_options("paths", "model", "data", "train", "prompts", "promptkd", "sempt")
def distill(
    options: dict[str, Any],
    teacher: Annotated[Path, typer.Option("--teacher", help="Teacher checkpoint (model.safetensors of a run).")],
    baseline: Annotated[str, typer.Option("--baseline", help="Distillation baseline: promptkd.")] = "promptkd",
) -> None:
    """Distill a teacher into a student (PromptKD, with SemPT unless --no-sempt).

    Distill the teacher into a student on the dataset's unlabelled training images, with the official
    hyper-parameters as defaults; student backbone, dataset and setting follow the teacher unless given.
    SemPT reads <attributes-dir>/<dataset>.json (or --attributes); the teacher's seen classes come from its
    checkpoint. Teacher class vectors, description vectors and image features are cached (see
    --teacher-cache-gb, --recompute-teacher)."""
    from sempt_cli.pipeline.distill import BASELINES, resolve_distill_settings
    from sempt_cli.pipeline.distill import distill as run

    if baseline not in BASELINES:
        raise SettingsError(f"Unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}.")
    resolved = resolve_distill_settings(baseline, teacher, overrides_from_options(options),
                                        config_file=options.get("opt__config"))
    result = run(baseline, teacher, resolved, console=Console(stderr=True))
    title = f"{baseline}{' w/ SemPT' if resolved.settings.sempt.enabled else ''} student"
    print_run(f"{title} on {resolved.settings.data.dataset}", result.metrics, result.checkpoint)
