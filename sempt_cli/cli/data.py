"""`sempt data ...`: list the supported datasets, register your own, check a data root, build the demo world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sempt_cli.cli.options import reflow, resolve_from_options, settings_options
from sempt_cli.data import DATASETS, DEMO_KEY, canonical_dataset_name, check_data_root
from sempt_cli.data.registry import user_datasets
from sempt_cli.errors import DatasetError, SettingsError

app = typer.Typer(help="Datasets: list them, register your own, check a data root, build the demo world.",
                  no_args_is_help=True)
console = Console()


@app.command("list")
def list_datasets() -> None:
    """Every supported dataset with its folder, class count, split sizes and prompt template, then your own."""
    from sempt_cli.data.user import datasets_dir

    table = Table(title="Supported datasets")
    for column in ("key", "name", "folder under data root", "classes", "train / val / test", "template"):
        table.add_column(column)
    for info in DATASETS.values():
        sizes = " / ".join(f"{n:,}" for n in info.sizes) if info.sizes else "generated"
        folder = "(cache dir; generated)" if info.key == DEMO_KEY else f"{info.folder}/"
        table.add_row(info.key, info.display_name, folder, str(info.num_classes), sizes, info.template)
    console.print(table)
    registered = user_datasets()
    if not registered:
        console.print(f"No datasets of your own yet (entries in {datasets_dir()}); add one with "
                      "`sempt data add NAME PATH`.")
        return
    own = Table(title=f"Your datasets (entries in {datasets_dir()})")
    for column in ("key", "folder", "classes", "train / val / test", "template", "domain"):
        own.add_column(column, overflow="fold")
    for info in registered.values():
        sizes = " / ".join(f"{n:,}" for n in info.sizes or ())
        own.add_row(info.key, info.folder, str(info.num_classes), sizes, info.template, info.domain or "")
    console.print(own)


_ADD_HELP = """Register your own images as a dataset every command accepts (--dataset NAME).

Checks every image once (unreadable files, empty classes, duplicate files, classes with fewer training images
than --shots, class names longer than CLIP's context), then writes a split_zhou_<Name>.json (CoOp's 50/20/30
per class with a fixed seed, unless the manifest gives a split) and a small TOML entry under
$SEMPT_DATASETS_DIR (default ~/.config/sempt/datasets). On any problem nothing is written."""


@app.command("add", help=reflow(_ADD_HELP))
def add(
    name: Annotated[str, typer.Argument(help="Name to use with --dataset (lower-case letters, digits, _ and -).")],
    path: Annotated[Path, typer.Argument(help="A folder with one sub-folder per class, or a CSV/JSON manifest "
                                              "(path, label, optional split).")],
    template: Annotated[str, typer.Option("--template", help="Zero-shot prompt with {} for the class name.")] = (
        "a photo of a {}."),
    classnames: Annotated[Path | None, typer.Option(
        "--classnames", help="Class names, one per line in label order (sorted folder order for a folder), or "
                             "folder<TAB>name lines; default: folder names with _ as spaces.")] = None,
    domain: Annotated[str | None, typer.Option(
        "--domain", help="What the classes are, in words (e.g. 'bird species'), for gen-attributes' prompts.")] = None,
    shots: Annotated[int, typer.Option(
        "--shots", help="The most shots you will train with: every class needs this many training images "
                        "(0: no check).")] = 16,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing registration of NAME.")] = False,
) -> None:
    """Validate PATH once and register it as NAME (help: _ADD_HELP)."""
    from sempt_cli.data.add import add_dataset

    with console.status(f"Checking {path} ..."):
        result = add_dataset(name, path, template=template, classnames_file=classnames, domain=domain, shots=shots,
                             force=force)
    entry = result.entry
    sizes = " / ".join(str(n) for n in entry.sizes)
    how = "generated (50/20/30 per class, fixed seed)" if entry.generated_split else "from the manifest"
    if not result.written:
        console.print(f"Dataset [bold]{name}[/] is already registered with exactly this data; nothing to do.")
        return
    console.print(f"Registered [bold]{name}[/]: {len(entry.classnames)} classes, train / val / test = {sizes} images; "
                  f"split {how} in {entry.split_file}; entry {result.entry_file}.")
    if result.ignored_files:
        console.print(f"[dim]{result.ignored_files} file(s) without an image extension were ignored.[/]")
    console.print(f"Use it with [bold]--dataset {name}[/] (or as a target: --datasets {name}).")


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="A dataset registered with `sempt data add`.")]) -> None:
    """Forget a registered dataset (its entry and its split file; the images are not touched)."""
    from sempt_cli.data.user import remove_entry

    if name not in user_datasets():
        raise DatasetError(f"No dataset {name!r} is registered; `sempt data list` shows the registered ones.")
    for path in remove_entry(name):
        console.print(f"Removed {path}")


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
