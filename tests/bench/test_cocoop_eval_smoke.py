"""bench/cocoop_eval.py on a tiny configuration (the demo student, 40 classes, a small sequence budget so CoCoOp's
evaluation runs in several image × class blocks): the measurement runs end to end and its record is sane. A few
seconds on 2 CPU cores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench.scripts import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("cocoop_eval.py", "cocoop_eval_bench")


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_tiny_run_gives_a_sane_record(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = bench.parse_args(["--backbone", "sempt-demo-student", "--classes", "40", "--classnames", "synthetic",
                             "--eval-batch", "3", "--repeats", "1", "--budget", "16", "--json",
                             str(tmp_path / "record.json")])
    record = bench.measure(args)
    out = capsys.readouterr().out

    assert record["sequence_budget"] == 16 and record["classes"] == 40 and record["eval_batch"] == 3
    rows = {row["variant"]: row for row in record["variants"]}
    assert list(rows) == list(bench.VARIANTS)
    for row in rows.values():
        assert positive(row["best_s"]) and row["best_s"] <= row["median_s"]
        assert positive(row["images_per_s"]) and positive(row["peak_bytes"])
    assert rows["cocoop"]["text_sequences_per_image"] == 40 and rows["coop"]["text_sequences_per_image"] == 0
    assert positive(record["slowdown"])
    assert record["official_prompt_tensor_bytes"] == 3 * 40 * 77 * 96 * 2  # [B, N, 77, width] fp16, demo width 96
    assert json.loads((tmp_path / "record.json").read_text()) == record
    assert "CoCoOp / CoOp time per batch" in out
