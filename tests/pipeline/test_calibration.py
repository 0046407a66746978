"""The calibrated rule's fit: label-free, cached deterministically, and identity on anything but SemPT under it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from sempt_cli.data import DEMO_KEY, load_dataset
from sempt_cli.data.demo import ensure_demo_world
from sempt_cli.data.records import Sample
from sempt_cli.data.transforms import clip_test_transform
from sempt_cli.engine.runtime import Runtime
from sempt_cli.models import DEMO_STUDENT, LoadedClip, load_clip
from sempt_cli.pipeline.calibration import calibrate, calibration_samples, fit_on_samples
from tests.methods.test_sempt import CLASSES, build_student

CPU = Runtime(torch.device("cpu"), None)
TRANSFORM = clip_test_transform(48)
SEEN = tuple(CLASSES[:3])


@pytest.fixture(scope="module")
def student_clip() -> LoadedClip:
    torch.manual_seed(3)
    return load_clip(DEMO_STUDENT, None)


@pytest.fixture(scope="module")
def samples(demo_cache: Path) -> list[Sample]:
    """36 demo images labelled with the toy model's 6 classes (6 each; the first 3 classes are the seen ones)."""
    images = load_dataset(DEMO_KEY, ensure_demo_world(demo_cache)).test[::50][:36]
    return [Sample(s.path, i % 6, CLASSES[i % 6]) for i, s in enumerate(images)]


def _calibrated(clip: LoadedClip):
    wrapped, base = build_student(clip, {"sempt.inference": "calibrated", "sempt.alpha": 0.7}, seen=SEEN)
    wrapped.eval()
    return wrapped, base


def test_calibration_reads_no_label_of_an_unseen_class(student_clip: LoadedClip, samples: list[Sample]) -> None:
    """Relabelling every image of an unseen class at random (seen classes included) changes nothing."""
    wrapped, _ = _calibrated(student_clip)
    fitted = fit_on_samples(wrapped, samples, CLASSES, TRANSFORM, CPU)
    rng = random.Random(0)
    shuffled = [s if s.classname in SEEN else Sample(s.path, (label := rng.randrange(6)), CLASSES[label])
                for s in samples]
    assert [s.label for s in shuffled] != [s.label for s in samples]
    assert fit_on_samples(wrapped, shuffled, CLASSES, TRANSFORM, CPU) == fitted
    other = fit_on_samples(wrapped, samples[:12], CLASSES, TRANSFORM, CPU)
    assert other != fitted  # the fit does depend on its images, so the equality above is not vacuous
    assert fitted.scale > 0


def test_calibration_is_cached_atomically_and_read_back(student_clip: LoadedClip, samples: list[Sample],
                                                        tmp_path: Path) -> None:
    wrapped, _ = _calibrated(student_clip)
    key = {"checkpoint": "abc"}
    calibrate(wrapped, samples, CLASSES, TRANSFORM, CPU, cache_dir=tmp_path, key=key)
    first = wrapped.calibration
    assert first == fit_on_samples(wrapped, samples, CLASSES, TRANSFORM, CPU)
    files = list((tmp_path / "tensors" / "sempt-calibration").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "tensors" / "sempt-calibration").glob(".*tmp"))
    again, _ = _calibrated(student_clip)
    torch.nn.init.zeros_(again.fusion.fc2.weight)  # a different model under the same key: the cache answers
    calibrate(again, samples, CLASSES, TRANSFORM, CPU, cache_dir=tmp_path, key=key)
    assert again.calibration == first
    again.calibration = None
    calibrate(again, samples[:12], CLASSES, TRANSFORM, CPU, cache_dir=tmp_path, key=key)  # other images: refit
    assert len(list((tmp_path / "tensors" / "sempt-calibration").glob("*.safetensors"))) == 2


def test_calibration_is_identity_on_a_model_without_sempt(student_clip: LoadedClip, samples: list[Sample],
                                                          tmp_path: Path) -> None:
    _, base = _calibrated(student_clip)
    base.eval()
    image = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        before = base.classifier(CLASSES)(base.image_embeddings(image))
        assert calibrate(base, samples, CLASSES, TRANSFORM, CPU, cache_dir=tmp_path, key={}) is base
        after = base.classifier(CLASSES)(base.image_embeddings(image))
    assert torch.equal(before, after)
    assert not (tmp_path / "tensors" / "sempt-calibration").exists()


@pytest.mark.parametrize("rule", ["hybrid", "label", "enhanced"])
def test_other_rules_and_unmixed_class_lists_are_left_alone(student_clip: LoadedClip, samples: list[Sample],
                                                            tmp_path: Path, rule: str) -> None:
    wrapped, _ = build_student(student_clip, {"sempt.inference": rule}, seen=SEEN)
    calibrate(wrapped, samples, CLASSES, TRANSFORM, CPU, cache_dir=tmp_path, key={})
    assert wrapped.calibration is None
    calibrated, _ = _calibrated(student_clip)
    calibrate(calibrated, samples, CLASSES[3:], TRANSFORM, CPU, cache_dir=tmp_path, key={})  # novel view only
    assert calibrated.calibration is None and not (tmp_path / "tensors" / "sempt-calibration").exists()


def test_calibration_samples_are_a_fixed_label_blind_subsample(samples: list[Sample]) -> None:
    assert calibration_samples(samples) == samples
    chosen = calibration_samples(samples, limit=5)
    assert len(chosen) == 5 and chosen == calibration_samples(list(samples), limit=5) and chosen[0] == samples[0]


def test_training_time_scores_fit_the_calibrated_rule_without_storing_it(student_clip: LoadedClip,
                                                                         samples: list[Sample],
                                                                         tmp_path: Path) -> None:
    """`distill --inference calibrated` scores its student at the end of training like `sempt eval` would."""
    from sempt_cli.data.records import DatasetSplits
    from sempt_cli.pipeline.data import PreparedData
    from sempt_cli.pipeline.runs import evaluate_protocol
    from sempt_cli.settings import load_settings

    splits = DatasetSplits("toy", list(CLASSES), samples, None, samples)
    settings = load_settings({"data.setting": "base2novel", "data.workers": 0, "paths.cache_dir": str(tmp_path)},
                             env={}).settings
    wrapped, _ = _calibrated(student_clip)
    metrics = evaluate_protocol(wrapped, PreparedData(splits, splits, 3), settings, CPU, 48)
    assert wrapped.calibration == fit_on_samples(wrapped, samples, CLASSES, TRANSFORM, CPU)
    assert set(metrics) == {"base", "novel", "hm", "all"}
    assert not (tmp_path / "tensors").exists()
    hybrid, _ = build_student(student_clip, {"sempt.alpha": 0.7}, seen=SEEN)
    plain = evaluate_protocol(hybrid, PreparedData(splits, splits, 3), settings, CPU, 48)
    assert (metrics["base"], metrics["novel"]) == (plain["base"], plain["novel"])
