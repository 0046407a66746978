"""`sempt interop import-teacher|import-student|export`: official PromptSRC / PromptKD / MMRL checkpoints in and
out."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from sempt_cli.cli.options import overrides_from_options, settings_options

if TYPE_CHECKING:
    from sempt_cli.interop.convert import ImportResult

app = typer.Typer(
    help="Use official PromptSRC/PromptKD/MMRL checkpoints, and write results back in their layout.",
    no_args_is_help=True,
)

_OFFICIAL = Annotated[
    Path,
    typer.Argument(metavar="PATH", show_default=False,
                   help="Official Dassl checkpoint (model-best.pth.tar, model.pth.tar-20)."),
]
_OUT = Annotated[
    Path | None,
    typer.Option("--out", help="Where to write (default: a run folder under --output-dir).", show_default=False),
]


@app.command("import-teacher")
@settings_options("paths", "model", "data")
def import_teacher(
    options: dict[str, Any],
    path: _OFFICIAL,
    method: Annotated[
        str | None,
        typer.Option("--method", show_default=False,
                     help="The method the file is from (default: the family its keys show; promptsrc for "
                          "PromptSRC/IVLP files, whose prompts ivlp shares)."),
    ] = None,
    out: _OUT = None,
) -> None:
    """Import an official checkpoint (PromptSRC/IVLP, PromptKD's teacher; MMRL; any method's declared layout).

    Prompt depth and length (MMRL: tokens, d_r, start layer) come from the file; the backbone is guessed from the
    token widths (ViT-L-14-quickgelu or ViT-B-16-quickgelu, OpenAI weights), and the dataset, setting, shots and
    seed from the official folder names, unless given. The result is scored by `sempt eval` (and distilled from
    by `sempt distill`) like a trained teacher."""
    from sempt_cli.interop.convert import import_teacher as run

    result = run(path, method=method, overrides=overrides_from_options(options), config_file=options.get("opt__config"),
                 out=out, console=Console(stderr=True))
    print_import(result)


@app.command("import-student")
@settings_options("paths", "model", "data")
def import_student(
    options: dict[str, Any],
    path: _OFFICIAL,
    teacher: Annotated[Path, typer.Option("--teacher", help="The sempt teacher checkpoint it was distilled from "
                                                            "(e.g. an imported official teacher).")],
    out: _OUT = None,
) -> None:
    """Import an official PromptKD student checkpoint (prompts + projector) as a sempt student.

    Its class vectors come from --teacher, whose dataset and setting it takes unless given (a cross-dataset
    student names its target with --dataset); the student backbone defaults to ViT-B-16-quickgelu with OpenAI
    weights, as in the paper."""
    from sempt_cli.interop.convert import import_student as run

    result = run(path, teacher, overrides=overrides_from_options(options), config_file=options.get("opt__config"),
                 out=out, console=Console(stderr=True))
    print_import(result)


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", show_default=False,
                                               help="A sempt teacher or student (RUN/model.safetensors).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", show_default=False,
                     help="File to write, or a folder (e.g. the official repository) to write the official relative "
                          "path into (default: RUN/official/...)."),
    ] = None,
) -> None:
    """Write a sempt PromptSRC/IVLP or MMRL teacher or PromptKD student as an official Dassl checkpoint.

    The file holds the learned tensors under their official names (no optimizer, no pickled objects), at the
    path the official code reads: teacher_model/<Dataset>/VLPromptLearner/model-best.pth.tar for teachers,
    VLPromptLearner/model-best.pth.tar for students, and for MMRL the --model-dir of its scripts,
    output/.../seed<S>/MultiModalRepresentationLearner/model.pth.tar-<epochs>."""
    from sempt_cli.interop.convert import export_official

    result = export_official(checkpoint, out)
    console = Console(markup=False, highlight=False)  # paths may hold brackets
    console.print(f"Exported {result.tensors} tensors as an official {result.layout} checkpoint (epoch "
                  f"{result.epoch}): {result.path}")


def print_import(result: ImportResult) -> None:
    """What was imported, where it went, and how to use it."""
    console = Console(markup=False, highlight=False)  # paths may hold brackets
    settings = result.settings
    epoch = f", epoch {result.epoch}" if result.epoch is not None else ""
    weights = settings.model.checkpoint or settings.model.pretrained or "random init"
    buffers = result.dropped - result.frozen
    console.print(f"Imported {result.layout} checkpoint {result.source}{epoch}: {result.geometry.describe()}; "
                  f"{result.tensors} learned tensors kept, {result.dropped} left out: {result.frozen} frozen CLIP "
                  f"tensors (checked against {settings.model.backbone}) and {buffers} class-list "
                  f"buffer{'' if buffers == 1 else 's'}.")
    console.print(f"Read as {settings.data.dataset} ({settings.data.setting}) on {settings.model.backbone} "
                  f"({weights}); --dataset, --setting and --backbone change that.")
    console.print(f"Checkpoint: {result.checkpoint}")
    console.print(f"Evaluate it with: sempt eval {result.checkpoint}")
