"""`sempt embed`: cache a trained teacher's class vectors for every class of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sempt_cli.cli.options import resolve_from_options, settings_options


@settings_options("paths", "model", "data")
def embed(
    options: dict[str, Any],
    teacher: Annotated[Path, typer.Option("--teacher", help="Teacher checkpoint (model.safetensors of a run).")],
) -> None:
    """Compute the teacher's text features for all classes (base and novel) once; later commands reuse them.
    With --dataset other than the teacher's, the target dataset's classes are encoded (cross-dataset)."""
    from sempt_cli.pipeline.embed import embed_classes

    settings = resolve_from_options(options).settings
    result = embed_classes(teacher, settings, console=Console(stderr=True))
    state = "reused" if result.reused else "computed"
    n, d = result.vectors.shape
    Console().print(f"Class vectors {state}: {n} classes × {d} dims → {result.path}")
