"""The `sempt` command: registers the sub-commands and turns `SemptError` into a one-line message."""

from __future__ import annotations

from typing import Annotated

import typer

from sempt_cli import __version__
from sempt_cli.cli import config, data
from sempt_cli.cli import interop as interop_cli
from sempt_cli.cli.ablate import ablate
from sempt_cli.cli.demo import demo
from sempt_cli.cli.distill import distill
from sempt_cli.cli.embed import embed
from sempt_cli.cli.errors import report
from sempt_cli.cli.eval import eval_command
from sempt_cli.cli.few_shot import few_shot
from sempt_cli.cli.gen_attributes import gen_attributes
from sempt_cli.cli.reproduce import reproduce, reproduce_job
from sempt_cli.cli.train_teacher import train_teacher
from sempt_cli.errors import SemptError

app = typer.Typer(
    name="sempt",
    help="Semantic Prompt Tuning (SemPT) and the CLIP prompt learners it builds on.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)
app.add_typer(config.app, name="config")
app.add_typer(data.app, name="data")
app.add_typer(interop_cli.app, name="interop")
app.command("train-teacher")(train_teacher)
app.command("embed")(embed)
app.command("gen-attributes")(gen_attributes)
app.command("distill")(distill)
app.command("eval")(eval_command)
app.command("ablate")(ablate)
app.command("few-shot")(few_shot)
app.command("reproduce")(reproduce)
app.command("reproduce-job", hidden=True)(reproduce_job)
app.command("demo")(demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sempt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Reproduce, extend and ablate SemPT on strong CLIP prompt-learning baselines."""


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SemptError as error:
        report(error)
        raise SystemExit(2) from None
