"""Rich rendering shared by the training commands."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_run(title: str, metrics: Mapping[str, float], checkpoint: Path) -> None:
    """One-row table of a finished run's metrics, what the scores left out, then where its checkpoint is; under
    `torchrun` from rank 0 only (every rank returns the same metrics)."""
    from sempt_cli.engine.distributed import is_main_process
    from sempt_cli.pipeline.runs import UNREADABLE

    if not is_main_process():
        return
    scores = {key: value for key, value in metrics.items() if key != UNREADABLE}
    table = Table(title=escape(title))
    for key in scores:
        table.add_column(key, justify="right")
    table.add_row(*(f"{value:.2f}" for value in scores.values()))
    console = Console()
    console.print(table)
    if metrics.get(UNREADABLE):
        console.print(f"[yellow]These scores leave out {int(metrics[UNREADABLE])} unreadable test image(s) "
                      "(data.on_corrupt = skip).[/]")
    console.print(f"Checkpoint: {escape(str(checkpoint))}")
