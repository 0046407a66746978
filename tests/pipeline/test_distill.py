"""PromptKD distillation: the KD formula, teacher-signal modes that train identically, base/novel slicing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sempt_cli.methods.promptkd import kd_loss
from sempt_cli.pipeline.distill import distill, resolve_distill_settings
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.teacher import train_teacher


def test_kd_loss_matches_the_official_formula_by_hand() -> None:
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    tau = 2.0
    total = 0.0
    for b in range(2):
        zs = [math.exp(v / tau) for v in student[b].tolist()]
        zt = [math.exp(v / tau) for v in teacher[b].tolist()]
        qs = [v / sum(zs) for v in zs]
        qt = [v / sum(zt) for v in zt]
        total += sum(t * (math.log(t) - math.log(s)) for t, s in zip(qt, qs, strict=True))
    expected = total * tau**2 / 6  # summed KL, divided by B·n = 2·3 (not by B), times τ²
    assert kd_loss(student, teacher, tau).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


TINY = {"data.dataset": "demo", "model.pretrained": "none", "data.workers": 0, "data.eval_batch_size": 250,
        "data.allow_any_shots": True, "sempt.enabled": False}


@pytest.fixture(scope="module")
def teacher_checkpoint(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    overrides = {**TINY, "paths.cache_dir": str(demo_cache), "paths.output_dir": str(out), "data.shots": 1,
                 "train.epochs": 1}
    return train_teacher("promptsrc", resolve_with_preset("promptsrc", overrides, env={})).checkpoint


def _student(checkpoint: Path, cache: Path, out: Path, **extra: object):
    overrides = {**TINY, "paths.cache_dir": str(cache), "paths.output_dir": str(out), "data.shots": 2,
                 "data.batch_size": 8, "train.epochs": 2, **extra}
    return distill("promptkd", checkpoint, resolve_distill_settings("promptkd", checkpoint, overrides, env={}))


@pytest.mark.slow
def test_teacher_modes_train_the_same_student(teacher_checkpoint: Path, demo_cache: Path, tmp_path: Path) -> None:
    cached = _student(teacher_checkpoint, demo_cache, tmp_path)
    live = _student(teacher_checkpoint, demo_cache, tmp_path, **{"promptkd.teacher_cache_gb": 0})
    reference = _student(teacher_checkpoint, demo_cache, tmp_path, **{"promptkd.recompute_teacher": True})
    assert "cached for all 2 epochs" in cached.mode
    assert "computed live" in live.mode and "reference mode" in reference.mode
    assert len({cached.run_dir, live.run_dir, reference.run_dir}) == 3
    states = [load_file(run.checkpoint) for run in (cached, live, reference)]
    assert any(k.startswith("projector.") for k in states[0]) and "projector.bn.running_mean" in states[0]
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[2][key], rtol=1e-4, atol=1e-5)  # both fp32 teacher
        torch.testing.assert_close(states[0][key], states[2][key], rtol=2e-2, atol=2e-3)  # fp16 feature storage
    assert set(cached.metrics) == {"base", "novel", "hm", "all"}


@pytest.mark.slow
def test_student_scores_base_and_novel_against_the_right_rows(teacher_checkpoint: Path, demo_cache: Path,
                                                               tmp_path: Path) -> None:
    from sempt_cli.methods.promptkd import PromptKD, TeacherSignals
    from sempt_cli.models.factory import load_clip
    from sempt_cli.settings import load_settings

    vectors = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    names = ["a", "b", "c", "d", "e"]
    signals = TeacherSignals(lambda: vectors, lambda batch: vectors[:1])
    clip = load_clip("sempt-demo-student", None)
    method = PromptKD(clip, names, load_settings({"prompts.vision_depth": 2}, env={}).settings, teacher=signals)
    assert torch.equal(method.class_embeddings(names[:3]), vectors[:3])  # base = first ceil(n/2)
    assert torch.equal(method.class_embeddings(names[3:]), vectors[3:])  # novel = the rest
    with pytest.raises(Exception, match="contiguous"):
        method.class_embeddings(["a", "c"])


@pytest.mark.slow
def test_official_best_selection_keeps_the_best_base_test_epoch(teacher_checkpoint: Path, demo_cache: Path,
                                                                tmp_path: Path) -> None:
    """`--select official-best`: base-class test accuracy after every epoch, the best epoch's student kept."""
    import json

    from sempt_cli.pipeline.runs import METRICS_FILE

    best = _student(teacher_checkpoint, demo_cache, tmp_path, **{"train.epochs": 3,
                                                                "train.select": "official-best"})
    last = _student(teacher_checkpoint, demo_cache, tmp_path, **{"train.epochs": 3})
    assert best.run_dir != last.run_dir  # the selection rule is part of the run's identity
    record = json.loads((best.run_dir / METRICS_FILE).read_text())
    scores = {int(epoch): score for epoch, score in record["epoch_scores"].items()}
    assert sorted(scores) == [1, 2, 3]
    assert record["selected_epoch"] == max(scores, key=lambda e: (scores[e], -e))
    assert best.metrics["base"] == pytest.approx(scores[record["selected_epoch"]])  # the same base-test score
    assert "selected_epoch" not in json.loads((last.run_dir / METRICS_FILE).read_text())
    if record["selected_epoch"] == 3:
        assert best.metrics == last.metrics
