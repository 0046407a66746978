"""`sempt ablate`: SemPT Table 4's grids on PromptKD w/ SemPT, beside the paper's numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sempt_cli.cli.options import overrides_from_options, parse_list, settings_options


@settings_options("paths", "model", "data", "train", "prompts", "promptkd", "sempt", "eval")
def ablate(
    options: dict[str, Any],
    param: Annotated[str, typer.Option("--param", help="alpha, beta, k, embedding, inference or knowledge "
                                                       "(Table 4c/d/e/a/b; inference adds calibrated to 4a).")],
    values: Annotated[
        str | None, typer.Option("--values", help="Comma-separated grid points instead of the paper's (e.g. 0,0.2).",
                                 show_default=False)
    ] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds (default: --seed). The paper uses 1,2,3.",
                                 show_default=False)
    ] = None,
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="Teacher checkpoint (default on the demo world: trained per seed).",
                                  show_default=False)
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Where to write the PNG (default: beside the grid's JSON summary).",
                                  show_default=False)
    ] = None,
) -> None:
    """Run one of SemPT's ablations (Table 4) and print it beside the paper's.

    Grids: alpha 0.2/0.4/0.6/0.8, beta 0.2/0.4/0.6/0.8, k 1/2/3, embedding label/enhanced/hybrid (inference
    rules on one trained student), inference label/enhanced/hybrid/calibrated (the same plus ours, no
    retraining), knowledge names/one-step/two-step (the demo world: names/ground-truth).
    Every cache (teacher features, class and description vectors) is shared by all points; each point is a
    resumable run, so an interrupted ablation continues where it stopped."""
    from sempt_cli.pipeline.ablate import run_ablation
    from sempt_cli.report.ablation import ablation_plot, ablation_view
    from sempt_cli.report.tables import rich_table

    seed_list = parse_list(seeds, "--seeds", int)
    result = run_ablation(param, overrides_from_options(options), values=parse_list(values, "--values", str),
                          seeds=seed_list, teacher=teacher, config_file=options.get("opt__config"),
                          console=Console(stderr=True))
    Console().print(rich_table(ablation_view(result)))
    written = ablation_plot(result, plot or result.path.with_suffix(".png"))
    Console(stderr=True, markup=False).print(f"Grid summary: {result.path}\nPlot: {written}")
