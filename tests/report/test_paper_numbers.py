"""The transcribed paper numbers: schema, the tables' own arithmetic, agreement between tables and papers.

These read `results/paper/*.csv`; a mistyped value anywhere trips at least one of them (see the corruption
tests at the end, which prove the checks can fail).
"""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from sempt_cli.data.registry import DATASETS as REGISTRY
from sempt_cli.errors import SemptError
from sempt_cli.report.paper import (
    AVERAGE,
    BACKBONES,
    COLUMNS,
    DATASETS,
    METRICS,
    PAPER_DIR,
    PAPERS,
    SETTINGS,
    PaperNumber,
    cross_check,
    harmonic_mean,
    load_paper_numbers,
    lookup,
    run_checks,
)

EXPECTED_ROWS = {  # (paper, table) -> rows; a lost or added row must be a deliberate change
    ("sempt", "1"): 573, ("sempt", "2"): 166, ("sempt", "3"): 90,
    ("sempt", "4a"): 9, ("sempt", "4b"): 9, ("sempt", "4c"): 12, ("sempt", "4d"): 12, ("sempt", "4e"): 9,
    ("sempt", "fig4"): 1,
    ("promptkd", "1"): 198, ("promptkd", "2"): 55, ("promptkd", "3"): 27, ("promptkd", "9"): 50,
    ("promptkd", "10"): 33, ("promptkd", "11"): 12,
    ("dpt", "1"): 96, ("dpt", "2"): 60, ("dpt", "3"): 18,
}
SHARED = ("CoOp", "CoCoOp", "MaPLe", "PromptSRC", "PromptKD")
"""Methods both papers report; SemPT copies PromptKD's numbers for them."""


@pytest.fixture(scope="module")
def numbers() -> list[PaperNumber]:
    return load_paper_numbers()


def _get(numbers: list[PaperNumber], paper: str, table: str, method: str, dataset: str, metric: str) -> float:
    value = lookup(paper, table, method, dataset, metric, numbers=numbers)
    assert value is not None, (paper, table, method, dataset, metric)
    return value


# ---------------------------------------------------------------- schema


def test_every_csv_has_exactly_the_long_format_columns_and_no_empty_field() -> None:
    files = sorted(PAPER_DIR.glob("*.csv"))
    assert len(files) == 14
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            assert tuple(next(reader)) == COLUMNS, path
            for row in reader:
                assert len(row) == len(COLUMNS) and all(cell.strip() for cell in row[:-1]), (path, row)
                assert re.fullmatch(r"\d{1,3}\.\d{1,2}", row[7]), (path, row)
                assert row[-1] == "" or (row[6] == "hm" and re.fullmatch(r"\d{1,3}\.\d{2}", row[-1])), (path, row)


def test_vocabulary_types_and_sources(numbers: list[PaperNumber]) -> None:
    assert run_checks(numbers).schema == []
    for n in numbers:
        assert isinstance(n.value, float) and n.decimals in (1, 2)
        assert n.paper in PAPERS and n.setting in SETTINGS and n.metric in METRICS and n.backbone in BACKBONES
        assert n.dataset in DATASETS
        prefix = {"sempt": "SemPT Table ", "promptkd": "PromptKD Table ", "dpt": "DPT Table "}[n.paper]
        if n.table == "fig4":
            prefix, number = "SemPT Fig. ", "4"
        else:
            number = n.table.rstrip("abcde")
        assert re.match(rf"{prefix}{number}[(, ]", n.source), n.source
        assert re.search(r"\[L\d+", n.source), n.source
    assert {d for d in DATASETS if d != AVERAGE} <= REGISTRY.keys()


def test_each_table_keeps_its_row_count(numbers: list[PaperNumber]) -> None:
    assert Counter((n.paper, n.table) for n in numbers) == EXPECTED_ROWS


def test_settings_and_backbones_per_table(numbers: list[PaperNumber]) -> None:
    expected = {"1": "base2novel", "2": "cross-dataset", "3": "cross-domain", "9": "cross-domain",
                "10": "base2novel", "11": "cross-dataset"}
    for n in numbers:
        if n.paper == "dpt":  # §IV-A: ViT-B/32 throughout, except Table 2
            assert n.setting == {"1": "few-shot", "2": "few-shot", "3": "cross-domain"}[n.table], n.label()
            assert n.backbone == ("ViT-B/16" if n.table == "2" else "ViT-B/32"), n.label()
        elif n.paper == "promptkd" and n.table == "3":
            assert n.setting == "base2novel" and n.dataset == "oxford_flowers"
        elif n.table == "fig4":  # the one Fig. 4 value the text quotes
            assert (n.setting, n.dataset, n.method) == ("few-shot", AVERAGE, "MMRL w/ SemPT")
        elif n.table.startswith("4"):
            assert n.setting == "ablation" and n.dataset == AVERAGE and n.method.startswith("PromptKD w/ SemPT (")
        else:
            assert n.setting == expected[n.table], n.label()
        teacher = n.paper == "promptkd" and n.table in ("10", "11")
        assert (n.backbone == "ViT-L/14") == teacher and (n.method == "PromptKD teacher") == teacher


# ---------------------------------------------------------------- the tables' own arithmetic


def test_hm_equals_two_b_n_over_b_plus_n(numbers: list[PaperNumber]) -> None:
    summary = run_checks(numbers)
    assert summary.hm == []
    assert summary.hm_checked == 283 + 10  # + the flagged printed HMs (README F1), checked as flagged


def test_per_dataset_values_average_to_the_average_row(numbers: list[PaperNumber]) -> None:
    summary = run_checks(numbers)
    assert summary.averages == []
    # SemPT T1 16×2 − O3 − O5, T2 14 − O6, T3 15; PromptKD T2 5, T9 10, T11 1 (T1 lacks Caltech101, O2);
    # DPT T1 8, T2 5, T3 3.
    assert summary.averages_checked == 30 + 12 + 15 + 5 + 10 + 1 + 8 + 5 + 3


def test_whole_collection_passes_every_cross_check(numbers: list[PaperNumber]) -> None:
    assert cross_check(numbers) == []


# ---------------------------------------------------------------- agreement between tables and papers


def test_promptkd_numbers_agree_with_sempts_copy(numbers: list[PaperNumber]) -> None:
    summary = run_checks(numbers)
    assert summary.agreement == []
    for table_pk, table_se, setting in (("1", "1", "base2novel"), ("2", "2", "cross-dataset"),
                                        ("9", "3", "cross-domain")):
        pk = {(n.method, n.dataset, n.metric): n.value for n in numbers
              if n.paper == "promptkd" and n.table == table_pk and n.method in SHARED}
        se = {(n.method, n.dataset, n.metric): n.value for n in numbers
              if n.paper == "sempt" and n.table == table_se and n.method in SHARED and n.setting == setting}
        common = pk.keys() & se.keys()
        assert {m for m, _, _ in common} == set(SHARED)
        assert all(pk[k] == se[k] for k in common)
        assert len(common) >= {"1": 160, "2": 55, "9": 25}[table_pk]
    assert summary.agreements_checked >= 250


def test_relabelled_promptkd_blocks_match_promptkd_table3(numbers: list[PaperNumber]) -> None:
    for method in ("CLIP", "PromptSRC", "PromptKD"):
        for metric in ("base", "novel", "hm"):
            assert _get(numbers, "promptkd", "1", method, "oxford_flowers", metric) == _get(
                numbers, "promptkd", "3", method, "oxford_flowers", metric
            )


def test_ablation_default_rows_equal_the_headline_result(numbers: list[PaperNumber]) -> None:
    defaults = {"4a": "T_lbl for seen, T_enh for unseen categories", "4b": "two-step prompting",
                "4c": "alpha=0.2", "4d": "beta=0.6", "4e": "K=2"}
    for metric in ("base", "novel", "hm"):
        headline = _get(numbers, "sempt", "1", "PromptKD w/ SemPT", AVERAGE, metric)
        for table, variant in defaults.items():
            assert _get(numbers, "sempt", table, f"PromptKD w/ SemPT ({variant})", AVERAGE, metric) == headline


def test_imagenet_source_accuracy_same_in_sempt_tables_2_and_3(numbers: list[PaperNumber]) -> None:
    t2 = {n.method: n.value for n in numbers if (n.paper, n.table, n.dataset) == ("sempt", "2", "imagenet")}
    t3 = {n.method: n.value for n in numbers if (n.paper, n.table, n.dataset) == ("sempt", "3", "imagenet")}
    differing = {m for m in t2.keys() & t3.keys() if t2[m] != t3[m]}
    assert differing == {"ProText"}  # 69.80 vs 70.22, printed so; README "Observations"
    assert len(t2.keys() & t3.keys()) == 14


# ---------------------------------------------------------------- numbers quoted elsewhere


@pytest.mark.parametrize(
    ("method", "base", "novel", "hm"),
    [("CLIP", 69.34, 74.22, 71.70), ("CoOp", 82.69, 63.22, 71.66), ("CoCoOp", 80.47, 71.69, 75.83),
     ("MaPLe", 82.28, 75.14, 78.55), ("PromptSRC", 84.26, 76.10, 79.97)],
)
def test_promptsrc_readme_averages_from_the_datasets_spec(
    numbers: list[PaperNumber], method: str, base: float, novel: float, hm: float
) -> None:
    """spec/datasets.md §7 quotes these Average rows and their HM from the PromptSRC README."""
    papers = ("promptkd",) if method == "CLIP" else ("promptkd", "sempt")
    for paper in papers:
        got = [_get(numbers, paper, "1", method, AVERAGE, m) for m in ("base", "novel", "hm")]
        assert got == [base, novel, hm], (paper, method)
    assert round(harmonic_mean(base, novel), 2) == hm


def test_numbers_quoted_in_the_papers_text(numbers: list[PaperNumber]) -> None:
    """The prose of SemPT §4.4–4.5 and PromptKD §4.3 quote table cells: an independent second reading."""
    def se(table: str, method: str, dataset: str, metric: str = "accuracy") -> float:
        return _get(numbers, "sempt", table, method, dataset, metric)

    assert se("1", "PromptKD w/ SemPT", AVERAGE, "hm") == 84.04
    assert round(se("1", "PromptKD w/ SemPT", AVERAGE, "hm") - se("1", "PromptKD", AVERAGE, "hm"), 2) == 0.31
    assert (se("2", "PromptKD w/ SemPT", AVERAGE), se("2", "PromptKD", AVERAGE)) == (72.11, 71.33)
    assert (se("2", "PromptKD w/ SemPT", "stanford_cars"), se("2", "PromptKD", "stanford_cars")) == (75.24, 73.93)
    assert (se("2", "PromptKD w/ SemPT", "dtd"), se("2", "PromptKD", "dtd")) == (57.03, 55.08)
    assert (se("3", "PromptKD w/ SemPT", AVERAGE), se("3", "PromptKD", AVERAGE)) == (72.05, 71.47)
    assert (se("3", "PromptKD w/ SemPT", "imagenet_sketch"), se("3", "PromptKD", "imagenet_sketch")) == (59.48, 58.72)
    assert (se("3", "PromptKD w/ SemPT", "imagenet_a"), se("3", "PromptKD", "imagenet_a")) == (70.83, 70.36)
    assert (se("3", "MMRL w/ SemPT", AVERAGE), se("3", "MMRL", AVERAGE)) == (61.23, 60.59)
    quoted_hm = {("4a", "T_enh for all categories"): 83.91, ("4b", "category names only"): 83.83,
                 ("4b", "one-step prompting"): 83.75, ("4c", "alpha=0.4"): 83.63, ("4c", "alpha=0.6"): 83.64,
                 ("4c", "alpha=0.8"): 83.74, ("4d", "beta=0.2"): 83.83, ("4d", "beta=0.4"): 83.75,
                 ("4d", "beta=0.8"): 83.75, ("4e", "K=1"): 83.76, ("4e", "K=3"): 83.66}
    for (table, variant), hm in quoted_hm.items():
        assert se(table, f"PromptKD w/ SemPT ({variant})", AVERAGE, "hm") == hm
    assert se("4a", "PromptKD w/ SemPT (T_enh for all categories)", AVERAGE, "base") == 86.78
    # PromptKD §4.3: "average +5.52% over previous methods" = PromptKD − PromptSRC Avg. in its Table 2.
    pk = _get(numbers, "promptkd", "2", "PromptKD", AVERAGE, "accuracy")
    assert round(pk - _get(numbers, "promptkd", "2", "PromptSRC", AVERAGE, "accuracy"), 2) == 5.52


def test_dpt_numbers_quoted_in_its_text_and_ablation_tables(numbers: list[PaperNumber]) -> None:
    """DPT §IV-B/§IV-D quote differences of Table 1-2 cells, and Tables IV-VI repeat Table 1's averages
    (α = 0.3, length 10, VCTX = 10 are the defaults): an independent second reading."""
    def dpt(table: str, method: str, dataset: str = AVERAGE) -> float:
        return _get(numbers, "dpt", table, method, dataset, "accuracy")

    # §IV-D (ViT-B/16): "outperforms Zero-shot CLIP and CoOp by 18.15% and 3.45%"
    assert (round(dpt("2", "DPT") - dpt("2", "CLIP"), 2), round(dpt("2", "DPT") - dpt("2", "CoOp"), 2)) == (18.15, 3.45)
    assert round(dpt("1", "VPT") - dpt("1", "CoOp"), 2) == 1.02  # "VPT can get 1% performance gains"
    assert round(dpt("1", "DPT") - dpt("1", "VLP"), 2) == 1.05  # "DPT gets 1% performance gains than VLP"
    assert (dpt("1", "DPT"), dpt("1", "VLP"), dpt("1", "VPT")) == (79.47, 78.42, 76.89)  # Tables IV, V, VI
    assert (dpt("3", "DPT"), dpt("3", "CoOp"), dpt("3", "VPT")) == (46.85, 45.21, 42.29)  # OOD Average


def test_omitted_numbers_stay_out(numbers: list[PaperNumber]) -> None:
    """README O3, O5, O6: printed values that fail a check and whose culprit is unclear are left out."""
    omitted = [
        ("sempt", "1", "MetaPrompt", AVERAGE, "base"), ("sempt", "1", "MetaPrompt", AVERAGE, "hm"),
        ("sempt", "1", "MMA", "ucf101", "novel"), ("sempt", "2", "CoPrompt", AVERAGE, "accuracy"),
        ("sempt", "2", "ProText", AVERAGE, "accuracy"),
    ]
    for key in omitted:
        assert lookup(*key, numbers=numbers) is None, key
    assert not any(n.dataset == "caltech101" for n in numbers if (n.paper, n.table) == ("promptkd", "1"))


FLAGGED = {  # README F1: (paper, method, dataset) -> (printed HM, HM of the printed base and novel)
    ("sempt", "MetaPrompt", "stanford_cars"): (75.48, 75.67), ("sempt", "KIM", "fgvc_aircraft"): (30.1, 40.09),
    ("sempt", "PromptKD", "stanford_cars"): (83.13, 83.08), ("sempt", "PromptKD", "ucf101"): (86.10, 85.83),
    ("sempt", "MMRL", "dtd"): (73.82, 73.92), ("sempt", "HPT", AVERAGE): (80.23, 80.42),
    ("sempt", "ArGue", "fgvc_aircraft"): (40.41, 40.01), ("sempt", "ProText", "stanford_cars"): (68.84, 69.84),
    ("promptkd", "PromptKD", "stanford_cars"): (83.13, 83.08), ("promptkd", "PromptKD", "ucf101"): (86.10, 85.83),
}


def test_inconsistent_printed_hms_keep_the_papers_number_flagged(numbers: list[PaperNumber]) -> None:
    """README F1: a reader who looks the number up in the paper finds it, with the recomputed value beside it."""
    flagged = {(n.paper, n.method, n.dataset): (n.value, n.recomputed) for n in numbers if n.flagged}
    assert flagged == FLAGGED
    for (paper, method, dataset), (printed, _) in FLAGGED.items():
        assert lookup(paper, "1", method, dataset, "hm", numbers=numbers) == printed


MMRL_DTD_BASE = ("dtd,base,85.67,\"SemPT Table 1, block 'SUN397', row 'MMRL (CVPR25)', 2nd Base/Novel/HM group, "
                 "Base [L338; C1]\",")


@pytest.mark.parametrize(
    ("find", "new", "expect"),
    [
        # a flag on a consistent HM would hide nothing but mislead the reader
        ("2nd Base/Novel/HM group, HM [L337; C1]\",\n", "2nd Base/Novel/HM group, HM [L337; C1]\",77.94\n",
         "flagged as inconsistent, but it is the HM"),
        # a wrong recomputed value
        ("[L338; C1; F1]\",73.92", "[L338; C1; F1]\",73.29", "recomputed 73.29"),
        # a flag on a base value
        (MMRL_DTD_BASE, MMRL_DTD_BASE + "85.67", "only an HM can be flagged"),
    ],
)
def test_a_wrong_flag_trips_the_checks(tmp_path: Path, find: str, new: str, expect: str) -> None:
    violations = _corrupt(tmp_path, "sempt_table1.csv", find, new)
    assert any(expect in v for v in violations), violations


# ---------------------------------------------------------------- API


def test_lookup_harmonic_mean_and_loader(numbers: list[PaperNumber], tmp_path: Path) -> None:
    assert lookup("sempt", 1, "HPT", "stanford_cars", "base", numbers=numbers) == 76.95  # C2: printed 'CoOp'
    assert lookup("promptkd", "1", "CoOp", "sun397", "base", setting="base2novel") == 80.60  # C4
    assert lookup("sempt", "1", "KIM", AVERAGE, "base", numbers=numbers) == 84.7  # C3
    assert lookup("sempt", "1", "CLIP", AVERAGE, "base", numbers=numbers) is None
    assert lookup("promptkd", "10", "PromptKD teacher", "imagenet", "hm", numbers=numbers) == 79.91
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(50.0, 50.0) == 50.0
    assert {n.paper for n in load_paper_numbers("promptkd")} == {"promptkd"}
    assert sum(len(load_paper_numbers(paper)) for paper in PAPERS) == len(numbers) == 1430
    with pytest.raises(SemptError, match="No paper-number CSVs"):
        load_paper_numbers(directory=tmp_path)
    (tmp_path / "bad.csv").write_text("paper,table,value\nsempt,1,3.0\n")
    with pytest.raises(SemptError, match="columns"):
        load_paper_numbers(directory=tmp_path)


def test_lookup_refuses_an_ambiguous_query(numbers: list[PaperNumber]) -> None:
    key = ("sempt", "2", "cross-dataset", "CoOp", "ViT-B/16", "imagenet", "accuracy")
    twin = next(n for n in numbers if n.key == key)
    pool = [twin, replace(twin, setting="cross-domain")]
    with pytest.raises(ValueError, match="ambiguous"):
        lookup("sempt", "2", "CoOp", "imagenet", "accuracy", numbers=pool)
    assert lookup("sempt", "2", "CoOp", "imagenet", "accuracy", setting="cross-domain", numbers=pool) == 71.51


# ---------------------------------------------------------------- the checks can fail


def _corrupt(tmp_path: Path, file: str, find: str, new: str) -> list[str]:
    copy = tmp_path / "paper"
    shutil.copytree(PAPER_DIR, copy)
    path = copy / file
    text = path.read_text(encoding="utf-8")
    assert text.count(find) == 1, find
    path.write_text(text.replace(find, new), encoding="utf-8")
    return cross_check(load_paper_numbers(directory=copy))


@pytest.mark.parametrize(
    ("file", "find", "new", "expect"),
    [
        # a per-dataset base value: its HM and its method's Average both disagree
        ("sempt_table1.csv", "oxford_flowers,base,99.52,", "oxford_flowers,base,99.82,", "mean of the 11"),
        # a teacher HM, in a table with no Average and no second copy
        ("promptkd_table10.csv", "dtd,hm,77.48,", "dtd,hm,77.84,", "HM of base 85.76"),
        # a cross-domain target value
        ("promptkd_table9.csv", "PromptAlign,ViT-B/16,imagenet_a,accuracy,59.37,",
         "PromptAlign,ViT-B/16,imagenet_a,accuracy,59.73,", "mean of the 4"),
        # PromptKD's own copy of a shared number
        ("promptkd_table2.csv", "MaPLe,ViT-B/16,food101,accuracy,86.20,", "MaPLe,ViT-B/16,food101,accuracy,86.02,",
         "disagrees"),
        # a block assigned to the wrong dataset (the extraction's failure mode)
        ("sempt_table3.csv", "MMA,ViT-B/16,imagenet_r,", "MMA,ViT-B/16,imagenet_a,", "duplicate row"),
        # an ablation value
        ("sempt_table4.csv", "(K=3),ViT-B/16,average,novel,80.93,", "(K=3),ViT-B/16,average,novel,80.39,",
         "HM of base 86.59"),
        # a few-shot value (DPT's own tables)
        ("dpt_table1.csv", "DPT,ViT-B/32,fgvc_aircraft,accuracy,48.37,", "DPT,ViT-B/32,fgvc_aircraft,accuracy,48.73,",
         "mean of the 11"),
        # vocabulary
        ("sempt_table2.csv", ",CoOp,ViT-B/16,eurosat,", ",CoOp,ViT-B/16,EuroSAT,", "dataset 'EuroSAT'"),
    ],
)
def test_a_corrupted_value_trips_the_checks(tmp_path: Path, file: str, find: str, new: str, expect: str) -> None:
    violations = _corrupt(tmp_path, file, find, new)
    assert any(expect in v for v in violations), violations


def test_an_emptied_source_is_a_violation(tmp_path: Path) -> None:
    find = '"PromptKD Table 10, row \'DTD\', column \'HM\' [L523]"'
    violations = _corrupt(tmp_path, "promptkd_table10.csv", find, '" "')
    assert any("empty source" in v for v in violations), violations
