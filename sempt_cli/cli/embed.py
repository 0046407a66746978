"""`sempt embed`: cache a trained teacher's class vectors for every class of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sempt_cli.cli.options import resolve_from_options, settings_options


@settings_options("paths", "model", "data", "sempt")
def embed(
    options: dict[str, Any],
    teacher: Annotated[Path, typer.Option("--teacher", help="Teacher checkpoint (model.safetensors of a run).")],
) -> None:
    """Cache a teacher's class vectors (and description vectors) for all classes.

    Compute the teacher's text features for all classes (base and novel) once; later commands reuse them.
    With --dataset other than the teacher's, the target dataset's classes are encoded (cross-dataset).
    With --attributes, also the descriptions (T_atr, N×S×d) with the encoder chosen by --attr-encoder."""
    from sempt_cli.pipeline.embed import embed_classes

    settings = resolve_from_options(options).settings
    console, out = Console(stderr=True), Console(markup=False)  # paths may hold brackets
    result = embed_classes(teacher, settings, console=console)
    n, d = result.vectors.shape
    out.print(f"Class vectors {'reused' if result.reused else 'computed'}: {n} classes × {d} dims → {result.path}")
    attributes = settings.sempt.attributes
    if attributes is not None:
        from sempt_cli.pipeline.attributes import embed_attributes

        described = embed_attributes(teacher, attributes, settings, console=console)
        n, s, d = described.vectors.shape
        out.print(f"Description vectors ({described.encoder}) {'reused' if described.reused else 'computed'}: "
                  f"{n} classes × {s} descriptions × {d} dims → {described.path}")
