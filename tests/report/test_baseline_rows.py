"""The baselines SemPT's Tables 1-3 compare against, run by us, sit beside the papers' rows of the same name (the
report matches a method's `title`), and the SemPT variant of a baseline is labelled as ours alone."""

from __future__ import annotations

import pytest

from sempt_cli.protocol import get_method
from sempt_cli.report.records import DatasetResult, EvalRecord, ModelInfo, aggregate
from sempt_cli.report.tables import build_comparisons

SETTINGS = [("base2novel", "1"), ("cross-dataset", "2"), ("cross-domain", "3")]


def _comparison(method: str, setting: str, variant: str = "") -> tuple[str, list[str]]:
    dataset = "oxford_flowers" if setting == "base2novel" else "imagenet"
    metrics = {"base": 80.0, "novel": 70.0, "hm": 74.7, "all": 60.0} if setting == "base2novel" \
        else {"accuracy": 70.0}
    info = ModelInfo(kind="teacher", method=method, backbone="ViT-B-16-quickgelu", pretrained="openai", shots=16,
                     seed=1, config_hash="c", variant=variant)
    record = EvalRecord(key=method, setting=setting, model=info, datasets=[dataset],
                        results={dataset: DatasetResult(dataset, "ok", metrics)},
                        comparable=True, paper_backbone="ViT-B/16")
    [comparison] = build_comparisons(aggregate([record]))
    return comparison.group.label, [row.label for row in comparison.paper]


@pytest.mark.parametrize("method", ["cocoop", "maple", "mma"])
@pytest.mark.parametrize(("setting", "table"), SETTINGS)
def test_a_baseline_sits_beside_the_papers_rows_of_its_title(method: str, setting: str, table: str) -> None:
    title = get_method(method).title
    label, paper = _comparison(method, setting)
    assert label == f"ours: {title} (ViT-B/16)"  # a baseline: no 'teacher' role in its label
    assert f"paper: {title} (SemPT Table {table})" in paper


@pytest.mark.parametrize("method", ["cocoop", "maple", "mma"])
def test_a_baseline_with_sempt_is_ours_beside_the_papers_baseline(method: str) -> None:
    title = get_method(method).title
    label, paper = _comparison(method, "base2novel", "w/ SemPT")
    assert label == f"ours: {title} w/ SemPT (ViT-B/16)"
    assert not any("w/ SemPT" in row and title in row for row in paper), paper  # nobody has published it
