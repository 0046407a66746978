"""`sempt reproduce`: targets as data, the plan and its missing inputs, the launchers, and (slow) a paper table on
the demo world, killed and resumed, and again through submitit's local executor, to the same records."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from sempt_cli.errors import SettingsError
from sempt_cli.pipeline.launchers import LaunchOptions, job_argv, launch
from sempt_cli.pipeline.reproduce import TARGETS, Job, JobStatus, Plan, StateBook, get_target, ordered_waves
from sempt_cli.report.records import Group, Stat
from sempt_cli.report.tables import Comparison, format_value, spread_warnings

REPO = Path(__file__).resolve().parents[2]
QUIET = Console(quiet=True)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMPT_", "OPENAI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "200"
    return {**env, **extra}


def _sempt(*args: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sempt_cli", *args], capture_output=True, text=True, env=env,
                          check=False, **kwargs)


# ---------------------------------------------------------------------------------------------------- targets


def test_targets_are_data_with_their_size_in_runs() -> None:
    table1 = get_target("sempt-table1")
    assert table1.size == 11 * 3 * 3  # a teacher and two students per dataset and seed
    assert get_target("sempt-fig4").size == 11 * 3 * 5 * 2  # MMRL with and without SemPT on 5 shot counts
    assert get_target("sempt-table2").size == 3 * 3  # ImageNet only, scored on the 10 targets
    assert get_target("sempt-table4a").size == 11 * 3 * 2  # one student per dataset and seed, scored 3 ways
    assert get_target("sempt-table4c").size == 11 * 3 * (1 + 4)
    assert {"sempt-table1", "sempt-table2", "sempt-table3", "sempt-table4a", "sempt-table4e", "sempt-fig4",
            "promptkd-table1"} <= set(TARGETS)
    with pytest.raises(SettingsError, match="reproduce --list"):
        get_target("sempt-table9")


def test_list_shows_every_target() -> None:
    result = _sempt("reproduce", "--list", env=_env())
    assert result.returncode == 0, result.stderr
    for name, target in TARGETS.items():
        assert re.search(rf"{re.escape(name)}\s.*\s{target.size}\s", result.stdout), name


def test_dry_run_lists_every_missing_input_and_starts_nothing(tmp_path: Path) -> None:
    """No datasets, no attribute files, no LLM key, no cached CLIP weights, offline: one message names them all."""
    (tmp_path / "data").mkdir()
    (tmp_path / "attributes").mkdir()
    env = _env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    result = _sempt("reproduce", "sempt-table1", "--dry-run", "--data-root", str(tmp_path / "data"),
                    "--attributes-dir", str(tmp_path / "attributes"), "--output-dir", str(tmp_path / "runs"),
                    "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"), env=env,
                    cwd=tmp_path)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert text.count("PromptSRC teacher ·") == 33 and text.count("promptkd w/ SemPT ·") == 33  # the full plan
    assert "Missing (24)" in result.stdout  # 11 datasets + 11 attribute files + 2 backbones' weights
    for key in get_target("sempt-table1").datasets:
        assert f"Dataset {key}: folder" in text, key
        assert f"attribute descriptions for {key}" in text, key
    assert "ViT-L-14-quickgelu/openai" in text and "ViT-B-16-quickgelu/openai" in text
    assert "cannot start: 24 input(s) are missing" in result.stderr  # the error: one message, all of them
    assert "Traceback" not in text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results" / "reproduce").exists()


# ---------------------------------------------------------------------------------------------------- launchers


def _fake_job(job_id: str, book: StateBook, ok: bool, needs: list[str] | None = None) -> Job:
    marker = book.done_path(job_id)
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('{{}}')" if ok else \
        "import sys; print('boom: something broke'); sys.exit(3)"
    return Job(job_id, "baseline", job_id, "demo", 1, "mmrl", {}, needs=needs or [], argv=[sys.executable, "-c", code])


def _fake_plan(tmp_path: Path, jobs: list[Job]) -> Plan:
    states = {j.id: JobStatus("todo") for j in jobs}
    return Plan(get_target("sempt-table1"), jobs, [], [], StateBook(tmp_path / "state"), states, [1], ["demo"],
                ["promptkd"])


def test_a_failed_job_is_reported_with_its_log_and_independent_jobs_go_on(tmp_path: Path) -> None:
    book = StateBook(tmp_path / "state")
    (book.root / "jobs").mkdir(parents=True)
    bad = _fake_job("bad", book, ok=False)
    jobs = [bad, _fake_job("good", book, ok=True), _fake_job("after-bad", book, ok=True, needs=["bad"]),
            _fake_job("after-good", book, ok=True, needs=["good"])]
    assert [[j.id for j in wave] for wave in ordered_waves(jobs)] == [["bad", "good"], ["after-bad", "after-good"]]
    report = launch(_fake_plan(tmp_path, jobs), LaunchOptions(), QUIET)
    assert report.done == ["good", "after-good"]
    assert report.failed == {"bad": str(book.log_path(bad))}
    assert "boom: something broke" in book.log_path(bad).read_text()
    assert report.blocked == {"after-bad": "bad"}
    state = json.loads(book.path.read_text())["jobs"]
    assert state["bad"]["status"] == "failed" and state["bad"]["returncode"] == 3 and state["good"]["status"] == "done"

    stopped = launch(_fake_plan(tmp_path, [*jobs[:1], _fake_job("later", book, ok=True)]),
                     LaunchOptions(keep_going=False), QUIET)
    assert stopped.failed.keys() == {"bad"} and "later" in stopped.blocked


def test_a_gpu_pool_gives_each_job_its_own_gpu(tmp_path: Path) -> None:
    book = StateBook(tmp_path / "state")
    jobs = []
    for i in range(4):
        marker = book.done_path(f"job{i}")
        code = (f"import json, os, pathlib, time; time.sleep(0.3); pathlib.Path({str(marker)!r})"
                ".write_text(json.dumps({'gpu': os.environ['CUDA_VISIBLE_DEVICES']}))")
        jobs.append(Job(f"job{i}", "baseline", f"job{i}", "demo", 1, "mmrl", {}, argv=[sys.executable, "-c", code]))
    (book.root / "jobs").mkdir(parents=True)
    report = launch(_fake_plan(tmp_path, jobs), LaunchOptions(gpus=["0", "1"]), QUIET)
    assert sorted(report.done) == [f"job{i}" for i in range(4)]
    gpus = sorted(json.loads(book.done_path(f"job{i}").read_text())["gpu"] for i in range(4))
    assert gpus == ["0", "0", "1", "1"]
    torchrun = LaunchOptions("torchrun", gpus=["0", "1", "2", "3"], gpus_per_job=2)
    assert torchrun.slots == ["0,1", "2,3"]
    training = Job("t", "teacher", "t", "demo", 1, "promptsrc", {})
    assert job_argv(training, Path("spec.json"), torchrun)[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sempt_cli", "reproduce-job",
        "spec.json"]
    assert job_argv(training, Path("spec.json"), LaunchOptions())[1:] == ["-m", "sempt_cli", "reproduce-job",
                                                                           "spec.json"]
    with pytest.raises(SettingsError, match="torchrun"):
        LaunchOptions("local", gpus_per_job=2)
    assert LaunchOptions(slurm_time="1-02:30:00").timeout_min() == 1440 + 150
    assert LaunchOptions(slurm_time="90").timeout_min() == 90


# ---------------------------------------------------------------------------------------------------- tables


def _group(variant: str, values: dict[str, list[float]], seeds: tuple[int, ...] = (1, 2, 3)) -> Group:
    cells = {"oxford_flowers": {k: Stat(sum(v) / len(v), (max(v) - min(v)) / 2, tuple(v), seeds)
                                for k, v in values.items()}}
    return Group("student", "promptkd", "ViT-B-16-quickgelu", "openai", "base2novel", 16, True, "", "ViT-B/16",
                 variant, cells)


def test_seed_spread_larger_than_a_gap_is_warned_and_cells_show_n() -> None:
    plain = _group("", {"hm": [80.0, 81.0, 82.0]})
    close = _group("w/ SemPT", {"hm": [80.5, 81.5, 82.5]})  # +0.5 against a spread of 1
    far = _group("w/ SemPT", {"hm": [84.0, 84.5, 85.0]})  # +3.5
    warned = spread_warnings([Comparison(plain, [], []), Comparison(close, [], [])])
    assert len(warned) == 1 and "Flowers102" in warned[0] and "+0.50" in warned[0] and "n = 3/3" in warned[0]
    assert spread_warnings([Comparison(plain, [], []), Comparison(far, [], [])]) == []
    assert format_value(plain.cells["oxford_flowers"]["hm"]) == "81.00 ± 1.00 (n=3)"


# ------------------------------------------------------------------------------------------- the demo world


def _records(results: Path) -> dict[tuple[str, str, int], dict]:
    """Every evaluation record under a results folder, by (method, variant, seed): metrics and counts."""
    out = {}
    for path in (results / "base2novel" / "demo").glob("*.json"):
        record = json.loads(path.read_text())
        model = record["model"]
        out[(model["method"], model["variant"], model["seed"])] = {
            d: (r["metrics"], r["counts"]) for d, r in record["results"].items()}
    return out


def _table(stdout: str) -> str:
    """The final table: what follows the plan's last line."""
    return stdout.split("State, specs and logs:", 1)[1].split("\n", 1)[1]


@pytest.mark.slow
def test_sempt_table1_on_the_demo_world_resumes_after_kill_and_slurm_gives_identical_records(
    demo_cache: Path, tmp_path: Path,
) -> None:
    common = ["reproduce", "sempt-table1", "--datasets", "demo", "--seeds", "1,2", "--epochs", "1", "--shots", "2",
              "--workers", "0", "--cache-dir", str(demo_cache)]
    env = _env()
    local = [*common, "--output-dir", str(tmp_path / "a" / "runs"), "--results-dir", str(tmp_path / "a" / "results")]
    jobs = tmp_path / "a" / "results" / "reproduce" / "sempt-table1" / "jobs"

    process = subprocess.Popen([sys.executable, "-m", "sempt_cli", *local], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path)
    deadline = time.time() + 900
    while time.time() < deadline and not list(jobs.glob("*.done.json")):
        time.sleep(1)
    time.sleep(8)  # into the next job
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(list(jobs.glob("*.done.json")))
    assert 1 <= done_before < 6

    status = _sempt(*local, "--status", env=env, cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count(" done ") == done_before

    resumed = _sempt(*local, env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(list(jobs.glob("*.done.json"))) == 6
    assert "Already trained" in resumed.stderr or "Resuming" in resumed.stderr or done_before == 1

    slurm = [*common, "--output-dir", str(tmp_path / "b" / "runs"), "--results-dir", str(tmp_path / "b" / "results"),
             "--launcher", "slurm", "--slurm-cluster", "local"]
    submitted = _sempt(*slurm, env=env, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert "submitted as job" in submitted.stderr
    assert list((tmp_path / "b" / "results" / "reproduce" / "sempt-table1" / "slurm").glob("*/*_log.err"))

    a, b = _records(tmp_path / "a" / "results"), _records(tmp_path / "b" / "results")
    assert len(a) == 4 and a == b  # PromptKD with and without SemPT × 2 seeds, identical scores
    assert _table(resumed.stdout) == _table(submitted.stdout)
    assert "± " in _table(resumed.stdout) and "(n=2)" in _table(resumed.stdout)

    again = _sempt(*slurm, "--status", env=env, cwd=tmp_path)  # re-running would submit nothing
    assert again.stdout.count(" done ") == 6 and "0 to run" in again.stdout
    runs = list((tmp_path / "a" / "runs").rglob("metrics.jsonl"))
    assert len(runs) == 6 and all((r.parent / "tensorboard").is_dir() for r in runs)


def test_with_an_llm_key_missing_attribute_files_become_gen_attributes_jobs(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sempt_cli.pipeline.reproduce import plan_target

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = {"paths.data_root": str(tmp_path / "data"), "paths.attributes_dir": str(tmp_path / "attributes"),
                 "paths.output_dir": str(tmp_path / "runs"), "eval.results_dir": str(tmp_path / "results")}
    plan = plan_target("sempt-table1", overrides, datasets=["oxford_flowers"], seeds=[1])
    kinds = [job.kind for job in plan.jobs]
    assert kinds == ["attributes", "teacher", "student", "student"]
    attributes, _, plain, sempt = plan.jobs
    assert attributes.argv is not None and attributes.argv[-3:] == ["gen-attributes", "--dataset", "oxford_flowers"]
    assert attributes.env["SEMPT_PATHS__ATTRIBUTES_DIR"] == str(tmp_path / "attributes")
    assert attributes.id in sempt.needs and attributes.id not in plain.needs
    assert not any("attribute" in m for m in plan.missing)
    assert any("Dataset oxford_flowers" in m for m in plan.missing)
    with pytest.raises(SettingsError, match="--seeds"):
        plan_target("sempt-table1", {**overrides, "data.seed": 3})
