"""Transforms (CLIP train/test pipelines) and image loading with the corrupt-image policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fabricate import write_corrupt_image, write_image
from PIL import Image
from torchvision import transforms as T

from sempt_cli.data import (
    CLIP_MEAN,
    CLIP_STD,
    ImageDataset,
    Sample,
    build_transform,
    clip_test_transform,
    clip_train_transform,
    drop_unreadable,
    scan_images,
)
from sempt_cli.errors import DatasetError


def test_constants_are_clip_s() -> None:
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_train_pipeline_structure() -> None:
    steps = clip_train_transform().transforms
    assert [type(t) for t in steps] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    crop, flip, _, norm = steps
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation == T.InterpolationMode.BICUBIC
    assert flip.p == 0.5
    assert tuple(norm.mean) == CLIP_MEAN and tuple(norm.std) == CLIP_STD
    mmrl = clip_train_transform(size=32, scale=(0.5, 1.0)).transforms[0]
    assert mmrl.size == (32, 32) and mmrl.scale == (0.5, 1.0)


def test_test_pipeline_structure() -> None:
    steps = clip_test_transform(96).transforms
    assert [type(t) for t in steps] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert steps[0].size == 96  # an int: the shorter side, aspect ratio kept
    assert steps[0].interpolation == T.InterpolationMode.BICUBIC
    assert steps[1].size == (96, 96)


def test_outputs_and_normalisation() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 128))
    out = clip_test_transform(16)(image)
    assert out.shape == (3, 16, 16)
    expected = torch.tensor([(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], -CLIP_MEAN[1] / CLIP_STD[1]])
    assert torch.allclose(out[:2, 8, 8], expected, atol=1e-2)
    torch.manual_seed(0)
    assert clip_train_transform(16)(image).shape == (3, 16, 16)
    assert type(build_transform(True, 16).transforms[0]) is T.RandomResizedCrop
    assert type(build_transform(False, 16).transforms[0]) is T.Resize


def _samples(scratch: Path, n: int = 4) -> list[Sample]:
    samples = []
    for i in range(n):
        path = scratch / f"img_{i}.{'png' if i % 2 else 'jpg'}"
        write_image(path, i)
        samples.append(Sample(path, i, f"class_{i}"))
    return samples


def test_dataset_returns_tensor_label_index(scratch: Path) -> None:
    dataset = ImageDataset(_samples(scratch), clip_test_transform(8))
    image, label, index = dataset[2]
    assert image.shape == (3, 8, 8) and (label, index) == (2, 2) and len(dataset) == 4
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch[0].shape == (4, 3, 8, 8) and batch[1].tolist() == [0, 1, 2, 3]
    raw, _, _ = ImageDataset(_samples(scratch), None)[0]
    assert isinstance(raw, Image.Image) and raw.mode == "RGB"


def test_grayscale_and_rgba_become_rgb(scratch: Path) -> None:
    Image.new("L", (8, 8), 100).save(scratch / "gray.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(scratch / "rgba.png")
    samples = [Sample(scratch / "gray.png", 0, "a"), Sample(scratch / "rgba.png", 1, "b")]
    assert [ImageDataset(samples, clip_test_transform(8))[i][0].shape[0] for i in (0, 1)] == [3, 3]


def test_corrupt_image_error_mode_names_the_path(scratch: Path) -> None:
    samples = _samples(scratch)
    write_corrupt_image(samples[1].path)
    dataset = ImageDataset(samples, clip_test_transform(8))
    with pytest.raises(DatasetError) as info:
        dataset[1]
    assert info.value.message.startswith(f"Image {samples[1].path} cannot be read (UnidentifiedImageError")
    samples[2].path.unlink()
    with pytest.raises(DatasetError, match=r"img_2.jpg cannot be read \(file does not exist\)"):
        dataset[2]


def test_corrupt_image_is_one_sentence_with_any_number_of_workers(scratch: Path) -> None:
    from torch.utils.data import DataLoader

    samples = _samples(scratch)
    write_corrupt_image(samples[1].path)
    messages = []
    for workers in (0, 2):
        loader = DataLoader(ImageDataset(samples, clip_test_transform(8)), batch_size=1, num_workers=workers)
        with pytest.raises(DatasetError) as info:
            list(loader)
        messages.append((info.value.message, info.value.hint))
    assert messages[0] == messages[1]
    assert messages[1][0].startswith(f"Image {samples[1].path} cannot be read (UnidentifiedImageError")
    assert "DataLoader worker" not in str(messages[1]) and "\n" not in messages[1][0]


def test_truncated_image_is_corrupt(scratch: Path) -> None:
    path = scratch / "big.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path, quality=95)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DatasetError, match=r"big\.jpg cannot be read"):
        ImageDataset([Sample(path, 0, "x")])[0]


def test_skip_mode_replaces_deterministically_and_counts(scratch: Path) -> None:
    samples = _samples(scratch)
    write_corrupt_image(samples[1].path)
    samples[3].path.unlink()
    dataset = ImageDataset(samples, clip_test_transform(8), on_corrupt="skip")
    assert dataset[1][1:] == (2, 2)  # next readable sample
    assert dataset[3][1:] == (0, 0)  # wraps around
    assert dataset[1][1:] == (2, 2)
    assert dataset.num_skipped == 2
    assert set(dataset.skipped) == {samples[1].path, samples[3].path}
    assert dataset.skipped[samples[3].path] == "file does not exist"
    for sample in samples:
        if sample.path.exists():
            write_corrupt_image(sample.path)
    with pytest.raises(DatasetError, match="None of the 4 images"):
        dataset[0]
    with pytest.raises(ValueError, match="on_corrupt"):
        ImageDataset(samples, None, on_corrupt="ignore")  # type: ignore[arg-type]


def test_scan_images_then_filter_is_the_preflight(scratch: Path) -> None:
    samples = _samples(scratch, 6)
    write_corrupt_image(samples[4].path)
    samples[1].path.unlink()
    seen: list[int] = []
    bad = scan_images([*samples, samples[4]], num_threads=2, progress=seen.append)
    assert [path for path, _ in bad] == [samples[1].path, samples[4].path]
    assert bad[0][1] == "file does not exist" and "UnidentifiedImageError" in bad[1][1]
    assert seen[-1] == 6  # distinct paths only
    kept = drop_unreadable(samples, bad)
    assert [s.label for s in kept] == [0, 2, 3, 5]
    assert drop_unreadable(samples, [samples[0].path]) == samples[1:]
    assert scan_images(kept) == []
