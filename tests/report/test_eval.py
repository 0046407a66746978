"""`sempt eval`: records of real (tiny) checkpoints, reuse, skipped datasets, seed statistics, tables vs the
papers, figures, and the command line."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from sempt_cli.cli.app import app
from sempt_cli.data.demo import ensure_demo_world
from sempt_cli.errors import SemptError, SettingsError, WeightsError
from sempt_cli.pipeline import evaluation
from sempt_cli.pipeline.distill import distill, resolve_distill_settings
from sempt_cli.pipeline.evaluation import default_datasets, evaluate_checkpoint, evaluate_runs, views_for
from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.teacher import train_teacher
from sempt_cli.report.paper import AVERAGE, BASE2NOVEL_DATASETS, harmonic_mean, lookup
from sempt_cli.report.plots import write_plots
from sempt_cli.report.records import (
    DatasetResult,
    EvalRecord,
    ModelInfo,
    aggregate,
    load_record,
    round_to_tenth,
    seed_metrics,
)
from sempt_cli.report.tables import build_comparisons, render, rich_tables
from sempt_cli.settings import Settings, load_settings
from tests.data.fabricate import fabricate_dataset

TINY = {"data.dataset": "demo", "model.pretrained": "none", "data.workers": 0, "data.eval_batch_size": 250,
        "data.allow_any_shots": True}


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("sempt-cache")
    ensure_demo_world(cache)
    return cache


@pytest.fixture(scope="module")
def runs(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A one-epoch PromptSRC teacher and a one-epoch PromptKD student on random-init demo CLIPs."""
    out = tmp_path_factory.mktemp("runs")
    common = {**TINY, "paths.cache_dir": str(demo_cache), "paths.output_dir": str(out), "train.epochs": 1}
    teacher = train_teacher("promptsrc", resolve_with_preset("promptsrc", {**common, "data.shots": 1}, env={}))
    student = distill("promptkd", teacher.checkpoint, resolve_distill_settings(
        "promptkd", teacher.checkpoint, {**common, "data.shots": 1, "data.batch_size": 8, "sempt.enabled": False},
        env={}))
    return {"teacher": teacher, "student": student}


def _settings(cache: Path, results: Path, **extra: Any) -> Settings:
    return load_settings({**TINY, "paths.cache_dir": str(cache), "eval.results_dir": str(results), **extra},
                         env={}).settings


# ------------------------------------------------------------------------------------------ real checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_base2novel_record_has_base_novel_hm_all(kind: str, runs: dict[str, Any], demo_cache: Path,
                                                 tmp_path: Path) -> None:
    run = runs[kind]
    record = evaluate_checkpoint(run.checkpoint, _settings(demo_cache, tmp_path), command=["sempt", "eval"])
    result = record.results["demo"]
    assert record.setting == "base2novel" and record.model.kind == kind and result.status == "ok"
    assert list(result.metrics) == ["base", "novel", "hm", "all"]
    assert result.metrics["hm"] == pytest.approx(harmonic_mean(result.metrics["base"], result.metrics["novel"]))
    assert result.counts["base"]["total"] + result.counts["novel"]["total"] == result.counts["all"]["total"]
    for view, classes in result.per_class.items():  # per class and view, summing to the view's counts
        assert len(classes) == {"base": 20, "novel": 20, "all": 40}[view]
        assert sum(c for c, _ in classes.values()) == result.counts[view]["correct"]
        assert sum(t for _, t in classes.values()) == result.counts[view]["total"]
    assert set(result.per_class["base"]) | set(result.per_class["novel"]) == set(result.per_class["all"])
    for metric in ("base", "novel"):  # the same numbers the training run measured (one image = 0.1 here)
        assert result.metrics[metric] == pytest.approx(run.metrics[metric], abs=0.1 + 1e-9)
    assert not record.comparable and "not comparable" in record.comparability_note
    saved = json.loads(record.path.read_text())  # type: ignore[union-attr]
    assert saved["model"]["checkpoint_sha256"] and saved["versions"].keys() >= {"sempt", "torch", "open_clip"}
    assert saved["command"] == ["sempt", "eval"] and saved["timings"]["seconds"] > 0
    assert saved["settings"]["eval"]["setting"] == "base2novel" and saved["settings"]["model"]["backbone"]
    if kind == "student":
        assert saved["model"]["teacher_sha256"] == load_record(record.path).model.teacher_sha256  # type: ignore[arg-type]


@pytest.mark.slow
def test_identical_evaluation_reuses_its_record(runs: dict[str, Any], demo_cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(demo_cache, tmp_path)
    first = evaluate_checkpoint(runs["student"].checkpoint, settings)
    scored: list[str] = []
    original = evaluation._score_dataset

    def counting(model: Any, dataset: str, *args: Any) -> DatasetResult:
        scored.append(dataset)
        return original(model, dataset, *args)

    monkeypatch.setattr(evaluation, "_score_dataset", counting)
    again = evaluate_checkpoint(runs["student"].checkpoint, settings)
    assert again.reused and again.path == first.path and scored == []
    assert again.results["demo"].metrics == first.results["demo"].metrics
    evaluate_checkpoint(runs["student"].checkpoint, _settings(demo_cache, tmp_path, **{"eval.reuse": False}))
    assert scored == ["demo"]  # --no-reuse recomputes
    other = evaluate_checkpoint(runs["student"].checkpoint, settings, setting="few-shot")
    assert other.key != first.key and list(other.results["demo"].metrics) == ["accuracy"]


@pytest.mark.slow
def test_missing_dataset_is_skipped_then_retried_and_subsets_are_200_way(
    runs: dict[str, Any], demo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_root = tmp_path / "DATA"
    fabricate_dataset("imagenet_a", data_root, (0, 0, 1))
    settings = _settings(demo_cache, tmp_path / "results", **{"paths.data_root": str(data_root)})
    datasets = ["imagenet_a", "dtd"]
    for kind in ("teacher", "student"):
        record = evaluate_checkpoint(runs[kind].checkpoint, settings, setting="cross-domain", datasets=datasets)
        scored = record.results["imagenet_a"]
        assert scored.status == "ok" and scored.num_classes == 200 and scored.counts["accuracy"]["total"] == 200
        skipped = record.results["dtd"]
        assert skipped.status == "skipped" and "dtd" in skipped.message and "does not exist" in skipped.message
    group = aggregate([record])[0]
    assert group.datasets == ["imagenet_a"] and "does not exist" in group.skipped["dtd"]
    assert any("dtd skipped" in note for note in build_comparisons([group])[0].notes)

    fabricate_dataset("dtd", data_root, (1, 1, 1))  # the data arrives: only dtd is scored on the re-run
    calls: list[str] = []
    original = evaluation._score_dataset
    monkeypatch.setattr(evaluation, "_score_dataset",
                        lambda model, dataset, *a: calls.append(dataset) or original(model, dataset, *a))
    again = evaluate_checkpoint(runs["student"].checkpoint, settings, setting="cross-domain", datasets=datasets)
    assert calls == ["dtd"] and again.results["dtd"].status == "ok" and again.results["dtd"].num_classes == 47


@pytest.mark.slow
def test_student_refuses_a_different_teacher(runs: dict[str, Any], demo_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not the teacher this student was distilled from"):
        evaluate_checkpoint(runs["student"].checkpoint, _settings(demo_cache, tmp_path),
                            teacher=runs["student"].checkpoint)


def test_protocol_dataset_lists_and_views() -> None:
    assert default_datasets("base2novel", "oxford_flowers") == ["oxford_flowers"]
    cross = default_datasets("cross-dataset", "imagenet")
    assert cross[0] == "imagenet" and len(cross) == 11 and "imagenet" not in cross[1:]
    assert default_datasets("cross-domain", "imagenet") == ["imagenet", "imagenetv2", "imagenet_sketch",
                                                            "imagenet_a", "imagenet_r"]
    assert default_datasets("cross-dataset", "demo") == ["demo"]
    views = {v.name: (v.start, v.stop) for v in views_for("base2novel", 101)}
    assert views == {"base": (0, 51), "novel": (51, 101), "all": (0, 101)}  # base gets ceil(n/2)


# ----------------------------------------------------------------------------------------- hand-made records


def _record(seed: int, metrics: dict[str, float], dataset: str = "oxford_flowers", setting: str = "base2novel",
            method: str = "promptkd", kind: str = "student", shots: int = 0, config: str = "c",
            backbone: str = "ViT-B-16-quickgelu", comparable: bool = True) -> EvalRecord:
    info = ModelInfo(kind=kind, method=method, backbone=backbone, pretrained="openai",  # type: ignore[arg-type]
                     shots=shots, seed=seed, config_hash=config)
    return EvalRecord(
        key=f"{method}-{dataset}-{setting}-{shots}-{seed}-{config}", setting=setting, model=info, datasets=[dataset],
        results={dataset: DatasetResult(dataset, "ok", metrics)}, comparable=comparable,
        comparability_note="" if comparable else "Demo world (synthetic data): not comparable to the papers.",
        paper_backbone="ViT-B/16" if comparable else None,
    )


def _b2n(base: float, novel: float, all_: float = 50.0) -> dict[str, float]:
    return {"base": base, "novel": novel, "hm": harmonic_mean(base, novel), "all": all_}


def test_seed_aggregation_is_mean_population_std_and_hm_of_means() -> None:
    records = [_record(1, _b2n(80.0, 70.0)), _record(2, _b2n(82.0, 71.0)), _record(3, _b2n(84.0, 75.0))]
    [group] = aggregate([*records, records[0]])  # the same record twice counts once
    cell = group.cells["oxford_flowers"]
    assert cell["base"].mean == pytest.approx(82.0) and cell["base"].std == pytest.approx(math.sqrt(8 / 3))
    assert cell["novel"].mean == pytest.approx(72.0) and cell["novel"].std == pytest.approx(math.sqrt(14 / 3))
    assert cell["hm"].mean == pytest.approx(2 * 82 * 72 / (82 + 72))  # HM of the means, not the mean of HMs
    per_seed = [harmonic_mean(b, n) for b, n in ((80, 70), (82, 71), (84, 75))]
    assert cell["hm"].mean != pytest.approx(sum(per_seed) / 3)
    assert cell["hm"].values == pytest.approx(per_seed) and cell["base"].seeds == (1, 2, 3)

    rounded = seed_metrics([{"accuracy": 80.04}, {"accuracy": 80.06}], [1, 2], "few-shot", round_per_seed=True)
    exact = seed_metrics([{"accuracy": 80.04}, {"accuracy": 80.06}], [1, 2], "few-shot")
    assert rounded["accuracy"].mean == pytest.approx(80.05) and rounded["accuracy"].values == (80.0, 80.1)
    assert exact["accuracy"].mean == pytest.approx(80.05) and exact["accuracy"].std == pytest.approx(0.01)
    assert round_to_tenth(72.25) == 72.3 and round_to_tenth(72.24) == 72.2

    second = _record(1, _b2n(81, 70))
    second.key = "another evaluation of the same seed"
    with pytest.raises(SemptError, match="with seed 1"):
        aggregate([_record(1, _b2n(80, 70)), second])
    with pytest.raises(SemptError, match="differ in settings other than the seed"):
        aggregate([_record(1, _b2n(80, 70)), _record(2, _b2n(81, 70), config="d")])


def test_average_needs_every_dataset_and_uses_hm_of_averages() -> None:
    records = [_record(1, _b2n(80.0 + i, 60.0 + 2 * i), dataset=d) for i, d in enumerate(BASE2NOVEL_DATASETS)]
    [partial] = aggregate(records[:-1])
    assert partial.average() is None
    [group] = aggregate(records)
    average = group.average()
    assert average is not None and average["base"] == pytest.approx(85.0) and average["novel"] == pytest.approx(70.0)
    assert average["hm"] == pytest.approx(harmonic_mean(85.0, 70.0))


def _comparisons() -> list[Any]:
    ours = [_record(1, _b2n(98.0, 80.0, 85.0)), _record(2, _b2n(99.0, 82.0, 86.0))]
    cross = [_record(1, {"accuracy": 70.0}, dataset="imagenet", setting="cross-dataset"),
             _record(1, {"accuracy": 93.0}, dataset="caltech101", setting="cross-dataset")]
    return build_comparisons(aggregate([*ours, *cross]))


def test_tables_put_ours_next_to_paper_rows_with_deltas() -> None:
    comparisons = _comparisons()
    paper_hm = lookup("sempt", 1, "PromptKD", "oxford_flowers", "hm")
    paper_acc = lookup("sempt", 2, "PromptKD", "caltech101", "accuracy")
    assert paper_hm is not None and paper_acc is not None
    ours_hm = harmonic_mean(98.5, 81.0)

    markdown = render(comparisons, "markdown")
    assert "**ours: PromptKD (ViT-B/16, student)**" in markdown
    assert "| paper: PromptKD (SemPT Table 1) | 99.42 | 82.62 | 90.24 | — |" in markdown
    assert f"{ours_hm - paper_hm:+.2f}" in markdown and "98.50 ± 0.50" in markdown
    assert f"{paper_acc:.2f} ({93.0 - paper_acc:+.2f})" in markdown
    assert "paper: CLIP (PromptKD Table 1)" in markdown  # a method only PromptKD's table reports
    assert markdown.count("paper: PromptKD (PromptKD Table 1)") == 0  # SemPT's identical copy wins

    rows = list(csv.DictReader(io.StringIO(render(comparisons, "csv"))))
    mine = [r for r in rows if r["kind"] == "paper" and r["method"] == "PromptKD" and r["dataset"] == "oxford_flowers"
            and r["metric"] == "hm"]
    assert len(mine) == 1 and float(mine[0]["delta"]) == pytest.approx(ours_hm - paper_hm, abs=1e-4)
    assert "SemPT Table 1" in mine[0]["source"] and mine[0]["versus"] == "ours: PromptKD (ViT-B/16, student)"
    ours_rows = [r for r in rows if r["kind"] == "ours" and r["metric"] == "base"]
    assert ours_rows[0]["seeds"] == "1;2" and float(ours_rows[0]["std"]) == pytest.approx(0.5)

    payload = json.loads(render(comparisons, "json"))
    assert {g["setting"] for g in payload["groups"]} == {"base2novel", "cross-dataset"}
    assert any(r["kind"] == "paper" and r["delta"] is not None for r in payload["rows"])

    console = Console(file=io.StringIO(), width=250)
    for table in rich_tables(comparisons):
        console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "ours: PromptKD (ViT-B/16, student)" in text and "paper: PromptKD w/ SemPT (SemPT Table 1)" in text

    only = build_comparisons(aggregate([_record(1, _b2n(98.0, 80.0))]), compare=["promptkd"])
    assert [row.label for row in only[0].paper] == ["paper: PromptKD (SemPT Table 1)"]
    with pytest.raises(SettingsError, match="No paper reports a method called 'PromptKX'"):
        build_comparisons(aggregate([_record(1, _b2n(98.0, 80.0))]), compare=["PromptKX"])


def test_a_printed_hm_the_paper_contradicts_is_shown_as_printed_with_the_recomputed_one() -> None:
    comparisons = build_comparisons(aggregate([_record(1, _b2n(90.0, 80.0), dataset="ucf101")]), compare=["PromptKD"])
    markdown = render(comparisons, "markdown")
    assert "| paper: PromptKD (SemPT Table 1) | 89.71 | 82.27 | 86.10* (85.83) | — |" in markdown
    assert "printed HM 86.10 is not 2·B·N/(B+N) of the printed base and novel, which give 85.83" in markdown
    assert f"{harmonic_mean(90.0, 80.0) - 86.10:+.2f}" in markdown  # Δ against the paper's number
    rows = list(csv.DictReader(io.StringIO(render(comparisons, "csv"))))
    [hm] = [r for r in rows if r["kind"] == "paper" and r["metric"] == "hm"]
    assert float(hm["value"]) == 86.10 and "85.83" in hm["note"]


def test_demo_results_get_no_paper_rows_and_say_why() -> None:
    demo = _record(1, _b2n(90.0, 70.0), dataset="demo", backbone="sempt-demo-student", comparable=False)
    [comparison] = build_comparisons(aggregate([demo]))
    assert comparison.paper == [] and any("not comparable" in note for note in comparison.notes)
    markdown = render([comparison], "markdown")
    assert "paper:" not in markdown and "not comparable" in markdown
    rows = list(csv.DictReader(io.StringIO(render([comparison], "csv"))))
    assert rows and all(r["kind"] == "ours" and "not comparable" in r["note"] for r in rows)


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    records = []
    for shots, accuracy in ((1, 60.0), (2, 65.0), (4, 70.0), (8, 74.0), (16, 78.0)):
        for dataset in ("oxford_flowers", "dtd"):
            records += [_record(seed, {"accuracy": accuracy + seed}, dataset=dataset, setting="few-shot",
                                method="coop", kind="teacher", shots=shots) for seed in (1, 2)]
    records.append(_record(1, {"accuracy": 55.0}, setting="few-shot", method="zeroshot", kind="zeroshot"))
    records.append(_record(1, _b2n(98.0, 80.0)))
    written = write_plots(build_comparisons(aggregate(records)), tmp_path / "figures")
    names = sorted(p.name for p in written)
    assert names == ["fewshot-average.png", "fewshot-dtd.png", "fewshot-oxford_flowers.png",
                     "hm-base2novel-promptkd-student-ViT-B-16-quickgelu-0shot.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 200


# -------------------------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_scores_checkpoints_and_zero_shot_and_rerenders_records(runs: dict[str, Any], demo_cache: Path,
                                                                    tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--cache-dir", str(demo_cache), "--results-dir", str(tmp_path / "results"), "--workers", "0",
              "--eval-batch-size", "250"]
    result = runner.invoke(app, ["eval", str(runs["student"].checkpoint), "--zeroshot", *common,
                                 "--format", "markdown", "--plots", str(tmp_path / "figures")])
    assert result.exit_code == 0, result.output
    assert "ours: PromptKD (sempt-demo-student, student" in result.output
    assert "ours: CLIP (sempt-demo-teacher, zeroshot)" in result.output and "not comparable" in result.output
    assert "paper:" not in result.output
    assert sorted(p.name for p in (tmp_path / "figures").iterdir())  # HM bars for each model

    records = sorted((tmp_path / "results").rglob("*.json"))
    assert len(records) == 2
    again = runner.invoke(app, ["eval", *map(str, records), "--format", "json"])
    assert again.exit_code == 0, again.output
    payload = json.loads(again.output)
    assert {g["kind"] for g in payload["groups"]} == {"student", "zeroshot"}
    assert all(not g["comparable_to_paper"] for g in payload["groups"])

    clash = runner.invoke(app, ["eval", str(runs["student"].checkpoint), "--backbone", "ViT-B-16", *common])
    assert clash.exit_code != 0


def test_eval_settings_parse_lists() -> None:
    settings = load_settings({"eval.datasets": "Flowers102, imagenet-v2", "eval.compare": "PromptKD,CLIP"},
                             env={}).settings
    assert settings.eval.datasets == ["oxford_flowers", "imagenetv2"]
    assert settings.eval.compare == ["PromptKD", "CLIP"]
    assert load_settings({"eval.compare": "none"}, env={}).settings.eval.compare == []
    assert load_settings({"eval.compare": "all"}, env={}).settings.eval.compare is None
    with pytest.raises(SettingsError, match="unknown dataset 'mnist'"):
        load_settings({"eval.datasets": "mnist"}, env={})


def test_runs_need_something_to_evaluate(tmp_path: Path) -> None:
    with pytest.raises(SemptError, match="Nothing to evaluate"):
        evaluate_runs([], _settings(tmp_path, tmp_path))


def test_mmrl_rows_sit_beside_the_papers_mmrl_rows_and_few_shot_compares_at_16_shots() -> None:
    plain = _record(1, _b2n(85.0, 77.0), method="mmrl", kind="teacher", shots=16)
    wrapped = _record(1, _b2n(85.0, 79.0), method="mmrl", kind="teacher", shots=16, config="s")
    wrapped.model = replace(wrapped.model, variant="w/ SemPT")
    by_label = {c.group.label: c for c in build_comparisons(aggregate([plain, wrapped]))}
    assert set(by_label) == {"ours: MMRL (ViT-B/16)", "ours: MMRL w/ SemPT (ViT-B/16)"}
    labels = [row.label for row in by_label["ours: MMRL w/ SemPT (ViT-B/16)"].paper]
    assert "paper: MMRL (SemPT Table 1)" in labels and "paper: MMRL w/ SemPT (SemPT Table 1)" in labels

    few = [_record(1, {"accuracy": 80.0 + i}, dataset=d, setting="few-shot", method="mmrl", kind="teacher",
                   shots=shots) for shots in (1, 16) for i, d in enumerate(BASE2NOVEL_DATASETS)]
    one, sixteen = sorted(build_comparisons(aggregate(few)), key=lambda c: c.group.shots)
    assert one.paper == [] and any("16 shots only" in note for note in one.notes)
    quoted = [row for row in sixteen.paper if row.label == "paper: MMRL w/ SemPT (SemPT Fig. 4)"]
    assert len(quoted) == 1 and quoted[0].value(AVERAGE, "accuracy").value == 84.84  # type: ignore[union-attr]
    assert sixteen.ours(AVERAGE, "accuracy") == pytest.approx(85.0)
    assert any(row.label == "paper: DPT (DPT Table 2)" for row in sixteen.paper)


# ------------------------------------------------------------------------------------------ per-class results


def _demo_record(seed: int, variant: str, correct: dict[str, dict[str, int]]) -> EvalRecord:
    """A demo-world record whose per-class results are `correct` (view → class → correct of 50 images)."""
    info = ModelInfo(kind="student", method="promptkd", backbone="sempt-demo-student", pretrained="demo",
                     shots=0, seed=seed, config_hash=f"c{variant}", train_dataset="demo", variant=variant)
    per_class = {view: {name: [hits, 50] for name, hits in classes.items()} for view, classes in correct.items()}
    counts = {view: {"correct": sum(c for c, _ in classes.values()), "total": 50 * len(classes)}
              for view, classes in per_class.items()}
    metrics = {view: 100 * c["correct"] / c["total"] for view, c in counts.items()}
    metrics["hm"] = harmonic_mean(metrics["base"], metrics["novel"])
    return EvalRecord(key=f"demo-{variant}-{seed}", setting="base2novel", model=info, datasets=["demo"],
                      results={"demo": DatasetResult("demo", "ok", metrics, counts, 40, per_class=per_class)})


def _demo_pair(tmp_path: Path) -> list[Path]:
    from sempt_cli.data.demo import demo_world
    from sempt_cli.io import atomic_write_json

    names = [c.name for c in demo_world().classes]
    paths = []
    for seed in (1, 2):
        for variant, shift in (("", 0), ("w/ SemPT", 1)):
            views = {"base": {n: 40 for n in names[:20]}, "novel": {n: 30 for n in names[20:]},
                     "all": {n: 25 for n in names}}
            if shift:  # the SemPT model: the first novel class gains 10 and 6, the first base class loses 20 (all)
                views["novel"][names[20]] += 10 if seed == 1 else 6
                views["all"][names[0]] -= 20
            record = _demo_record(seed, variant, views)
            path = tmp_path / f"{variant or 'plain'}-{seed}.json".replace("/ ", "")
            atomic_write_json(path, record.to_json())
            paths.append(path)
    return paths


def test_per_class_compares_two_models_pooled_over_seeds(tmp_path: Path) -> None:
    from sempt_cli.report.per_class import changes_view, compare_per_class, spearman, summary_view

    paths = _demo_pair(tmp_path)
    groups = aggregate([load_record(p) for p in paths])
    comparison = compare_per_class(groups)
    assert comparison.first == "PromptKD" and comparison.second == "PromptKD w/ SemPT"
    novel = {r.classname: r for r in comparison.changes["novel"]}
    first_novel = comparison.changes["novel"][-1]
    assert first_novel.delta == pytest.approx(100 * 16 / 100) and first_novel.images == 100  # pooled: (10+6)/100
    assert first_novel.split == "novel" and first_novel.mentions is not None and first_novel.neighbour_distance
    assert all(r.delta == 0 for name, r in novel.items() if name != first_novel.classname)
    worst = comparison.changes["all"][0]
    assert worst.split == "base" and worst.delta == pytest.approx(-40.0)
    summary = {cells[0]: cells for _, cells in summary_view(comparison).rows}
    assert summary["novel"][1] == "—" and summary["novel"][2] == "+0.80 (20)"
    assert summary["all"][1] == "-2.00 (20)"
    table = changes_view(comparison, "all", top=2)
    assert table.rows[0][1][0] == worst.classname and len(table.rows) == 4
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0) and spearman([1, 1], [2, 3]) == 0.0


def test_cli_per_class_renders_records_and_needs_exactly_two_models(tmp_path: Path) -> None:
    paths = _demo_pair(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", *map(str, paths), "--per-class", "--top", "3", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "Per class: PromptKD w/ SemPT vs PromptKD" in result.output
    assert "### novel: largest losses and gains per class" in result.output and "name in corpus" in result.output
    one = runner.invoke(app, ["eval", *map(str, paths[:1]), "--per-class"])
    assert one.exit_code != 0 and "two models" in str(one.exception)
    old = load_record(paths[0])
    old.results["demo"].per_class = {}
    atomic = tmp_path / "old.json"
    atomic.write_text(json.dumps(old.to_json()))
    stale = runner.invoke(app, ["eval", str(atomic), str(paths[1]), "--per-class"])
    assert stale.exit_code != 0 and "no per-class results" in str(stale.exception)


@pytest.mark.slow
def test_calibrated_rule_is_identity_on_a_model_without_sempt(runs: dict[str, Any], demo_cache: Path,
                                                              tmp_path: Path) -> None:
    """A PromptKD student without SemPT scores the same under --inference calibrated: same record, same numbers."""
    plain = evaluate_checkpoint(runs["student"].checkpoint, _settings(demo_cache, tmp_path))
    calibrated = evaluate_checkpoint(runs["student"].checkpoint, _settings(
        demo_cache, tmp_path / "other", **{"sempt.inference": "calibrated"}))
    assert calibrated.key == plain.key and not calibrated.reused
    assert calibrated.results["demo"].metrics == plain.results["demo"].metrics
    assert calibrated.results["demo"].per_class == plain.results["demo"].per_class
    assert calibrated.model.variant == plain.model.variant == ""
    assert not (demo_cache / "tensors" / "sempt-calibration").exists()
