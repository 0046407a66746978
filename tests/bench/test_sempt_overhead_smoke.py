"""bench/sempt_overhead.py on a tiny configuration (the demo student, a handful of classes): the measurement
runs end to end, its record is sane, and its own checks hold (factorised and naive SemPT give the same loss,
SemPT's KD-vs-T_lbl part is the baseline's loss). A few seconds on 2 CPU cores."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
import torch

from tests.bench.scripts import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("sempt_overhead.py", "sempt_overhead_bench")


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_tiny_run_gives_a_sane_record(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    args = bench.parse_args(["--student", "sempt-demo-student", "--classes", "5,40", "--teacher-dim", "24",
                             "--descriptions", "4", "--batch", "4", "--eval-batch", "6", "--repeats", "2",
                             "--eval-repeats", "1"])
    record = bench.measure(args)
    out = capsys.readouterr().out

    assert [r["classes"] for r in record["train"]] == [5, 40]
    for result in record["train"]:
        rows = {r["variant"]: r for r in result["variants"]}
        assert list(rows) == list(bench.VARIANTS)
        for row in rows.values():
            assert positive(row["best_s"]) and row["best_s"] <= row["median_s"]
            assert positive(row["ratio"]) and positive(row["median_ratio"]) and positive(row["model_ratio"])
        assert rows["baseline"]["ratio"] == 1.0
        assert rows["sempt"]["model_ratio"] > 1.0 and rows["sempt-naive"]["model_ratio"] > 1.0
        assert result["losses_agree"]
        assert result["loss_relative_difference"]["factorised_vs_naive"] < 1e-4
        assert result["loss_relative_difference"]["kd_lbl_vs_baseline"] < 1e-6
        assert len(result["loss"]["sempt_total"]) == 2  # one loss per timed round
        assert all(math.isfinite(x) for x in result["loss"]["sempt_total"])

    assert [r["classes"] for r in record["eval"]] == [5, 40]
    for result in record["eval"]:
        rows = {r["variant"]: r for r in result["variants"]}
        assert set(rows) == {"baseline", "sempt", "baseline head", "sempt head"}
        for row in rows.values():
            assert positive(row["best_per_s"]) and positive(row["time_ratio"])
        assert positive(rows["sempt"]["model_ratio"])
        assert result["peak_bytes"]["sempt"] > 0 and result["peak_bytes"]["naive"] > 0
        assert result["naive_input_bytes"] == 6 * result["classes"] * 2 * 24 * 4

    assert record["target"]["verdict"] is None  # not the issue's geometry: no verdict
    assert "no verdict" in out and "DISAGREE" not in out
    assert out.count("total factorised vs naive relative difference") == 2


def test_flop_model_favours_the_factorisation_and_matches_the_issue_geometry(bench: ModuleType) -> None:
    batch, classes, s, d = 8, 1000, 6, 768
    factorised = bench.sempt_flops(batch, classes, s, d, True)
    naive = bench.sempt_flops(batch, classes, s, d, True, naive=True)
    assert 0 < factorised < naive
    assert bench.sempt_flops(batch, classes, s, d, True, train=False) < factorised
    assert bench.sempt_flops(batch, classes, s, d, False) < factorised  # linear fusion: no fc2
    # per image, the class-side projection is left out of evaluation (it runs once per evaluation)
    assert bench.sempt_flops(100, classes, s, d, True, train=False, class_side=False) == pytest.approx(
        2 * 100 * classes * (2 * s * d + d * d + d))
    assert bench.chunk_classes(8, 768) > 1000 and bench.chunk_classes(100, 768) < 1000


def test_cpu_peak_memory_counts_live_tensors_only(bench: ModuleType) -> None:
    def two_live_one_freed() -> torch.Tensor:
        a = torch.ones(1 << 20)  # 4 MiB
        b = a * 2  # 4 MiB, both live
        del a
        c = b + 1  # 4 MiB, a freed first: still 8 MiB at most
        return c.sum()

    peak = bench.peak_bytes(two_live_one_freed, torch.device("cpu"))
    assert 8 * 2**20 <= peak < 9 * 2**20
