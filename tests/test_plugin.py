"""A method from another package: the worked example of docs/writing-a-method.md, installed as a `sempt.methods`
entry point in a temporary folder (nothing under sempt_cli/ touched), is listed by `config show` and `--help`,
trains, evaluates and runs with SemPT on the demo world through the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-a-method.md"
MODULE = "sempt_text_adapter"


def example_module() -> str:
    """The complete example's code, exactly as the document shows it."""
    text = DOC.read_text(encoding="utf-8").split("## A complete example", 1)[1]
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, "docs/writing-a-method.md lost its complete example"
    return match.group(1)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the plug-in module and the installed-distribution metadata that declares its entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / f"{MODULE}.py").write_text(example_module(), encoding="utf-8")
    info = site / "sempt_text_adapter-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sempt-text-adapter\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[sempt.methods]\ntext-adapter = {MODULE}\n")
    return site


def _sempt(args: list[str], site: Path, cache: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "COLUMNS": "200",
           "SEMPT_PATHS__CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-m", "sempt_cli", *args], capture_output=True, text=True, env=env,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_plugin_is_not_part_of_sempt() -> None:
    from sempt_cli.protocol import method_names

    assert "text-adapter" not in method_names()  # only the entry point below brings it in


def test_config_and_help_list_the_plugins_settings(plugin_path: Path, tmp_path: Path) -> None:
    shown = json.loads(_sempt(["config", "show", "--json", "--ratio", "0.3"], plugin_path, tmp_path))
    assert shown["text_adapter.ratio"] == {"value": 0.3, "source": "flag --ratio"}
    assert shown["text_adapter.drift_weight"]["source"] == "default"
    help_text = _sempt(["train-teacher", "--help"], plugin_path, tmp_path)
    assert "Text-Adapter" in help_text and "--adapter-drift-weight" in help_text and "--ratio" in help_text


@pytest.mark.slow
def test_the_plugin_trains_evaluates_and_runs_with_sempt(plugin_path: Path, tmp_path: Path,
                                                         demo_cache: Path) -> None:
    common = ["--cache-dir", str(demo_cache), "--workers", "0", "--output-dir", str(tmp_path / "runs"),
              "--shots", "2"]
    _sempt(["train-teacher", "--method", "text-adapter", "--ratio", "0.5", *common], plugin_path, demo_cache)
    [run] = (tmp_path / "runs" / "teachers" / "demo").glob("text-adapter-base2novel-*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"base", "novel", "hm", "all"}
    assert metrics["settings_sources"]["train.epochs"] == "preset text-adapter/base2novel"  # its demo rule
    assert metrics["settings_sources"]["text_adapter.ratio"] == "flag --ratio"
    table = _sempt(["eval", str(run / "model.safetensors"), "--results-dir", str(tmp_path / "results"),
                    "--cache-dir", str(demo_cache), "--workers", "0"], plugin_path, demo_cache)
    assert "Text-Adapter" in table

    _sempt(["distill", "--baseline", "text-adapter", *common], plugin_path, demo_cache)
    [wrapped] = (tmp_path / "runs" / "teachers" / "demo").glob("text-adapter-sempt-base2novel-*")
    tensors = json.loads((wrapped / "model.json").read_text())["tensors"]
    assert {"adapter.weight", "sempt.fusion.fc1.weight"} <= set(tensors)
    table = _sempt(["eval", str(wrapped / "model.safetensors"), "--results-dir", str(tmp_path / "results"),
                    "--cache-dir", str(demo_cache), "--workers", "0"], plugin_path, demo_cache)
    assert "Text-Adapter w/ SemPT" in table
