"""Settings: precedence, provenance and one-sentence refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from sempt_cli.errors import SettingsError
from sempt_cli.settings import Settings, fields, load_settings


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_follow_the_sempt_spec() -> None:
    s = load_settings(env={}).settings
    assert (s.sempt.alpha, s.sempt.beta, s.sempt.top_k, s.sempt.num_descriptions, s.sempt.tau_sa) == (
        0.2, 0.6, 2, 6, 0.01,
    )
    assert s.sempt.num_attributes == 16
    assert s.sempt.fusion == "mlp" and s.sempt.attr_encoder == "teacher-prompted"


def test_precedence_flag_over_env_over_file_over_preset_over_default(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.toml", "[sempt]\nalpha = 0.3\nbeta = 0.3\ntop_k = 3\n[data]\nseed = 7\n")
    env = {"SEMPT_SEMPT__ALPHA": "0.4", "SEMPT_SEMPT__BETA": "0.5"}
    preset = {"sempt.alpha": 0.9, "sempt.tau_sa": 0.05, "data.seed": 9}
    resolved = load_settings({"sempt.alpha": "0.8"}, config_file=config, env=env, preset=preset,
                             preset_name="preset promptsrc")
    s, src = resolved.settings, resolved.sources
    assert s.sempt.alpha == 0.8 and src["sempt.alpha"] == "flag --alpha"
    assert s.sempt.beta == 0.5 and src["sempt.beta"] == "environment SEMPT_SEMPT__BETA"
    assert s.sempt.top_k == 3 and src["sempt.top_k"] == f"config file {config}"
    assert s.data.seed == 7 and src["data.seed"] == f"config file {config}"
    assert s.sempt.tau_sa == 0.05 and src["sempt.tau_sa"] == "preset promptsrc"
    assert src["train.lr"] == "default"


def test_config_file_found_through_environment(tmp_path: Path) -> None:
    config = _write(tmp_path / "x.toml", "[data]\ndataset = 'OxfordFlowers'\n")
    resolved = load_settings(env={"SEMPT_CONFIG": str(config)})
    assert resolved.settings.data.dataset == "oxford_flowers"


def test_pydantic_settings_reads_the_same_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMPT_SEMPT__ALPHA", "0.35")
    monkeypatch.setenv("SEMPT_DATA__SHOTS", "4")
    direct = Settings()
    ours = load_settings().settings
    assert direct.sempt.alpha == ours.sempt.alpha == 0.35
    assert direct.data.shots == ours.data.shots == 4


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"sempt.alpha": 1.5}, "sempt.alpha = 1.5 (from flag --alpha): input should be less than or equal to 1"),
        ({"sempt.beta": -0.1}, "sempt.beta = -0.1"),
        ({"sempt.top_k": 6}, "top_k (K=6) must be smaller than num_descriptions (S=6)"),
        ({"sempt.top_k": 3, "sempt.num_descriptions": 2}, "(K=3) must be smaller than num_descriptions (S=2)"),
        ({"data.dataset": "mnist"}, "unknown dataset; choose one of demo, imagenet"),
        ({"data.shots": 5}, "shots=5 is not one of 1, 2, 4, 8, 16"),
        ({"data.setting": "zero-shot"}, "input should be 'base2novel', 'cross-dataset'"),
        ({"model.device": "gpu"}, "must be auto, cpu, cuda or cuda:N"),
        ({"data.batch_size": 0}, "data.batch_size = 0"),
        ({"nosuch.key": 1}, "nosuch.key is not a setting"),
    ],
)
def test_bad_values_are_refused_in_one_sentence(overrides: dict, fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(overrides, env={})
    message = str(info.value)
    assert fragment in message
    assert message.count("\n") == 0 and message.endswith(".")


def test_any_shots_allowed_on_request() -> None:
    assert load_settings({"data.shots": 5, "data.allow_any_shots": True}, env={}).settings.data.shots == 5


def test_env_and_file_errors_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"from environment SEMPT_SEMPT__ALPHA"):
        load_settings(env={"SEMPT_SEMPT__ALPHA": "2"})
    with pytest.raises(SettingsError, match=r"names no setting"):
        load_settings(env={"SEMPT_SEMPT__ALPAH": "2"})
    bad = _write(tmp_path / "bad.toml", "[sempt]\nalpah = 0.1\n")
    with pytest.raises(SettingsError, match=r"unknown setting sempt.alpah"):
        load_settings(config_file=bad, env={})
    broken = _write(tmp_path / "broken.toml", "[sempt\n")
    with pytest.raises(SettingsError, match=r"is not valid TOML"):
        load_settings(config_file=broken, env={})
    with pytest.raises(SettingsError, match=r"does not exist"):
        load_settings(config_file=tmp_path / "missing.toml", env={})


def test_every_flag_is_unique() -> None:
    flags = [f.flag for f in fields().values() if f.flag_name]
    assert len(flags) == len(set(flags))
    assert fields()["sempt.enabled"].flag == "--sempt"
    assert fields()["llm.api_key"].flag_name is None  # secrets never travel on command lines


def test_paths_are_expanded() -> None:
    s = load_settings(env={}).settings
    assert not str(s.paths.data_root).startswith("~")
