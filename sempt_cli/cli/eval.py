"""`sempt eval`: score checkpoints (or zero-shot CLIP) under the papers' protocols; tables against the papers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sempt_cli.cli.options import overrides_from_options, resolve_from_options, settings_options
from sempt_cli.errors import SettingsError

ZEROSHOT_ONLY = ("model.backbone", "model.pretrained", "model.checkpoint", "data.dataset")
"""Flags that choose the zero-shot model; a checkpoint's own backbone and dataset come from its sidecar."""


@settings_options("paths", "model", "data", "eval", "sempt.inference")
def eval_command(
    options: dict[str, Any],
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(metavar="[PATH]...", show_default=False,
                       help="Checkpoints (RUN/model.safetensors: teachers, students; one per seed) and/or earlier "
                            "records (results/runs/.../*.json) to re-render."),
    ] = None,
    zeroshot: Annotated[
        bool, typer.Option("--zeroshot", help="Also score zero-shot CLIP (--backbone, --pretrained, --dataset, "
                                              "--setting).")
    ] = False,
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="A student's teacher checkpoint, if it moved since distillation.")
    ] = None,
    per_class: Annotated[
        bool, typer.Option("--per-class", help="Compare two models class by class (the first vs the second, each "
                                               "one or more seeds): the classes that gain and lose most per view.")
    ] = False,
    top: Annotated[
        int, typer.Option("--top", min=1, help="With --per-class: how many gaining and losing classes per view.")
    ] = 5,
) -> None:
    """Evaluate checkpoints under the papers' protocols, beside the papers' numbers.

    Score checkpoints under base-to-novel, cross-dataset, cross-domain or few-shot evaluation (default: the
    protocol each was trained for; --setting to choose) and print ours vs. the papers with deltas. Seeds are
    averaged (mean ± population std). Records are written under --results-dir and reused when identical."""
    from sempt_cli.pipeline.evaluation import evaluate_runs
    from sempt_cli.report.tables import build_comparisons, render, rich_tables

    resolved = resolve_from_options(options)
    settings = resolved.settings
    given = overrides_from_options(options)
    if not zeroshot:
        clashing = [key for key in ZEROSHOT_ONLY if key in given]
        if clashing:
            raise SettingsError(
                f"{', '.join('--' + k.split('.')[1] for k in clashing)} choose the zero-shot model (--zeroshot); "
                "a checkpoint's backbone and dataset come from its sidecar (use --datasets to choose what to score)."
            )
    setting = settings.data.setting if resolved.sources["data.setting"] != "default" else None
    report = evaluate_runs(inputs or [], settings, zeroshot=zeroshot, setting=setting, teacher=teacher,
                           console=Console(stderr=True), command=["sempt", *sys.argv[1:]])
    if per_class:
        _print_per_class(report.groups, settings.eval.format, top)
        return
    comparisons = build_comparisons(report.groups, compare=settings.eval.compare)
    if settings.eval.format == "table":
        out = Console()
        for table in rich_tables(comparisons):
            out.print(table)
            out.print()
    else:
        typer.echo(render(comparisons, settings.eval.format), nl=False)
    if settings.eval.plots is not None:
        from sempt_cli.report.plots import write_plots

        written = write_plots(comparisons, settings.eval.plots, settings.eval.compare)
        Console(stderr=True, markup=False).print(f"Wrote {len(written)} figure(s) to {settings.eval.plots}")


def _print_per_class(groups: list[Any], fmt: str, top: int) -> None:
    """`--per-class`: the summary, then the largest losses and gains per view (rich, or markdown otherwise)."""
    from sempt_cli.report.per_class import changes_view, compare_per_class, summary_view
    from sempt_cli.report.tables import markdown_table, rich_table

    comparison = compare_per_class(groups)
    views = [summary_view(comparison), *(changes_view(comparison, view, top) for view in comparison.changes)]
    if fmt == "table":
        out = Console()
        for view in views:
            out.print(rich_table(view))
            out.print()
    else:
        typer.echo("\n\n".join(markdown_table(view) for view in views) + "\n", nl=False)
