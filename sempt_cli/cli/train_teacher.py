"""`sempt train-teacher`: supervised prompt learning (every registered supervised method: PromptSRC, IVLP, CoOp,
MMRL, ...) on one engine, without SemPT (`sempt distill --baseline METHOD` adds it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sempt_cli.cli.options import METHOD_SECTIONS, overrides_from_options, settings_options
from sempt_cli.cli.render import print_run
from sempt_cli.errors import SettingsError
from sempt_cli.protocol import supervised_method_names


@settings_options("paths", "model", "data", "train", "prompts", METHOD_SECTIONS)
def train_teacher(
    options: dict[str, Any],
    method: Annotated[
        str, typer.Option("--method", help=f"{', '.join(supervised_method_names())} (see `sempt config`).")
    ] = "promptsrc",
    import_official: Annotated[
        Path | None,
        typer.Option("--import-official", metavar="PATH", show_default=False,
                     help="Do not train: import the official code's checkpoint of --method (model-best.pth.tar, "
                          "model.pth.tar-N) into a run folder, as `sempt interop import-teacher` does."),
    ] = None,
) -> None:
    """Train a supervised prompt learner (--method) and evaluate it.

    Train a prompt learner (by default PromptSRC with the official hyper-parameters of the chosen setting),
    save its learned prompts, and evaluate it. Re-running the same command resumes an interrupted run.
    With --import-official PATH nothing is trained: the official checkpoint becomes the run's checkpoint."""
    from sempt_cli.pipeline.runs import resolve_with_preset
    from sempt_cli.pipeline.teacher import train_teacher as run

    if method not in supervised_method_names():
        raise SettingsError(f"Unknown method {method!r}; choose one of {', '.join(supervised_method_names())}.")
    if import_official is not None:
        from sempt_cli.cli.interop import print_import
        from sempt_cli.interop.convert import import_teacher

        imported = import_teacher(import_official, method=method, overrides=overrides_from_options(options),
                                  config_file=options.get("opt__config"), console=Console(stderr=True))
        print_import(imported)
        return
    resolved = resolve_with_preset(method, overrides_from_options(options), config_file=options.get("opt__config"))
    result = run(method, resolved, console=Console(stderr=True))
    print_run(f"{method} on {resolved.settings.data.dataset}", result.metrics, result.checkpoint)
