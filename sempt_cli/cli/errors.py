"""Render user-facing errors as one rich-formatted sentence instead of a traceback.

The sentence is escaped: paths and user text may hold `[name]`, which rich would take for markup and drop.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from sempt_cli.errors import SemptError

error_console = Console(stderr=True, highlight=False, soft_wrap=True)  # a wrapped path cannot be copied


def report(error: SemptError) -> None:
    error_console.print(f"[bold red]Error:[/] {escape(error.message)}")
    if error.hint:
        error_console.print(f"[dim]{escape(error.hint)}[/]")
