"""Interoperability with the official code of every method that declares an official checkpoint layout
(PromptSRC / IVLP / PromptKD / MMRL ...): use their checkpoints, hand results back.

Python API::

    from sempt_cli.interop import export_official, import_student, import_teacher

    teacher = import_teacher("teacher_model/OxfordFlowers/VLPromptLearner/model-best.pth.tar")
    teacher.checkpoint  # runs/teachers/oxford_flowers/promptsrc-base2novel-official-<key>/model.safetensors
    student = import_student("output/.../VLPromptLearner/model-best.pth.tar", teacher.checkpoint,
                             overrides={"data.seed": 1})
    export_official(student.checkpoint).path  # .../official/VLPromptLearner/model-best.pth.tar
    mmrl = import_teacher("output/base2new/train_base/eurosat/shots_16/MMRL/vit_b16/seed1/"
                          "MultiModalRepresentationLearner/model.pth.tar-10")  # method "mmrl", from the file's keys

Modules: `official` (the layouts methods declare in their own files as `official_layout`, and the official folder
names), `dassl` (reading and writing the `.pth.tar` files without trusting pickle), `convert` (models, settings and
sidecars). A new method's official checkpoints become importable by declaring its `Layout`
(`sempt_cli.models.official_layout`) in its own file. Importing this package is cheap; the functions load
torch-heavy modules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sempt_cli.lazy import lazy_exports

if TYPE_CHECKING:
    from sempt_cli.interop.convert import ExportResult, ImportResult, export_official, import_student, import_teacher
    from sempt_cli.interop.dassl import read_dassl_checkpoint, write_dassl_checkpoint
    from sempt_cli.interop.official import official_layouts

__getattr__ = lazy_exports(__name__, {
    "sempt_cli.interop.convert": (
        "ExportResult", "ImportResult", "export_official", "import_student", "import_teacher",
    ),
    "sempt_cli.interop.dassl": ("read_dassl_checkpoint", "write_dassl_checkpoint"),
    "sempt_cli.interop.official": ("official_layouts",),
})


__all__ = [
    "ExportResult",
    "ImportResult",
    "export_official",
    "import_student",
    "import_teacher",
    "official_layouts",
    "read_dassl_checkpoint",
    "write_dassl_checkpoint",
]
