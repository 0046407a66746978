"""SemPT on a supervised baseline (MMRL) through the pipeline, the `distill --baseline mmrl` command, and the
few-shot sweep (`sempt few-shot`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from sempt_cli.cli.app import app
from sempt_cli.models.checkpoint import load_learned
from sempt_cli.pipeline.evaluation import evaluate_checkpoint
from sempt_cli.pipeline.fewshot import FewShotPlan, run_few_shot
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.teacher import train_teacher
from sempt_cli.report.records import ModelInfo, aggregate
from sempt_cli.settings import load_settings

pytestmark = pytest.mark.slow  # every test here trains on the demo world


TINY = {"data.dataset": "demo", "model.pretrained": "none", "data.workers": 0, "data.eval_batch_size": 250,
        "data.allow_any_shots": True, "data.shots": 1, "train.epochs": 1}


@pytest.fixture(scope="module")
def workspace(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("sempt-supervised")
    return {**TINY, "paths.cache_dir": str(demo_cache), "paths.output_dir": str(out),
            "eval.results_dir": str(out / "records")}


@pytest.fixture(scope="module")
def mmrl_sempt(workspace: dict[str, str]):
    return train_teacher("mmrl", resolve_with_preset("mmrl", workspace, env={}), sempt=True)


def test_mmrl_with_sempt_sees_its_own_training_classes_and_keeps_a_baseline_checkpoint(
    mmrl_sempt, workspace: dict[str, str]
) -> None:
    meta = load_learned(mmrl_sempt.checkpoint).metadata
    assert meta["method"] == "mmrl" and meta["variant"] == "w/ SemPT"
    assert meta["backbone"] == "sempt-demo-student"  # the demo's ViT-B/16 stand-in (MMRL preset)
    assert meta["sempt"]["seen_classnames"] == meta["train_classnames"] == meta["classnames"][:20]
    keys = set(load_file(mmrl_sempt.checkpoint))
    assert {"sempt.fusion.fc1.weight", "space.tokens", "proj_rep"} <= keys
    assert "-sempt-" in mmrl_sempt.run_dir.name
    baseline = train_teacher("mmrl", resolve_with_preset("mmrl", workspace, env={}))
    assert baseline.run_dir != mmrl_sempt.run_dir
    assert not any(k.startswith("sempt.") for k in load_file(baseline.checkpoint))
    assert set(mmrl_sempt.metrics) == set(baseline.metrics) == {"base", "novel", "hm", "all"}


def test_eval_of_mmrl_with_sempt_reproduces_training_and_titles_the_row(mmrl_sempt, workspace: dict[str, str]) -> None:
    settings = load_settings(workspace, env={}).settings
    record = evaluate_checkpoint(mmrl_sempt.checkpoint, settings)
    for metric, value in mmrl_sempt.metrics.items():
        assert record.results["demo"].metrics[metric] == pytest.approx(value)
    assert isinstance(record.model, ModelInfo) and record.model.variant == "w/ SemPT"
    assert aggregate([record])[0].label == "ours: MMRL w/ SemPT (sempt-demo-student, 1-shot)"  # no 'teacher' role
    enhanced = evaluate_checkpoint(mmrl_sempt.checkpoint, load_settings({**workspace, "sempt.inference": "enhanced"},
                                                                         env={}).settings)
    assert enhanced.key != record.key
    assert enhanced.results["demo"].metrics["base"] != pytest.approx(record.results["demo"].metrics["base"])
    assert enhanced.results["demo"].metrics["novel"] == pytest.approx(record.results["demo"].metrics["novel"])
    calibrated = evaluate_checkpoint(mmrl_sempt.checkpoint, load_settings(
        {**workspace, "sempt.inference": "calibrated"}, env={}).settings)  # fitted on its labelled base shots
    assert calibrated.key != record.key and "calibrated" in calibrated.model.variant
    for metric in ("base", "novel"):  # only the all-classes view mixes the groups
        assert calibrated.results["demo"].metrics[metric] == record.results["demo"].metrics[metric]


def test_distill_command_trains_a_supervised_baseline_without_a_teacher(workspace: dict[str, str]) -> None:
    flags = ["--dataset", "demo", "--pretrained", "none", "--workers", "0", "--shots", "1", "--epochs", "1",
             "--allow-any-shots", "--cache-dir", workspace["paths.cache_dir"], "--output-dir",
             workspace["paths.output_dir"], "--eval-batch-size", "250"]
    result = CliRunner().invoke(app, ["distill", "--baseline", "mmrl", "--no-sempt", *flags])
    assert result.exit_code == 0, result.output
    assert "mmrl on demo" in result.output
    refused = CliRunner().invoke(app, ["distill", "--baseline", "mmrl", "--teacher", "x.safetensors", *flags])
    assert refused.exit_code != 0 and "takes no --teacher" in str(refused.exception)
    unknown = CliRunner().invoke(app, ["distill", "--baseline", "nope", *flags])
    assert unknown.exit_code != 0 and "mmrl" in str(unknown.exception)


def test_few_shot_sweep_trains_both_variants_per_shot_and_seed(workspace: dict[str, str], tmp_path: Path) -> None:
    from sempt_cli.report.plots import few_shot_curves

    overrides = {k: v for k, v in workspace.items() if k not in {"data.shots", "data.dataset"}}
    plan = FewShotPlan("mmrl", ("demo",), shots=(1, 2), seeds=(1,))
    report = run_few_shot(plan, overrides, env={})
    assert len(report.records) == plan.size == 4
    groups = {(g.title, g.shots) for g in report.groups}
    assert groups == {("MMRL", 1), ("MMRL", 2), ("MMRL w/ SemPT", 1), ("MMRL w/ SemPT", 2)}
    assert all(g.setting == "few-shot" for g in report.groups)
    assert [path.name for path in few_shot_curves(report.groups, tmp_path)] == ["fewshot-demo.png"]
    again = run_few_shot(plan, overrides, env={})
    assert all(record.reused for record in again.records)  # finished runs and records are reused
    with pytest.raises(Exception, match="labels"):
        FewShotPlan("promptkd", ("demo",))


@pytest.mark.parametrize("method", ["dpt", "restore"])
def test_other_baselines_train_evaluate_and_run_with_sempt_on_the_demo_world(
    method: str, workspace: dict[str, str]
) -> None:
    overrides = {**workspace, "data.batch_size": 8}
    plain = train_teacher(method, resolve_with_preset(method, overrides, env={}))
    wrapped = train_teacher(method, resolve_with_preset(method, overrides, env={}), sempt=True)
    assert load_learned(wrapped.checkpoint).metadata["variant"] == "w/ SemPT"
    settings = load_settings(workspace, env={}).settings
    for run in (plain, wrapped):
        record = evaluate_checkpoint(run.checkpoint, settings)
        for metric, value in run.metrics.items():
            assert record.results["demo"].metrics[metric] == pytest.approx(value), (method, metric)
