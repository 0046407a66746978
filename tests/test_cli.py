"""The `sempt` command line: help, version, settings errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sempt_cli import __version__
from sempt_cli.cli.app import COMMANDS, app

runner = CliRunner()


def _sempt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from sempt_cli.cli.app import main; main()", *args],
        capture_output=True, text=True, env=env, check=False,
    )


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sempt {__version__}"


def test_help_lists_only_commands_that_exist() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    registered = {c.name for c in COMMANDS if not c.hidden}
    for name in registered:
        assert name in result.output
    assert "reproduce-job" not in result.output  # hidden
    for name in ("gen-attributes", "distill", "ablate"):
        if name not in registered:
            assert name not in result.output


def test_help_summaries_are_the_commands_own_help() -> None:
    """Each summary read from the source without importing it is the built command's own first paragraph."""
    for lazy in COMMANDS:
        command = lazy.load()
        assert command.name == lazy.name and command.hidden == lazy.hidden
        first = " ".join((command.help or "").split("\n\n")[0].split())
        assert lazy.summary() == first, lazy.name


def test_top_level_help_and_version_do_not_load_torch() -> None:
    """Building a command imports every method plug-in (its flags come from them): the root help must not."""
    code = ("import sys; from sempt_cli.cli.app import app\n"
            "for args in (['--help'], ['--version']):\n"
            "    try: app(args)\n"
            "    except SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Commands" in out and out.strip().endswith("False")


def test_a_lazy_command_runs_and_reports_errors_in_one_line() -> None:
    result = runner.invoke(app, ["train-teacher", "--method", "nope"])
    assert result.exit_code != 0
    assert "Unknown method 'nope'" in str(result.exception or result.output)


def test_config_show_reports_sources() -> None:
    result = runner.invoke(app, ["config", "show", "--json", "--alpha", "0.4", "--no-sempt"],
                           env={"SEMPT_DATA__SEED": "3"})
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["sempt.alpha"] == {"value": 0.4, "source": "flag --alpha"}
    assert payload["sempt.enabled"] == {"value": False, "source": "flag --no-sempt"}
    assert payload["data.seed"] == {"value": 3, "source": "environment SEMPT_DATA__SEED"}
    assert payload["sempt.beta"]["source"] == "default"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["config", "show", "--alpha", "3"], "Invalid setting sempt.alpha = '3' (from flag --alpha)"),
        (["config", "show", "--top-k", "6"], "top_k (K=6) must be smaller than num_descriptions (S=6)"),
        (["config", "show", "--dataset", "mnist"], "unknown dataset"),
        (["config", "show", "--shots", "3"], "pass --allow-any-shots"),
    ],
)
def test_bad_settings_give_one_sentence_not_a_traceback(args: list[str], expected: str) -> None:
    result = _sempt(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    flat = " ".join(result.stderr.split())
    assert flat.startswith("Error: ") and expected in flat


def _main_stderr(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the console entry point in-process; its error output with whitespace collapsed (rich wraps lines)."""
    from sempt_cli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["sempt", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"[bogus]\nx = 1\n", "has an unknown section [bogus]; known sections are paths,"),
        (b'[paths]\ndata_root = "caf\xe9"\n', "is not UTF-8 text"),
        (None, "is a folder, not a TOML file"),
    ],
)
def test_config_file_errors_are_one_sentence_naming_the_file(
    content: bytes | None, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "sempt.toml"
    if content is None:
        config.mkdir()
    else:
        config.write_bytes(content)
    err = _main_stderr(["config", "show", "--config", str(config)], capsys, monkeypatch)
    assert err.startswith(f"Error: The config file {config} ") and expected in err


def test_paths_with_brackets_keep_them_in_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "runs[best]" / "seed[1]"
    run.mkdir(parents=True)
    err = _main_stderr(["eval", str(run / "model.safetensors")], capsys, monkeypatch)
    assert f"{run / 'model.json'} does not exist" in err
