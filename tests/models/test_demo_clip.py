"""The shipped demo CLIPs: they load, are what their sidecars say, know the demo world, and can be rebuilt."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from sempt_cli.data.demo import ensure_demo_world
from sempt_cli.errors import WeightsError
from sempt_cli.io import sha256_file
from sempt_cli.models import DEMO_STUDENT, DEMO_TEACHER, load_clip
from sempt_cli.models import demo_clip as dc
from sempt_cli.models.factory import LoadedClip

BACKBONES = (DEMO_TEACHER, DEMO_STUDENT)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a shared CPU, two spinning OpenMP threads make these small steps 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shipped() -> dict[str, LoadedClip]:
    return {backbone: dc.load_demo_clip(backbone) for backbone in BACKBONES}


@pytest.fixture(scope="module")
def world_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo world generated on disk, as the pipeline reads it (about 10 s)."""
    return ensure_demo_world(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_corpus() -> dc.Corpus:
    return dc.render_corpus(32)


def _sidecar(backbone: str, weights_dir: Path | None = None) -> dict:
    return json.loads(dc.demo_sidecar_path(backbone, weights_dir).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("backbone", BACKBONES)
def test_shipped_weights_match_their_sidecar(backbone: str) -> None:
    path = dc.demo_weights_path(backbone)
    sidecar = _sidecar(backbone)
    assert path.parent == dc.WEIGHTS_DIR and path.is_file()
    assert sidecar["sha256"] == sha256_file(path)
    assert sidecar["bytes"] == path.stat().st_size < 8_000_000  # sparse fp16: a few MB, not 20-40
    assert sidecar["backbone"] == backbone
    assert sidecar["command"].startswith("python -m sempt_cli.models.demo_clip")
    assert {"torch", "open_clip"} <= set(sidecar["versions"])
    assert sidecar["training"]["seconds"] > 0 and sidecar["corpus"]["size"] > 0


def test_sidecars_record_teacher_above_student_and_neither_perfect() -> None:
    teacher, student = (_sidecar(b)["zero_shot"]["by_name"] for b in BACKBONES)
    for key in ("base", "novel", "all"):
        assert teacher[key] > student[key], key
        assert student[key] > 0.25 and teacher[key] < 0.97, key  # chance is 0.05 (0.025 for all)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_load_demo_clip(backbone: str, shipped: dict[str, LoadedClip]) -> None:
    loaded = shipped[backbone]
    assert loaded.weights_file == dc.demo_weights_path(backbone)
    assert loaded.pretrained == dc.DEMO_TAG and loaded.backbone == backbone
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.preprocess.image_size == 48
    # Untrained token rows are zero; corpus words are not.
    table = loaded.model.token_embedding.weight
    ids = loaded.tokenizer(["a photo of a circle."])[0]
    ids = ids[ids != 0]
    assert table[ids].abs().sum(dim=1).gt(0).all()
    assert int(table.abs().sum(dim=1).gt(0).sum()) < 1000


def test_sparse_file_round_trip_is_exact(shipped: dict[str, LoadedClip]) -> None:
    """Re-storing the loaded model gives the shipped file byte for byte: loading loses nothing."""
    for backbone in BACKBONES:
        path = dc.demo_weights_path(backbone)
        with safe_open(str(path), framework="pt") as handle:
            ids = handle.get_tensor("token_embedding.ids").tolist()
        state = dc.sparse_state(shipped[backbone].model, ids)
        assert save(state, metadata=dc.file_metadata(backbone, 49408)) == path.read_bytes()


def test_sparse_state_keeps_used_rows_and_zeroes_the_rest(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = load_clip(DEMO_STUDENT, None).model
    used = [0, 320, 1125, 49406, 49407]
    path = tmp_path / "w.safetensors"
    path.write_bytes(save(dc.sparse_state(model, used), metadata=dc.file_metadata(DEMO_STUDENT, 49408)))
    state, _ = dc.read_sparse_state(path)
    dense = model.state_dict()
    table = state["token_embedding.weight"]
    assert torch.equal(table[used], dense["token_embedding.weight"][used].half().float())
    mask = torch.ones(len(table), dtype=torch.bool)
    mask[used] = False
    assert not table[mask].any()
    assert set(state) == set(dense)
    assert all(torch.equal(state[k], v.half().float()) for k, v in dense.items() if k != "token_embedding.weight")
    assert all(v.dtype == torch.float32 for v in state.values())


# ------------------------------------------------------------------------------------------------ errors


def _copy_weights(tmp_path: Path) -> Path:
    for backbone in BACKBONES:
        for source in (dc.demo_weights_path(backbone), dc.demo_sidecar_path(backbone)):
            shutil.copy(source, tmp_path / source.name)
    return tmp_path


def test_missing_weights_say_how_to_rebuild(tmp_path: Path) -> None:
    weights_dir = _copy_weights(tmp_path)
    dc.demo_weights_path(DEMO_TEACHER, weights_dir).unlink()
    with pytest.raises(WeightsError, match="missing") as info:
        dc.load_demo_clip(DEMO_TEACHER, weights_dir=weights_dir)
    assert "python -m sempt_cli.models.demo_clip" in str(info.value)
    dc.demo_sidecar_path(DEMO_STUDENT, weights_dir).unlink()
    with pytest.raises(WeightsError, match="missing"):
        dc.load_demo_state_dict(DEMO_STUDENT, weights_dir)


def test_corrupt_weights_are_refused(tmp_path: Path) -> None:
    weights_dir = _copy_weights(tmp_path)
    path = dc.demo_weights_path(DEMO_STUDENT, weights_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt") as info:
        dc.load_demo_state_dict(DEMO_STUDENT, weights_dir)
    assert "python -m sempt_cli.models.demo_clip" in str(info.value)
    assert dc.load_demo_state_dict(DEMO_TEACHER, weights_dir)  # the intact one still loads


def test_unknown_backbone_has_no_demo_weights() -> None:
    with pytest.raises(WeightsError, match="no demo weights"):
        dc.demo_weights_path("ViT-B-16")


# ------------------------------------------------------------------------------------------- zero-shot


@pytest.mark.slow
def test_teacher_knows_the_demo_world_better_than_the_student(world_root: Path, shipped: dict[str, LoadedClip]) -> None:
    test = dc.demo_test_set(world_root, per_class=20)
    assert len(test.labels) == 800 and test.classnames[:2] == dc.demo_test_set(per_class=1).classnames[:2]
    scores = {b: dc.zero_shot_accuracy(shipped[b].model, shipped[b].tokenizer, test) for b in BACKBONES}
    teacher, student = scores[DEMO_TEACHER], scores[DEMO_STUDENT]
    assert teacher["base"] > 0.5 and teacher["novel"] > 0.4 and teacher["all"] > 0.3  # chance 0.05 / 0.025
    assert student["base"] > 0.25 and student["novel"] > 0.25
    assert teacher["all"] >= student["all"]
    assert teacher["base"] + teacher["novel"] >= student["base"] + student["novel"]


def test_rendered_test_split_equals_the_files_on_disk(world_root: Path) -> None:
    from_disk = dc.demo_test_set(world_root, per_class=2)
    rendered = dc.demo_test_set(per_class=2)
    assert torch.equal(from_disk.images, rendered.images)
    assert torch.equal(from_disk.labels, rendered.labels)
    assert from_disk.classnames == rendered.classnames


# -------------------------------------------------------------------------------------------- training


def test_training_text_encoder_equals_encode_text() -> None:
    torch.manual_seed(0)
    loaded = load_clip(DEMO_STUDENT, None)
    tokens = loaded.tokenizer(["a photo of a gilatu.", "a small red striped circle on a dark background", "x"])
    encoder = dc._TextEncoder(loaded.model, torch.unique(tokens))
    with torch.no_grad():
        torch.testing.assert_close(encoder(tokens), loaded.model.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_augment_flips_and_shifts_without_changing_type() -> None:
    images = torch.randint(0, 256, (6, 3, 48, 48), dtype=torch.uint8)
    flipped = dc._augment(images, 0, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(flipped, images, strict=True))
    shifted = dc._augment(images, 3, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8


def test_pretrain_lowers_the_loss_and_is_deterministic(tiny_corpus: dc.Corpus) -> None:
    options = {"seed": 3, "steps": 8, "batch_size": 32, "corpus_size": 32, "corpus": tiny_corpus}
    rng_before = torch.get_rng_state()
    model, report = dc.pretrain(DEMO_STUDENT, **options)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert report.losses[-1] < report.losses[0]
    assert len(report.losses) == 8 and report.parameters == sum(p.numel() for p in model.parameters())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    used = torch.tensor(report.token_ids)
    table = model.token_embedding.weight
    assert table[used].any(dim=1).all() and int(table.any(dim=1).sum()) == len(used)

    again, report_again = dc.pretrain(DEMO_STUDENT, **options)
    assert report_again.losses == report.losses
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_the_rebuild_command_writes_loadable_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--steps", "2", "--batch-size", "16", "--corpus-size", "32"]
    assert (
        dc.main([*argv, "--eval-per-class", "1", "--only", "student", "--threads", str(torch.get_num_threads())]) == 0
    )
    assert "student" in capsys.readouterr().out
    sidecar = _sidecar(DEMO_STUDENT, tmp_path)
    assert sidecar["command"].startswith(f"python -m sempt_cli.models.demo_clip --out {tmp_path} --seed 0 --steps 2")
    assert set(sidecar["zero_shot"]["by_name"]) >= {"base", "novel", "all"}
    loaded = dc.load_demo_clip(DEMO_STUDENT, weights_dir=tmp_path)
    assert loaded.weights_file == tmp_path / f"{DEMO_STUDENT}.safetensors"
    assert not dc.demo_weights_path(DEMO_TEACHER, tmp_path).exists()
