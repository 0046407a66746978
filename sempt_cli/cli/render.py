"""Rich rendering shared by the training commands."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table


def print_run(title: str, metrics: Mapping[str, float], checkpoint: Path) -> None:
    """One-row table of a finished run's metrics, then where its checkpoint is; under `torchrun` from rank 0 only
    (every rank returns the same metrics)."""
    from sempt_cli.engine.distributed import is_main_process

    if not is_main_process():
        return
    table = Table(title=title)
    for key in metrics:
        table.add_column(key, justify="right")
    table.add_row(*(f"{value:.2f}" for value in metrics.values()))
    console = Console()
    console.print(table)
    console.print(f"Checkpoint: {checkpoint}")
