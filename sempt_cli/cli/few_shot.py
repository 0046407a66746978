"""`sempt few-shot`: the few-shot protocol (SemPT Fig. 4) for a supervised baseline with and without SemPT."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from sempt_cli.cli.options import METHOD_SECTIONS, overrides_from_options, parse_list, settings_options

DEFAULT_FIGURES = Path("results/few-shot")


@settings_options("paths", "model", "train", "prompts", METHOD_SECTIONS, "sempt",
                  "eval.results_dir", "eval.reuse", "eval.round_per_seed", "eval.plots", "data.batch_size",
                  "data.eval_batch_size", "data.workers", "data.allow_any_shots", "data.on_corrupt")
def few_shot(
    options: dict[str, Any],
    baseline: Annotated[str, typer.Option("--baseline", help="A supervised method: mmrl, dpt, restore, ...")] = "mmrl",
    datasets: Annotated[
        str, typer.Option("--datasets", help="Comma-separated dataset keys, or 'all' for the papers' 11.")
    ] = "demo",
    shots: Annotated[str, typer.Option("--shots", help="Comma-separated shot counts.")] = "1,2,4,8,16",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "1,2,3",
) -> None:
    """Few-shot curves: train a baseline with and without SemPT on 1-16 shots × 3 seeds, then plot and tabulate.

    Every run is an ordinary training run (resumable, reused when finished) with the method's official few-shot
    preset on all classes; the sweep then scores every checkpoint like `sempt eval` and draws SemPT Fig. 4-style
    curves (one per dataset, plus their average) into --plots (default results/few-shot). --sempt or --no-sempt
    keeps one variant only."""
    from sempt_cli.pipeline.fewshot import FewShotPlan, few_shot_datasets, run_few_shot
    from sempt_cli.report.plots import write_plots
    from sempt_cli.report.tables import build_comparisons, rich_tables

    overrides = overrides_from_options(options)
    chosen = overrides.pop("sempt.enabled", None)
    plan = FewShotPlan(
        baseline, few_shot_datasets(parse_list(datasets, "--datasets", str)),
        tuple(parse_list(shots, "--shots", int) or ()), tuple(parse_list(seeds, "--seeds", int) or ()),
        (False, True) if chosen is None else (bool(chosen),),
    )
    console = Console(stderr=True)
    report = run_few_shot(plan, overrides, config_file=options.get("opt__config"), console=console,
                          command=["sempt", *sys.argv[1:]])
    comparisons = build_comparisons(report.groups)
    out = Console()
    for table in rich_tables(comparisons):
        out.print(table)
        out.print()
    folder = Path(overrides.get("eval.plots") or DEFAULT_FIGURES)
    written = write_plots(comparisons, folder)
    console.print(f"Wrote {len(written)} figure(s) to {escape(str(folder))}")
