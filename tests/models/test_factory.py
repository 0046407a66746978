"""Loading CLIPs: demo configs, checkpoints in every accepted layout, and one-sentence refusals."""

from __future__ import annotations

import time
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip import pretrained as oc_pretrained
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from sempt_cli.errors import SemptError, WeightsError
from sempt_cli.models import (
    DEMO_STUDENT,
    DEMO_TEACHER,
    LoadedClip,
    load_clip,
    read_state_dict,
    register_model_config,
    register_pretrained_file,
    resolve_pretrained,
)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and fail) any download attempt instead of touching the network."""
    calls: list[str] = []

    def refuse(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append(f"{repo_id}/{filename}")
        raise AssertionError("the loader tried the network")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse)
    return calls


def _state(loaded: LoadedClip) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


# ------------------------------------------------------------------------------------------- demo configs


def test_demo_configs_are_registered_on_import() -> None:
    assert {DEMO_TEACHER, DEMO_STUDENT} <= set(open_clip.list_models())
    assert isinstance(open_clip.get_tokenizer(DEMO_TEACHER), open_clip.SimpleTokenizer)


def test_demo_clips_are_tiny_quickgelu_vits_with_different_joint_widths(
    teacher: LoadedClip, student: LoadedClip
) -> None:
    for loaded in (teacher, student):
        visual = loaded.model.visual
        assert isinstance(visual, open_clip.transformer.VisionTransformer)
        assert visual.image_size == (48, 48) and loaded.preprocess.image_size == 48
        assert any(isinstance(m, QuickGELU) for m in loaded.model.modules())
        assert loaded.model.context_length == 77
        non_embedding = sum(p.numel() for n, p in loaded.model.named_parameters() if n != "token_embedding.weight")
        assert non_embedding < 4_000_000
    assert teacher.model.text_projection.shape[1] == 128 and student.model.text_projection.shape[1] == 96
    assert teacher.model.visual.conv1.out_channels > student.model.visual.conv1.out_channels


def test_register_model_config_refuses_silent_redefinition() -> None:
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
    }
    register_model_config("sempt-test-registry", cfg)
    register_model_config("sempt-test-registry", cfg)  # identical: fine
    with pytest.raises(ValueError, match="already registered"):
        register_model_config("sempt-test-registry", {**cfg, "embed_dim": 8})
    with pytest.raises(ValueError, match="lacks"):
        register_model_config("sempt-test-broken", {"embed_dim": 8})
    assert load_clip("sempt-test-registry", None).model.text_projection.shape == (16, 16)


def test_loaded_models_are_frozen_and_unpack_as_a_triple(student: LoadedClip) -> None:
    model, tokenizer, preprocess = student
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer(["a cat"]).shape == (1, 77)
    assert preprocess.mean == open_clip.OPENAI_DATASET_MEAN and preprocess.interpolation == "bicubic"


# ------------------------------------------------------------------------------------------- refusals


def test_plain_openai_name_is_refused_before_any_download(no_network: list[str]) -> None:
    with pytest.raises(SemptError, match="QuickGELU") as info:
        load_clip("ViT-B-16", "openai")
    assert "ViT-B-16-quickgelu" in str(info.value) and not no_network


def test_offline_missing_weights_fail_fast_with_what_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        load_clip("ViT-B-16-quickgelu", "openai", cache_dir=tmp_path)
    assert time.monotonic() - start < 5
    text = str(info.value)
    for needed in ("ViT-B-16-quickgelu/openai", "timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors"):
        assert needed in text
    assert "--checkpoint" in info.value.hint and str(tmp_path) in info.value.hint
    assert "Traceback" not in text and not no_network


def test_offline_argument_needs_no_environment(tmp_path: Path, no_network: list[str]) -> None:
    with pytest.raises(WeightsError, match="not in the local cache"):
        resolve_pretrained("ViT-L-14-quickgelu", "openai", cache_dir=tmp_path, offline=True)
    assert not no_network


def test_failed_download_is_one_sentence_and_one_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[str] = []

    def unreachable(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append(filename)
        raise LocalEntryNotFoundError("Name or service not known")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", unreachable)
    monkeypatch.setattr("sempt_cli.models.factory._hub_reachable", lambda: True)
    with pytest.raises(WeightsError, match="Could not download the weights for ViT-B-16-quickgelu/openai"):
        resolve_pretrained("ViT-B-16-quickgelu", "openai", cache_dir=tmp_path, offline=False)
    assert calls == ["open_clip_model.safetensors"]  # no second wait for the .bin name


def test_unreachable_hub_fails_in_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    """This sandbox has no network: the connection probe answers before the hub client's minute of retries."""
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sempt_cli.models.factory._hub_reachable", lambda: False)
    with pytest.raises(WeightsError, match="cannot be reached") as info:
        resolve_pretrained("ViT-B-16-quickgelu", "openai", cache_dir=tmp_path, offline=False)
    assert "HF_HUB_OFFLINE=1" in (info.value.hint or "") and not no_network


def test_unknown_names_and_tags() -> None:
    with pytest.raises(SemptError, match="Unknown CLIP backbone") as info:
        load_clip("ViT-B-61-quickgelu", None)
    assert "ViT-B-16-quickgelu" in (info.value.hint or "")
    with pytest.raises(WeightsError, match="Unknown pretrained tag") as info:
        load_clip("ViT-B-16-quickgelu", "laion9000")
    assert "openai" in (info.value.hint or "")


# ------------------------------------------------------------------------------------ weights from disk


def test_weights_come_from_the_hf_cache_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, student: LoadedClip, no_network: list[str]
) -> None:
    entry = {"hf_hub": "sempt/fake-student/", "quick_gelu": True}
    monkeypatch.setitem(oc_pretrained._PRETRAINED, DEMO_STUDENT, {"fake": entry})
    repo = tmp_path / "models--sempt--fake-student"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(_state(student), str(snapshot / "open_clip_model.safetensors"))
    loaded = load_clip(DEMO_STUDENT, "fake", cache_dir=tmp_path)
    assert loaded.weights_file == snapshot / "open_clip_model.safetensors"
    got = loaded.model.state_dict()
    assert all(torch.equal(got[key], value) for key, value in _state(student).items())
    assert not no_network


def test_checkpoint_layouts(tmp_path: Path, student: LoadedClip) -> None:
    state = _state(student)
    save_file(state, str(tmp_path / "plain.safetensors"))
    openai_like = {**{k: v.half() for k, v in state.items()}, "input_resolution": torch.tensor(48)}
    torch.save(openai_like, tmp_path / "openai.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "wrapped.pth")
    for name, atol in (("plain.safetensors", 0.0), ("openai.pt", 2e-3), ("wrapped.pth", 0.0)):
        loaded = load_clip(DEMO_STUDENT, None, checkpoint=tmp_path / name)
        got = loaded.model.state_dict()
        assert got["visual.proj"].dtype == torch.float32  # fp16 files load into the fp32 model
        worst = max((got[key] - value).abs().max().item() for key, value in state.items())
        assert set(got) == set(state) and worst <= atol


def test_clip_layout_checkpoint_into_custom_text_clip(tmp_path: Path, student: LoadedClip) -> None:
    save_file(_state(student), str(tmp_path / "clip.safetensors"))
    model = open_clip.create_model(DEMO_STUDENT, force_custom_text=True)
    from sempt_cli.models.factory import load_weights

    load_weights(model, read_state_dict(tmp_path / "clip.safetensors"), source="clip.safetensors")
    torch.testing.assert_close(model.text.token_embedding.weight, student.model.token_embedding.weight)


def test_checkpoint_of_another_architecture_is_named(tmp_path: Path, teacher: LoadedClip) -> None:
    save_file(_state(teacher), str(tmp_path / "teacher.safetensors"))
    with pytest.raises(WeightsError, match="do not fit") as info:
        load_clip(DEMO_STUDENT, None, checkpoint=tmp_path / "teacher.safetensors")
    assert "unexpected" in str(info.value) and "another shape" in str(info.value)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "nope.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "ViT-B-16.pt"))
    with pytest.raises(WeightsError, match="TorchScript") as info:
        read_state_dict(tmp_path / "ViT-B-16.pt")
    assert "convert_torchscript" in (info.value.hint or "")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("layout", ["torch.save", "bare pickle"])
def test_a_pickle_passed_as_weights_is_refused_in_our_words(tmp_path: Path, layout: str) -> None:
    import pickle

    marker = tmp_path / "ran"
    payload = {"state_dict": {"w": torch.zeros(2)}, "evil": _Payload(str(marker))}
    path = tmp_path / "weights.pt"
    if layout == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(WeightsError, match=r"weights\.pt holds pickled .*did not unpickle it") as info:
        read_state_dict(path)
    text = f"{info.value.message} {info.value.hint}"
    assert "weights_only" not in text and "Re-running" not in text and "\x1b" not in text
    assert not marker.exists()


class _Payload:
    """Would leave a file behind if it were ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "ran"))


def test_registered_local_pretrained_file(tmp_path: Path, student: LoadedClip) -> None:
    save_file(_state(student), str(tmp_path / "student.safetensors"))
    register_pretrained_file(DEMO_STUDENT, "demo-test", tmp_path / "student.safetensors")
    try:
        loaded = load_clip(DEMO_STUDENT, "demo-test")
        assert loaded.weights_file == tmp_path / "student.safetensors"
        torch.testing.assert_close(loaded.model.visual.proj, student.model.visual.proj)
    finally:
        oc_pretrained._PRETRAINED[DEMO_STUDENT].pop("demo_test")
