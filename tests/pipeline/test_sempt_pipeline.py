"""SemPT through the pipeline: distill on by default, seen classes from the teacher, eval rules, ablate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sempt_cli.errors import SemptError, SettingsError
from sempt_cli.models.checkpoint import load_learned
from sempt_cli.pipeline.ablate import run_ablation
from sempt_cli.pipeline.distill import distill, resolve_distill_settings
from sempt_cli.pipeline.evaluation import evaluate_checkpoint
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.sempt import attribute_file, seen_classes
from sempt_cli.pipeline.teacher import train_teacher
from sempt_cli.report.ablation import ablation_plot, ablation_view
from sempt_cli.settings import load_settings

TINY = {"data.dataset": "demo", "model.pretrained": "none", "data.workers": 0, "data.eval_batch_size": 250,
        "data.allow_any_shots": True}
STUDENT = {"data.shots": 1, "data.batch_size": 8, "train.epochs": 1}


@pytest.fixture(scope="module")
def workspace(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("sempt-runs")
    return {**TINY, "paths.cache_dir": str(demo_cache), "paths.output_dir": str(out),
            "eval.results_dir": str(out / "records")}


@pytest.fixture(scope="module")
def teacher(workspace: dict[str, str]) -> Path:
    overrides = {**workspace, "data.shots": 1, "train.epochs": 1}
    return train_teacher("promptsrc", resolve_with_preset("promptsrc", overrides, env={})).checkpoint


def _distill(teacher: Path, overrides: dict[str, object]):
    return distill("promptkd", teacher, resolve_distill_settings("promptkd", teacher, overrides, env={}))


@pytest.fixture(scope="module")
def sempt_student(teacher: Path, workspace: dict[str, str]):
    return _distill(teacher, {**workspace, **STUDENT})


@pytest.mark.slow
def test_distill_applies_sempt_by_default_with_the_teachers_seen_classes(
    sempt_student, teacher: Path, workspace: dict[str, str]
) -> None:
    meta = load_learned(sempt_student.checkpoint).metadata
    teacher_meta = load_learned(teacher).metadata
    assert meta["variant"] == "w/ SemPT"
    assert meta["sempt"]["seen_classnames"] == teacher_meta["train_classnames"] == meta["classnames"][:20]
    assert meta["sempt"]["attributes_sha256"] and Path(meta["sempt"]["attributes_file"]).is_file()
    keys = set(load_file(sempt_student.checkpoint))
    assert {"sempt.fusion.fc1.weight", "sempt.fusion.fc2.weight"} <= keys
    assert any(k.startswith("projector.") for k in keys)
    assert set(sempt_student.metrics) == {"base", "novel", "hm", "all"}
    baseline = _distill(teacher, {**workspace, **STUDENT, "sempt.enabled": False})
    assert baseline.run_dir != sempt_student.run_dir
    assert not any(k.startswith("sempt.") for k in load_file(baseline.checkpoint))
    assert not load_learned(baseline.checkpoint).record.variant


@pytest.mark.slow
def test_sempt_student_does_not_depend_on_whether_the_description_cache_was_warm(
    sempt_student, teacher: Path, workspace: dict[str, str], tmp_path: Path
) -> None:
    """The fixture's run encoded T_atr (a cache miss reloads and reseeds the teacher); this one reads it."""
    again = _distill(teacher, {**workspace, **STUDENT, "paths.output_dir": str(tmp_path)})
    first, second = load_file(sempt_student.checkpoint), load_file(again.checkpoint)
    assert first.keys() == second.keys()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


@pytest.mark.slow
def test_eval_reproduces_training_metrics_and_applies_each_inference_rule(
    sempt_student, workspace: dict[str, str]
) -> None:
    def scored(rule: str):
        settings = load_settings({**workspace, "sempt.inference": rule}, env={}).settings
        return evaluate_checkpoint(sempt_student.checkpoint, settings)

    hybrid, label, enhanced = scored("hybrid"), scored("label"), scored("enhanced")
    assert hybrid.results["demo"].metrics == pytest.approx(sempt_student.metrics)
    assert len({hybrid.key, label.key, enhanced.key}) == 3
    assert hybrid.model.variant == "w/ SemPT" and "T_lbl for all" in label.model.variant
    # base classes are seen (T_lbl under hybrid), novel unseen (T_enh): Table 4a's identities
    assert hybrid.results["demo"].metrics["base"] == label.results["demo"].metrics["base"]
    assert hybrid.results["demo"].metrics["novel"] == enhanced.results["demo"].metrics["novel"]
    again = scored("hybrid")
    assert again.reused and again.key == hybrid.key


def test_seen_classes_count_only_in_the_teachers_label_space() -> None:
    seen = ["tench", "goldfish"]
    assert seen_classes("imagenet", seen, "imagenet") == ["tench", "goldfish"]
    assert seen_classes("imagenet", seen, "imagenet_a") == ["tench", "goldfish"]  # cross-domain: same label space
    assert seen_classes("imagenet", seen, "oxford_pets") == []  # cross-dataset target: every class unseen


def test_attribute_files_are_found_or_explained(tmp_path: Path) -> None:
    settings = load_settings({"paths.attributes_dir": str(tmp_path), "paths.cache_dir": str(tmp_path / "c")},
                             env={}).settings
    with pytest.raises(SemptError, match="gen-attributes --dataset dtd"):
        attribute_file("dtd", settings)
    (tmp_path / "imagenet.json").write_text("{}")
    assert attribute_file("imagenet_sketch", settings) == tmp_path / "imagenet.json"
    demo = attribute_file("demo", settings)  # derived from the demo world's ground truth when absent
    assert demo.is_file() and json.loads(demo.read_text())["dataset"] == "demo"


@pytest.mark.slow
def test_ablation_runs_the_grid_reuses_it_and_renders_beside_table_4(
    teacher: Path, workspace: dict[str, str], tmp_path: Path
) -> None:
    overrides = {**workspace, **STUDENT}
    result = run_ablation("alpha", overrides, values=["0.2", "0.8"], teacher=teacher)
    assert [p.value for p in result.points] == ["0.2", "0.8"]
    assert all(set(p.stats) == {"base", "novel", "hm", "all"} for p in result.points)
    assert result.points[0].checkpoints[0] != result.points[1].checkpoints[0]
    summary = json.loads(result.path.read_text())
    assert summary["paper_table"] == "SemPT Table 4c" and len(summary["points"]) == 2
    view = ablation_view(result)
    rows = {cells[0]: cells for _, cells in view.rows}
    assert rows["0.2"][5:8] == ["87.08", "81.21", "84.04"] and rows["0.8"][5:8] == ["86.72", "80.96", "83.74"]
    assert rows["0.2"][3] == f"{result.points[0].stats['hm'].mean:.2f}"
    assert ablation_plot(result, tmp_path / "alpha.png").stat().st_size > 1000
    again = run_ablation("alpha", overrides, values=["0.2", "0.8"], teacher=teacher)
    assert all(r.reused for p in again.points for r in p.records)
    assert again.path == result.path


@pytest.mark.slow
def test_embedding_ablation_trains_once_and_evaluates_three_rules(teacher: Path, workspace: dict[str, str]) -> None:
    result = run_ablation("embedding", {**workspace, **STUDENT}, teacher=teacher)
    assert [p.value for p in result.points] == ["label", "enhanced", "hybrid"]
    assert len({p.checkpoints[0] for p in result.points}) == 1
    stats = {p.value: p.stats for p in result.points}
    assert stats["hybrid"]["base"].mean == stats["label"]["base"].mean
    assert stats["hybrid"]["novel"].mean == stats["enhanced"]["novel"].mean


@pytest.mark.slow
def test_inference_ablation_scores_all_four_rules_on_one_student(teacher: Path, workspace: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """label, enhanced, hybrid and calibrated on the same trained student (no retraining); calibrated keeps the
    base and novel views of hybrid exactly (they never mix the two groups) and is fitted once, into the cache."""
    result = run_ablation("inference", {**workspace, **STUDENT}, teacher=teacher)
    assert [p.value for p in result.points] == ["label", "enhanced", "hybrid", "calibrated"]
    assert len({p.checkpoints[0] for p in result.points}) == 1
    stats = {p.value: p.stats for p in result.points}
    assert all(set(s) == {"base", "novel", "hm", "all"} for s in stats.values())
    for metric in ("base", "novel"):
        assert stats["calibrated"][metric].mean == stats["hybrid"][metric].mean
    fitted = list((Path(workspace["paths.cache_dir"]) / "tensors" / "sempt-calibration").glob("*.safetensors"))
    assert len(fitted) == 1
    calibrated = result.points[-1].records[0]
    assert calibrated.model.variant == "w/ SemPT (T_lbl seen, calibrated T_enh unseen)"
    assert calibrated.results["demo"].per_class["all"]
    rows = {cells[0]: cells for _, cells in ablation_view(result).rows}
    assert rows["calibrated"][5:8] == ["—", "—", "—"] and rows["hybrid"][5:8] != ["—", "—", "—"]
    assert ablation_plot(result, tmp_path / "inference.png").stat().st_size > 1000
    again = evaluate_checkpoint(Path(str(calibrated.model.checkpoint)), load_settings(
        {**workspace, "sempt.inference": "calibrated", "eval.reuse": False}, env={}).settings)
    assert again.results["demo"].metrics == calibrated.results["demo"].metrics  # read back from the cache


def test_ablation_rejects_bad_input_before_training(workspace: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="Unknown ablation"):
        run_ablation("gamma", workspace)
    with pytest.raises(SettingsError, match="not a number"):
        run_ablation("alpha", workspace, values=["high"])
    with pytest.raises(SettingsError, match="--teacher"):
        run_ablation("alpha", {**workspace, "data.dataset": "dtd"})
