"""`sempt demo`: the README's first command — the pipeline end to end on the built-in demo world."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from sempt_cli.cli.options import overrides_from_options, parse_list, settings_options


@settings_options("paths", "model", "eval")
def demo(
    options: dict[str, Any],
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds, e.g. 1,2,3 (mean ± std); default one seed.",
                                 show_default=False)
    ] = None,
) -> None:
    """Run the whole pipeline on the built-in demo world (CPU, minutes).

    Generate the demo world, score the zero-shot demo CLIPs, train a PromptSRC teacher on the base classes,
    cache its class vectors, distill a PromptKD student and a PromptKD w/ SemPT student, and print
    base/novel/HM/all for each. Resumable: re-run after an interruption and it continues where it stopped."""
    from sempt_cli.pipeline.demo import run_demo
    from sempt_cli.report.tables import build_comparisons, rich_tables

    report = run_demo(overrides_from_options(options), seeds=parse_list(seeds, "--seeds", int))
    out = Console()
    for table in rich_tables(build_comparisons(report.groups)):
        out.print(table)
