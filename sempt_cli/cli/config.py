"""`sempt config show`: the resolved settings and where each value came from."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sempt_cli.cli.options import METHOD_SECTIONS, resolve_from_options, settings_options
from sempt_cli.settings import CORE_SECTIONS

app = typer.Typer(help="Inspect the resolved settings.", no_args_is_help=True)


@app.command("show")
@settings_options(*CORE_SECTIONS, METHOD_SECTIONS)
def show(
    options: dict[str, Any],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print every setting, its value, and its source (flag, environment, config file, preset or default)."""
    resolved = resolve_from_options(options)
    if as_json:
        payload = {key: {"value": value, "source": source} for key, value, source in resolved.rows()}
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    table = Table(title="sempt settings", show_lines=False)
    table.add_column("setting", style="cyan")
    table.add_column("value")
    table.add_column("source", style="dim")
    for key, value, source in resolved.rows():
        table.add_row(key, escape(str(value)), escape(source))
    Console().print(table)
