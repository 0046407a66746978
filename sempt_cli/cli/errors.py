"""Render user-facing errors as one rich-formatted sentence instead of a traceback."""

from __future__ import annotations

from rich.console import Console

from sempt_cli.errors import SemptError

error_console = Console(stderr=True, highlight=False)


def report(error: SemptError) -> None:
    error_console.print(f"[bold red]Error:[/] {error.message}")
    if error.hint:
        error_console.print(f"[dim]{error.hint}[/]")
