"""`sempt data ...`: list the supported datasets, check a data root, build the demo world."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sempt_cli.cli.options import resolve_from_options, settings_options
from sempt_cli.data import DATASETS, DEMO_KEY, canonical_dataset_name, check_data_root
from sempt_cli.errors import SettingsError

app = typer.Typer(help="Datasets: list them, check a data root, build the demo world.", no_args_is_help=True)
console = Console()


@app.command("list")
def list_datasets() -> None:
    """Every supported dataset with its folder, class count, split sizes and prompt template."""
    table = Table(title="Supported datasets")
    for column in ("key", "name", "folder under data root", "classes", "train / val / test", "template"):
        table.add_column(column)
    for info in DATASETS.values():
        sizes = " / ".join(f"{n:,}" for n in info.sizes) if info.sizes else "generated"
        folder = "(cache dir; generated)" if info.key == DEMO_KEY else f"{info.folder}/"
        table.add_row(info.key, info.display_name, folder, str(info.num_classes), sizes, info.template)
    console.print(table)


_STATE_STYLE = {"found": "green", "missing": "yellow", "malformed": "red"}


@app.command("check")
@settings_options("paths")
def check(
    options: dict[str, Any],
    datasets: Annotated[list[str] | None, typer.Argument(help="Datasets to check (default: all real ones).")] = None,
    deep: Annotated[bool, typer.Option("--deep", help="Also decode every image (slow on big datasets).")] = False,
) -> None:
    """Report per dataset under the data root: found (with split sizes), missing (what to download and where),
    or malformed (which file, what is wrong). Exits 1 if any requested dataset is not usable."""
    settings = resolve_from_options(options).settings
    names = None
    if datasets:
        names = []
        for name in datasets:
            key = canonical_dataset_name(name)
            if key is None:
                raise SettingsError(f"Unknown dataset {name!r}; see `sempt data list`.")
            names.append(key)
    statuses = check_data_root(settings.paths.data_root, names, deep=deep)
    table = Table(title=f"Data root {escape(str(settings.paths.data_root))}", show_lines=True)
    for column in ("dataset", "state", "details"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        style = _STATE_STYLE[status.state]
        table.add_row(status.name, f"[{style}]{status.state}[/]", escape(status.message))
    console.print(table)
    if names is not None and any(s.state != "found" for s in statuses):
        raise typer.Exit(1)


@app.command("demo")
@settings_options("paths")
def demo(options: dict[str, Any]) -> None:
    """Generate (or find) the built-in demo world in the cache and print where it is."""
    from sempt_cli.data import load_dataset
    from sempt_cli.data.demo import ensure_demo_world

    settings = resolve_from_options(options).settings
    with console.status("Generating the demo world ..."):
        root = ensure_demo_world(settings.paths.cache_dir)
    splits = load_dataset(DEMO_KEY, root)
    sizes = splits.split_sizes()
    console.print(
        f"Demo world at [bold]{escape(str(root / 'demo'))}[/]: {sizes['classes']} classes, "
        f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test images."
    )
