"""train-teacher end to end on the demo world: exact resume of the real PromptSRC method, kill -9 via the CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sempt_cli.pipeline.runs import resolve_with_preset
from sempt_cli.pipeline.teacher import train_teacher

SMALL = {"data.dataset": "demo", "model.pretrained": "none", "data.shots": 2, "data.allow_any_shots": True,
         "data.batch_size": 8, "data.workers": 0, "train.epochs": 2, "train.checkpoint_every": 2,
         "data.eval_batch_size": 200}


def _small(cache: Path, out: Path, **extra: object) -> dict[str, object]:
    return {**SMALL, "paths.cache_dir": str(cache), "paths.output_dir": str(out), **extra}


@pytest.mark.slow
def test_promptsrc_resume_equals_uninterrupted(demo_cache: Path, tmp_path: Path) -> None:
    full = train_teacher("promptsrc", resolve_with_preset("promptsrc", _small(demo_cache, tmp_path / "a"), env={}))
    resolved = resolve_with_preset("promptsrc", _small(demo_cache, tmp_path / "b"), env={})
    partial = train_teacher("promptsrc", resolved, stop_after_steps=3)
    assert partial.metrics == {} and not partial.checkpoint.exists()
    resumed = train_teacher("promptsrc", resolved)
    a, b = load_file(full.checkpoint), load_file(resumed.checkpoint)
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert (a[key] == b[key]).all(), key
    assert resumed.metrics == full.metrics
    assert set(full.metrics) == {"base", "novel", "hm", "all"}


@pytest.mark.slow
def test_own_evaluation_says_what_on_corrupt_skip_left_out(demo_cache: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from sempt_cli.cli.render import print_run
    from sempt_cli.data import load_dataset
    from sempt_cli.data.demo import ensure_demo_world

    cache = tmp_path / "cache"
    shutil.copytree(demo_cache / "demo-world", cache / "demo-world")
    test_image = load_dataset("demo", ensure_demo_world(cache)).test[0].path
    test_image.write_bytes(b"this is not an image")
    settings = _small(cache, tmp_path / "out", **{"data.on_corrupt": "skip", "train.epochs": 1, "data.shots": 1})
    run = train_teacher("promptsrc", resolve_with_preset("promptsrc", settings, env={}),
                        console=Console(stderr=True, width=200))
    assert run.metrics["unreadable"] == 1
    print_run("promptsrc on demo", run.metrics, run.checkpoint)
    captured = capsys.readouterr()
    assert "demo: 1 unreadable test image(s) left out" in captured.err
    assert "These scores leave out 1 unreadable test image(s)" in captured.out
    again = train_teacher("promptsrc", resolve_with_preset("promptsrc", settings, env={}))  # reused: still said
    assert again.metrics["unreadable"] == 1


def test_presets_sit_below_user_values(demo_cache: Path, tmp_path: Path) -> None:
    resolved = resolve_with_preset("coop", _small(demo_cache, tmp_path, **{"prompts.text_length": 8}), env={})
    assert resolved.settings.prompts.vision_depth == 0
    assert resolved.sources["prompts.vision_depth"].startswith("preset coop")
    assert resolved.settings.prompts.text_length == 8
    assert resolved.sources["prompts.text_length"] == "flag --text-length"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sempt_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_cli_run_survives_kill_9(demo_cache: Path, tmp_path: Path) -> None:
    args = ["train-teacher", "--method", "ivlp", "--dataset", "demo", "--pretrained", "none", "--shots", "4",
            "--batch-size", "4", "--workers", "0", "--epochs", "2", "--checkpoint-every", "1",
            "--cache-dir", str(demo_cache), "--output-dir", str(tmp_path)]
    env = {**os.environ, "COLUMNS": "200"}
    first = _cli(args, env)
    deadline = time.time() + 300
    states: list[Path] = []
    while time.time() < deadline and first.poll() is None:
        states = list(tmp_path.glob("teachers/demo/*/train-state.pt"))
        if states:
            break
        time.sleep(0.2)
    assert states, "no checkpoint appeared"
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    second = _cli(args, env)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert "Resuming" in output
    assert (states[0].parent / "model.safetensors").is_file()
    assert (states[0].parent / "metrics.json").is_file()


@pytest.mark.slow
def test_embed_caches_teacher_class_vectors_for_all_classes(
    demo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from sempt_cli.methods import promptsrc
    from sempt_cli.pipeline.embed import embed_classes
    from sempt_cli.pipeline.runs import load_teacher

    resolved = resolve_with_preset("promptsrc", _small(demo_cache, tmp_path, **{"train.epochs": 1}), env={})
    run = train_teacher("promptsrc", resolved)
    first = embed_classes(run.checkpoint, resolved.settings)
    again = embed_classes(run.checkpoint, resolved.settings)
    assert not first.reused and again.reused and again.path == first.path
    assert first.vectors.shape == (40, 128) and len(first.classnames) == 40
    torch.testing.assert_close(first.vectors.norm(dim=-1), torch.ones(40))
    torch.testing.assert_close(again.vectors, first.vectors)

    def training_only(*args: object) -> None:
        raise AssertionError("loading a teacher encoded PromptSRC's 60-template training targets")

    monkeypatch.setattr(promptsrc, "template_ensemble", training_only)
    teacher = load_teacher(run.checkpoint, overrides={"paths.cache_dir": str(demo_cache)})
    with torch.no_grad():
        direct = teacher.class_embeddings(first.classnames[20:])
    torch.testing.assert_close(first.vectors[20:], direct, rtol=1e-5, atol=1e-5)
