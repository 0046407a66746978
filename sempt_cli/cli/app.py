"""The `sempt` command: registers the sub-commands and turns `SemptError` into a one-line message.

Sub-commands load lazily (`LazyCommand`): a command's flags come from the settings of every method plug-in, so
building it imports torch and open_clip. `sempt --help` and `sempt --version` read each command's summary from
its source instead (the docstring, via `ast`, without importing it), and only the command that runs is built.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import typer
from typer import _click as click  # typer vendors click: its groups and contexts are these classes, not `click`'s
from typer.core import TyperCommand, TyperGroup

from sempt_cli import __version__
from sempt_cli.cli.errors import report
from sempt_cli.errors import SemptError

APP_SETTINGS: dict[str, Any] = {"pretty_exceptions_enable": False, "rich_markup_mode": "rich",
                                "add_completion": False}
"""How every Typer app of the CLI renders help and errors (the root, and each lazily built command)."""


@dataclass(frozen=True)
class LazyCommand:
    """A sub-command by where it lives: `module:attribute`, a command function or a `typer.Typer` group."""

    name: str
    target: str
    hidden: bool = False

    def load(self) -> click.Command:
        """Import the module and build the click command exactly as `app.command(name)(function)` would."""
        module, attribute = self.target.split(":")
        found = getattr(importlib.import_module(module), attribute)
        command: click.Command
        if isinstance(found, typer.Typer):
            command = typer.main.get_group(found)
        else:
            single = typer.Typer(**APP_SETTINGS)
            single.command(self.name, hidden=self.hidden)(found)
            command = typer.main.get_command(single)
        command.name = self.name
        return command

    def summary(self) -> str:
        """The command's help as its source states it (function docstring, or the group's `help=`), unimported."""
        module, attribute = self.target.split(":")
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            return ""
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == attribute:
                return " ".join(inspect.cleandoc(ast.get_docstring(node) or "").split("\n\n")[0].split())
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == attribute for t in node.targets):
                call = node.value
                for keyword in call.keywords if isinstance(call, ast.Call) else []:
                    if keyword.arg == "help" and isinstance(keyword.value, ast.Constant):
                        return str(keyword.value.value)
        return ""


COMMANDS = (
    LazyCommand("train-teacher", "sempt_cli.cli.train_teacher:train_teacher"),
    LazyCommand("embed", "sempt_cli.cli.embed:embed"),
    LazyCommand("gen-attributes", "sempt_cli.cli.gen_attributes:gen_attributes"),
    LazyCommand("distill", "sempt_cli.cli.distill:distill"),
    LazyCommand("eval", "sempt_cli.cli.eval:eval_command"),
    LazyCommand("ablate", "sempt_cli.cli.ablate:ablate"),
    LazyCommand("few-shot", "sempt_cli.cli.few_shot:few_shot"),
    LazyCommand("reproduce", "sempt_cli.cli.reproduce:reproduce"),
    LazyCommand("reproduce-job", "sempt_cli.cli.reproduce:reproduce_job", hidden=True),
    LazyCommand("demo", "sempt_cli.cli.demo:demo"),
    LazyCommand("config", "sempt_cli.cli.config:app"),
    LazyCommand("data", "sempt_cli.cli.data:app"),
    LazyCommand("interop", "sempt_cli.cli.interop:app"),
)


@cache
def _built(command: LazyCommand) -> click.Command:
    return command.load()


class LazyGroup(TyperGroup):
    """The root group: lists every `COMMANDS` entry, builds one only when it runs (or its own help is asked).

    While the root's help is formatted, commands stand in as summaries: formatting lists every command, and
    building them all would import every method plug-in."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(command.name for command in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = next((command for command in COMMANDS if command.name == cmd_name), None)
        if lazy is None:
            return super().get_command(ctx, cmd_name)
        if self._listing:
            return TyperCommand(lazy.name, help=lazy.summary(), hidden=lazy.hidden)
        return _built(lazy)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="sempt",
    help="Semantic Prompt Tuning (SemPT) and the CLIP prompt learners it builds on.",
    no_args_is_help=True,
    cls=LazyGroup,
    **APP_SETTINGS,
)


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
