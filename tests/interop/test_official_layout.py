"""The name/shape tables: the spec's official names, folder spellings, and errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from sempt_cli.errors import WeightsError
from sempt_cli.interop.convert import ImportResult
from sempt_cli.interop.official import dataset_from_path, layout_for, official_layouts, official_prompt_keys
from sempt_cli.methods.promptkd import PROMPTKD_STUDENT
from sempt_cli.methods.promptsrc import PROMPTSRC_TEACHER, official_folder
from sempt_cli.models import load_learned
from sempt_cli.models.official_layout import Geometry
from sempt_cli.protocol import get_method, method_names


def test_teacher_names_are_the_specs() -> None:
    """Spec §3.1: ctx, VPT, and VPT_shallow of blocks 1..8 in both towers for the depth-9 teacher."""
    names = PROMPTSRC_TEACHER.official_names(Geometry({"vision": 9, "text": 9}, {}, {}))
    expected = {"prompt_learner.ctx", "image_encoder.VPT"}
    expected |= {f"image_encoder.transformer.resblocks.{i}.VPT_shallow" for i in range(1, 9)}
    expected |= {f"text_encoder.transformer.resblocks.{i}.VPT_shallow" for i in range(1, 9)}
    assert set(names.values()) == expected
    assert names["vision.prompts.tokens.3"] == "image_encoder.transformer.resblocks.3.VPT_shallow"
    assert names["text.prompts.tokens.0"] == "prompt_learner.ctx"
    # the older helper in models.checkpoint reads the same table
    assert official_prompt_keys(3, 2) == {
        "vision.0": "image_encoder.VPT", "vision.1": "image_encoder.transformer.resblocks.1.VPT_shallow",
        "vision.2": "image_encoder.transformer.resblocks.2.VPT_shallow", "text.0": "prompt_learner.ctx",
        "text.1": "text_encoder.transformer.resblocks.1.VPT_shallow",
    }


def test_student_names_are_the_specs() -> None:
    """Spec §3.2/§7.1: VPT_image_trans.conv1.{0,1,3} (Conv 1×1, BatchNorm2d, Conv 1×1; index 2 is the ReLU)."""
    names = PROMPTKD_STUDENT.official_names(Geometry({"vision": 3}, {}, {}))
    assert names["projector.fc1.weight"] == "VPT_image_trans.conv1.0.weight"
    assert names["projector.bn.num_batches_tracked"] == "VPT_image_trans.conv1.1.num_batches_tracked"
    assert names["projector.fc2.bias"] == "VPT_image_trans.conv1.3.bias"
    assert names["vision.prompts.tokens.2"] == "image_encoder.transformer.resblocks.2.VPT_shallow"
    assert len(names) == 3 + 2 + 5 + 2


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("teacher_model/StanfordCars/VLPromptLearner/model-best.pth.tar", ("stanford_cars", None)),
        ("teacher_model/StandfordCars/VLPromptLearner/model-best.pth.tar", ("stanford_cars", None)),  # README
        ("teacher_model/DescribableTextures/VLPromptLearner/model-best.pth.tar", ("dtd", None)),
        ("teacher_model/OxfordFlowers/VLPromptLearner/model-best.pth.tar", ("oxford_flowers", None)),
        ("teacher_model/ImageNet-xd/VLPromptLearner_large/model.pth.tar-20", ("imagenet", "cross-dataset")),
        ("output/base2new/train_base/fgvc_aircraft/shots_16/PromptSRC/vit_l14/seed1/VLPromptLearner/model.pth.tar-20",
         ("fgvc_aircraft", "base2novel")),
        ("/home/demo/checkpoints/model-best.pth.tar", (None, None)),  # the demo world is never guessed
    ],
)
def test_dataset_from_official_folders(path: str, expected: tuple[str | None, str | None]) -> None:
    assert dataset_from_path(path) == expected


def test_export_folders_are_where_the_official_code_reads() -> None:
    assert official_folder("oxford_flowers", "base2novel", "teacher", 20) == \
        Path("teacher_model/OxfordFlowers/VLPromptLearner/model-best.pth.tar")
    assert official_folder("imagenet", "cross-dataset", "teacher", 20) == \
        Path("teacher_model/ImageNet-xd/VLPromptLearner_large/model.pth.tar-20")
    assert official_folder("dtd", "base2novel", "student", 20) == Path("VLPromptLearner/model-best.pth.tar")


def _expected(imported: ImportResult) -> dict[str, Tensor]:
    return load_learned(imported.checkpoint).tensors


def test_unmapped_tensors_are_listed(official_teacher: tuple[Path, dict[str, Tensor]],
                                     imported_teacher: ImportResult) -> None:
    state = dict(official_teacher[1])
    state["prompt_learner.meta_net.linear1.weight"] = torch.zeros(2, 2)  # a CoCoOp/MaPLe-style learner
    state["image_encoder.transformer.resblocks.2.VPT_extra"] = torch.zeros(4, 192)
    with pytest.raises(WeightsError, match="does not know where to put") as error:
        PROMPTSRC_TEACHER.to_ours(state, _expected(imported_teacher), source="ckpt")
    assert "prompt_learner.meta_net.linear1.weight" in error.value.message
    assert "image_encoder.transformer.resblocks.2.VPT_extra" in error.value.message


def test_a_missing_block_is_named(official_teacher: tuple[Path, dict[str, Tensor]],
                                  imported_teacher: ImportResult) -> None:
    state = dict(official_teacher[1])
    del state["text_encoder.transformer.resblocks.2.VPT_shallow"]
    with pytest.raises(WeightsError, match=r"lacks tensors .*text_encoder\.transformer\.resblocks\.2\.VPT_shallow"):
        PROMPTSRC_TEACHER.to_ours(state, _expected(imported_teacher), source="ckpt")


def test_a_wrong_shape_is_named_by_its_official_name(official_teacher: tuple[Path, dict[str, Tensor]],
                                                     imported_teacher: ImportResult) -> None:
    state = dict(official_teacher[1])
    state["image_encoder.transformer.resblocks.3.VPT_shallow"] = torch.zeros(4, 100)
    with pytest.raises(WeightsError, match=r"resblocks\.3\.VPT_shallow is \(4, 100\) but the model expects \(4, 192\)"):
        PROMPTSRC_TEACHER.to_ours(state, _expected(imported_teacher), source="ckpt")


def test_frozen_copies_and_buffers_are_recognised_not_imported(official_teacher: tuple[Path, dict[str, Tensor]],
                                                                imported_teacher: ImportResult) -> None:
    state = official_teacher[1]
    ours = PROMPTSRC_TEACHER.to_ours(state, _expected(imported_teacher), source="ckpt")
    assert len(ours) == sum(imported_teacher.geometry.depths.values())
    assert PROMPTSRC_TEACHER.frozen_name("prompt_learner.ZS_image_encoder.conv1.weight") == "visual.conv1.weight"
    assert PROMPTSRC_TEACHER.frozen_name("text_encoder.transformer.resblocks.0.attn.in_proj_weight") == \
        "transformer.resblocks.0.attn.in_proj_weight"
    assert PROMPTSRC_TEACHER.frozen_name("text_encoder.transformer.resblocks.1.VPT_shallow") is None
    assert "prompt_learner.token_suffix" in PROMPTSRC_TEACHER.dropped
    assert imported_teacher.dropped == len(state) - len(ours)


def test_layouts_are_the_ones_methods_declare() -> None:
    """`sempt interop` knows a family only through a registered method's `official_layout` (one file per method)."""
    declared = {name: get_method(name).official_layout for name in method_names()}
    layouts = official_layouts()
    assert {layout.name for layout in declared.values() if layout is not None} == set(layouts)
    assert {"PromptSRC/IVLP", "PromptKD student", "MMRL"} <= set(layouts)
    for name, layout in declared.items():
        if layout is not None:
            assert name in layout.methods, f"{name} declares {layout.name}, whose methods are {layout.methods}"
    assert declared["coop"] is None  # CoOp's own trainer names its tensors otherwise
    with pytest.raises(WeightsError, match="no official checkpoint layout for coop"):
        layout_for("teacher", "coop")
