"""T_atr: shape, normalisation, caching, and equality with the encoders it claims to use.

The teacher is an untrained IVLP teacher on the demo classes saved exactly as `train_teacher` saves one
(random prompts encode as well as trained ones, and it takes seconds instead of a training run); `load_teacher`
rebuilds it from the checkpoint alone, as for any teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sempt_cli import __version__
from sempt_cli.engine.runtime import seed_everything
from sempt_cli.errors import SemptError
from sempt_cli.knowledge import all_classnames, demo_attribute_file, names_file, write_attribute_file
from sempt_cli.knowledge.budget import context_prefix, description_body
from sempt_cli.models.checkpoint import save_learned
from sempt_cli.models.identity import backbone_identity
from sempt_cli.pipeline.attributes import embed_attributes
from sempt_cli.pipeline.backbone import load_backbone
from sempt_cli.pipeline.runs import build_method, load_teacher, resolve_with_preset
from sempt_cli.settings import Settings, load_settings

NAMES = all_classnames("demo")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    """(checkpoint, settings) of a demo teacher; settings point the caches at a fresh folder."""
    root = tmp_path_factory.mktemp("teacher")
    resolved = resolve_with_preset("ivlp", {"data.dataset": "demo", "model.pretrained": "none",
                                            "paths.cache_dir": str(root / "cache")}, env={})
    settings = resolved.settings
    seed_everything(settings.data.seed)
    clip = load_backbone(settings.model, torch.device("cpu"), settings.paths.cache_dir)
    method = build_method("ivlp", clip, NAMES[:20], settings)
    metadata = {
        "kind": "teacher", "method": "ivlp", "backbone": clip.backbone, "pretrained": settings.model.pretrained,
        "backbone_identity": backbone_identity(clip), "dataset": "demo", "setting": settings.data.setting,
        "train_classnames": NAMES[:20], "classnames": NAMES, "num_base": 20, "seen_classnames": NAMES[:20],
        "settings": settings.model_dump(mode="json"), "sempt_version": __version__,
    }
    checkpoint = save_learned(root / "model.safetensors", method.trainable_state(), metadata)
    return checkpoint, settings


def _with_encoder(settings: Settings, encoder: str) -> Settings:
    return load_settings({"paths.cache_dir": str(settings.paths.cache_dir), "data.dataset": "demo",
                          "sempt.attr_encoder": encoder}, env={}).settings


def test_prompted_t_atr_shape_norm_and_cache(teacher: tuple[Path, Settings], tmp_path: Path) -> None:
    checkpoint, settings = teacher
    path = write_attribute_file(demo_attribute_file(), tmp_path / "demo.json")
    first = embed_attributes(checkpoint, path, _with_encoder(settings, "teacher-prompted"))
    assert first.vectors.shape == (40, 6, 128) and first.classnames == NAMES and not first.reused
    torch.testing.assert_close(first.vectors.norm(dim=-1), torch.ones(40, 6))
    again = embed_attributes(checkpoint, path, _with_encoder(settings, "teacher-prompted"))
    assert again.reused and again.path == first.path
    torch.testing.assert_close(again.vectors, first.vectors)

    frozen = embed_attributes(checkpoint, path, _with_encoder(settings, "teacher-frozen"))
    assert frozen.path != first.path and frozen.encoder == "teacher-frozen" and not frozen.reused
    assert (frozen.vectors - first.vectors).abs().max() > 1e-3

    loaded = load_teacher(checkpoint, overrides={"paths.cache_dir": str(settings.paths.cache_dir)}).eval()
    assert loaded.text.prefix == context_prefix(settings.prompts.text_depth, settings.prompts.text_length,
                                                settings.prompts.ctx_init)  # the budget's prefix is the tower's
    texts = [description_body(t) for t in first.descriptions[7]]
    with torch.no_grad():
        direct = F.normalize(loaded.text(loaded.text.build_prompts(texts)), dim=-1)
        plain = F.normalize(loaded.clip.model.encode_text(loaded.clip.tokenizer(texts)), dim=-1)
    torch.testing.assert_close(first.vectors[7], direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frozen.vectors[7], plain, rtol=1e-5, atol=1e-5)  # depth-0 tower = encode_text

    changed = demo_attribute_file().to_json()
    changed["classes"][0]["descriptions"][0]["text"] = "a tiny purple square"
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    other = embed_attributes(checkpoint, tmp_path / "changed.json", _with_encoder(settings, "teacher-prompted"))
    assert other.path != first.path and not other.reused  # keyed by the file's content
    torch.testing.assert_close(other.vectors[1:], first.vectors[1:])


def test_names_strategy_reproduces_the_class_vectors(teacher: tuple[Path, Settings], tmp_path: Path) -> None:
    checkpoint, settings = teacher
    path = write_attribute_file(names_file("demo", NAMES, 6), tmp_path / "names.json")
    result = embed_attributes(checkpoint, path, _with_encoder(settings, "teacher-prompted"))
    loaded = load_teacher(checkpoint, overrides={"paths.cache_dir": str(settings.paths.cache_dir)}).eval()
    with torch.no_grad():
        labels = loaded.class_embeddings(NAMES)
    for j in range(6):
        torch.testing.assert_close(result.vectors[:, j], labels, rtol=1e-5, atol=1e-5)


def test_descriptions_that_would_be_cut_are_refused(teacher: tuple[Path, Settings], tmp_path: Path) -> None:
    checkpoint, settings = teacher
    data = demo_attribute_file().to_json()
    data["classes"][4]["descriptions"][2]["text"] = " ".join(["extraordinarily"] * 40)
    (tmp_path / "long.json").write_text(json.dumps(data))
    with pytest.raises(SemptError, match=r"1 descriptions do not fit .*77-token context .*'sanil'"):
        embed_attributes(checkpoint, tmp_path / "long.json", _with_encoder(settings, "teacher-prompted"))


def test_an_enormous_description_is_quoted_by_a_short_prefix(teacher: tuple[Path, Settings],
                                                            tmp_path: Path) -> None:
    checkpoint, settings = teacher
    data = demo_attribute_file().to_json()
    data["classes"][4]["descriptions"][2]["text"] = "striped " * 131_072  # 1 MB
    (tmp_path / "huge.json").write_text(json.dumps(data))
    with pytest.raises(SemptError, match=r"1 descriptions do not fit .*'striped striped .*… \(1,048,576 characters\)"
                       ) as info:
        embed_attributes(checkpoint, tmp_path / "huge.json", _with_encoder(settings, "teacher-prompted"))
    assert len(str(info.value)) < 600


def test_class_list_must_match_the_teacher(teacher: tuple[Path, Settings], tmp_path: Path) -> None:
    checkpoint, settings = teacher
    data = names_file("demo", NAMES, 6).to_json()
    data["classnames"][0], data["classnames"][1] = data["classnames"][1], data["classnames"][0]
    for label, entry in enumerate(data["classes"][:2]):
        entry["name"] = data["classnames"][label]
    (tmp_path / "swapped.json").write_text(json.dumps(data))
    with pytest.raises(SemptError, match=r"differ from the teacher's list of 40 .first difference at label 0"):
        embed_attributes(checkpoint, tmp_path / "swapped.json", settings)
