"""Load any open_clip CLIP by name + pretrained tag, or from a local checkpoint file, offline-first.

Why not just `open_clip.create_model(name, pretrained=tag)`:

* it silently builds OpenAI weights with nn.GELU when the name lacks `-quickgelu` (spec §7.2a); we refuse;
* without a network it retries for about a minute and then raises a bare RuntimeError; we look in the
  Hugging Face cache first, never touch the network when offline (`HF_HUB_OFFLINE=1` or `offline=True`),
  and fail with one sentence that says which file to fetch and where to put it;
* weights are only ever read with safetensors or `torch.load(weights_only=True)`.

The model comes back frozen (`requires_grad=False`) and in eval mode: every method here adapts a frozen
CLIP, and a forgotten `logit_scale` with `requires_grad=True` would otherwise be trained and saved.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import logging
import os
import pickle
import re
import socket
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import urlparse

import open_clip
import torch
from open_clip import factory as oc_factory
from open_clip import pretrained as oc_pretrained
from open_clip.model import CLIP, CustomTextCLIP
from torch import Tensor, nn

from sempt_cli.errors import SemptError, WeightsError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
DEMO_TEACHER = "sempt-demo-teacher"
DEMO_STUDENT = "sempt-demo-student"

# Keys of OpenAI's TorchScript state dicts that are not parameters.
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_HF_SAFE_WEIGHTS = "open_clip_model.safetensors"
_HF_WEIGHTS = "open_clip_pytorch_model.bin"

Tokenizer = Callable[..., Tensor]


@dataclass(frozen=True)
class Preprocess:
    """What an image pipeline needs to feed this model: input size and normalisation."""

    image_size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


ClipModel: TypeAlias = "CLIP | CustomTextCLIP"
"""What `open_clip.create_model` builds (open_clip ships no type information, so mypy reads this as Any)."""


@dataclass(frozen=True)
class LoadedClip:
    """A loaded model; unpacks as `model, tokenizer, preprocess = load_clip(...)`."""

    model: ClipModel
    tokenizer: Tokenizer
    preprocess: Preprocess
    backbone: str
    pretrained: str | None
    weights_file: Path | None  # where the weights came from; None means random initialisation

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer, self.preprocess))


# ---------------------------------------------------------------------------------------------------------
# Registry of model configs and local pretrained files


def register_model_config(name: str, cfg: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Make `name` a model architecture open_clip knows (for `create_model`, `get_tokenizer`, `load_clip`)."""
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"model config {name!r} lacks {', '.join(missing)}")
    existing = oc_factory._MODEL_CONFIGS.get(name)
    if existing is not None and existing != dict(cfg) and not overwrite:
        raise ValueError(f"a different model config named {name!r} is already registered")
    oc_factory._MODEL_CONFIGS[name] = copy.deepcopy(dict(cfg))


def register_config_file(path: Path, *, overwrite: bool = False) -> str:
    """Register one open_clip-style JSON config under its file stem; returns the name."""
    with open(path, encoding="utf-8") as handle:
        cfg = json.load(handle)
    register_model_config(path.stem, cfg, overwrite=overwrite)
    return path.stem


def register_builtin_configs() -> list[str]:
    """Register the configs shipped in `sempt_cli/models/configs` (the demo world's tiny CLIPs)."""
    return [register_config_file(p, overwrite=True) for p in sorted(CONFIG_DIR.glob("*.json"))]


def register_pretrained_file(backbone: str, tag: str, path: Path) -> None:
    """Let `load_clip(backbone, tag)` resolve `tag` to a local weights file (e.g. the demo CLIPs' weights)."""
    cfg = _model_config(backbone)
    entry = {"file": str(Path(path).expanduser()), "quick_gelu": bool(cfg.get("quick_gelu", False))}
    oc_pretrained._PRETRAINED.setdefault(backbone, {})[oc_pretrained._clean_tag(tag)] = entry


def _model_config(backbone: str) -> dict[str, Any]:
    cfg = oc_factory.get_model_config(backbone)
    if cfg is None:
        close = difflib.get_close_matches(backbone, open_clip.list_models(), n=3)
        hint = f"Did you mean {', '.join(close)}?" if close else "See `open_clip.list_models()` for names."
        raise SemptError(f"Unknown CLIP backbone {backbone!r}.", hint)
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Locating pretrained weights without surprises


def is_offline() -> bool:
    """True when Hugging Face's offline switch is set (either in the environment now or at hub import)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if env.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """Repo id and file names open_clip would try for an `hf_hub` entry ("org/repo/" or "org/repo/file")."""
    repo_id, filename = os.path.split(hf_hub)
    if not filename:
        return repo_id, [_HF_SAFE_WEIGHTS, _HF_WEIGHTS]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [filename[:-4] + ".safetensors", filename]
    return repo_id, [filename]


def _where_to_put(backbone: str, repo_id: str, filename: str, cache_dir: Path | None, offline: bool) -> str:
    from huggingface_hub import constants

    folder = "models--" + repo_id.replace("/", "--")
    cache = str(cache_dir) if cache_dir else constants.HF_HUB_CACHE
    hint = (
        f"Run `hf download {repo_id} {filename}` where there is internet and copy the {folder} folder it "
        f"creates into {cache}, or pass the downloaded file with --checkpoint PATH --backbone {backbone}."
    )
    return hint if offline else hint + " Set HF_HUB_OFFLINE=1 to skip the network."


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connection test, so an offline machine fails in seconds instead of a minute of retries."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True  # behind a proxy a direct connection says nothing; let the hub client try
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_pretrained(
    backbone: str,
    tag: str,
    *,
    cache_dir: Path | None = None,
    offline: bool | None = None,
) -> Path:
    """Path of the weights file for `backbone`/`tag`, from the cache if possible, downloading only when online."""
    offline = is_offline() if offline is None else offline
    cfg = oc_pretrained.get_pretrained_cfg(backbone, tag)
    if not cfg:
        candidate = Path(tag).expanduser()
        if candidate.is_file():
            return candidate
        tags = open_clip.list_pretrained_tags_by_model(backbone)
        hint = f"Known tags for {backbone}: {', '.join(tags)}." if tags else f"{backbone} has no known tags."
        raise WeightsError(
            f"Unknown pretrained tag {tag!r} for {backbone}.",
            hint + " A local weights file goes in --checkpoint.",
        )
    if cfg.get("file"):
        path = Path(cfg["file"])
        if not path.is_file():
            raise WeightsError(f"The weights file registered for {backbone}/{tag} is missing: {path}.")
        return path
    if cfg.get("hf_hub"):
        return _resolve_hf(backbone, tag, cfg["hf_hub"], cache_dir, offline)
    if cfg.get("url"):
        return _resolve_url(backbone, tag, cfg["url"], cache_dir, offline)
    raise WeightsError(f"open_clip lists {backbone}/{tag} without any download location.")


def _resolve_hf(backbone: str, tag: str, hf_hub: str, cache_dir: Path | None, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_id, filenames = _hf_candidates(hf_hub)
    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(cached, str):
            return Path(cached)
    what = f"file {filenames[0]} of the Hugging Face repo {repo_id}"
    if offline:
        raise WeightsError(
            f"The weights for {backbone}/{tag} are not in the local cache and the network is off "
            f"(HF_HUB_OFFLINE): they are {what}.",
            _where_to_put(backbone, repo_id, filenames[0], cache_dir, offline=True),
        )
    if not _hub_reachable():
        raise WeightsError(
            f"The weights for {backbone}/{tag} are not in the local cache and the Hugging Face hub cannot be "
            f"reached: they are {what}.",
            _where_to_put(backbone, repo_id, filenames[0], cache_dir, offline=False),
        )
    last_error: Exception | None = None
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
        except LocalEntryNotFoundError as exc:  # no connection: trying the other name would only wait again
            last_error = exc
            break
        except EntryNotFoundError as exc:  # this repo has the other file format
            last_error = exc
        except Exception as exc:
            last_error = exc
            break
    raise WeightsError(
        f"Could not download the weights for {backbone}/{tag} ({what}): {_one_line(last_error)}.",
        _where_to_put(backbone, repo_id, filenames[0], cache_dir, offline=False),
    )


def _resolve_url(backbone: str, tag: str, url: str, cache_dir: Path | None, offline: bool) -> Path:
    folder = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
    target = folder / os.path.basename(url)
    if target.is_file():
        return target
    hint = f"Download {url} into {folder}, or pass the file with --checkpoint PATH."
    if offline:
        raise WeightsError(f"The weights for {backbone}/{tag} are not in {folder} and the network is off.", hint)
    try:
        return Path(oc_pretrained.download_pretrained_from_url(url, cache_dir=str(folder)))
    except Exception as exc:
        raise WeightsError(f"Could not download the weights for {backbone}/{tag}: {_one_line(exc)}.", hint) from exc


def _one_line(exc: BaseException | None) -> str:
    text = str(exc or "unknown error").strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------------
# Reading state dicts safely


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A CLIP state dict from a safetensors or torch file (open_clip or OpenAI layout), on the CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Checkpoint file not found: {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable safetensors file: {_one_line(exc)}.") from exc
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about TorchScript archives before refusing them
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise _pickle_refusal(path, exc) from None
        except Exception as exc:
            if "TorchScript" in str(exc):
                target = path.with_suffix(".safetensors")
                raise WeightsError(
                    f"{path} is a TorchScript archive (OpenAI's original .pt format), which is not read "
                    "because loading it is not limited to tensors.",
                    'If you trust the file, convert it once with `python -c "from sempt_cli.models.factory '
                    f"import convert_torchscript; convert_torchscript('{path}', '{target}')\"`"
                    " and pass the .safetensors file.",
                ) from exc
            raise WeightsError(f"{path} is not a readable weights file: {_one_line(exc)}.") from exc
    return _normalise_state_dict(obj, path)


def _pickle_refusal(path: Path, exc: pickle.UnpicklingError) -> WeightsError:
    """The refusal in our words: torch's own message goes on to suggest loading with weights_only=False, which
    reads as if sempt had done so (it never does)."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint (a bare pickle, a legacy file): torch's message may name the global
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    what = (f"holds pickled Python objects ({', '.join(found[:3])}{' ...' if len(found) > 3 else ''}) besides "
            "tensors" if found else "holds pickled data beyond plain tensors")
    return WeightsError(
        f"{path} {what}, which could run arbitrary code when loaded; sempt reads weights only and did not "
        "unpickle it.",
        "If you trust its source, save its tensors as a .safetensors file yourself and pass that file instead.",
    )


def _normalise_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path} does not contain a state dict.")
    state = {str(k): v for k, v in obj.items() if k not in _OPENAI_META_KEYS}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"{path} holds non-tensor entries ({', '.join(bad[:3])}), not a CLIP state dict.")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def convert_torchscript(src: str | Path, dst: str | Path) -> Path:
    """Convert an OpenAI TorchScript CLIP (.pt) to a safetensors state dict; only for files you trust."""
    from safetensors.torch import save_file

    module = torch.jit.load(str(src), map_location="cpu")
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items() if k not in _OPENAI_META_KEYS}
    save_file(state, str(dst))
    return Path(dst)


def load_weights(model: nn.Module, state: dict[str, Tensor], *, source: str) -> None:
    """Strictly load a CLIP state dict, naming missing / unexpected / mis-shaped keys on failure."""
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = oc_factory.convert_to_custom_text_state_dict(state)  # CLIP layout into CustomTextCLIP
    logit_scale = getattr(model, "logit_scale", None)
    if isinstance(logit_scale, Tensor) and "logit_scale" in state:
        state["logit_scale"] = state["logit_scale"].reshape(logit_scale.shape)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} with another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(expected[k].shape)})"
            )
        raise WeightsError(
            f"The weights in {source} do not fit this architecture: {'; '.join(parts)} keys.",
            "Check that --backbone names the architecture the checkpoint was trained with.",
        )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------------------
# The entry point


def check_quick_gelu(backbone: str, pretrained: str | None) -> None:
    """Refuse a plain OpenAI name with QuickGELU weights: open_clip would silently switch to nn.GELU."""
    if not pretrained:
        return
    tag_cfg = oc_pretrained.get_pretrained_cfg(backbone, pretrained)
    if tag_cfg.get("quick_gelu", False) and not _model_config(backbone).get("quick_gelu", False):
        raise SemptError(
            f"The {pretrained!r} weights of {backbone} were trained with QuickGELU, but the config "
            f"{backbone!r} builds nn.GELU, which silently changes every feature.",
            f"Use --backbone {backbone}-quickgelu.",
        )


def load_clip(
    backbone: str,
    pretrained: str | None,
    checkpoint: Path | None = None,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    *,
    offline: bool | None = None,
    precision: str = "fp32",
    freeze: bool = True,
) -> LoadedClip:
    """Build `backbone` and load weights from `checkpoint` (a local file) or else the `pretrained` tag.

    With a checkpoint, `pretrained` only supplies the preprocessing (mean/std) and the QuickGELU check and
    nothing is downloaded. With neither, the model is randomly initialised (tests, pre-training).
    """
    _model_config(backbone)  # unknown names fail here, with suggestions
    check_quick_gelu(backbone, pretrained)
    if checkpoint is not None:
        weights_file: Path | None = Path(checkpoint).expanduser()
    elif pretrained:
        weights_file = resolve_pretrained(backbone, pretrained, cache_dir=cache_dir, offline=offline)
    else:
        weights_file = None
    state = read_state_dict(weights_file) if weights_file is not None else None

    with _quiet_open_clip():
        model = open_clip.create_model(backbone, pretrained=None, precision=precision, device="cpu")
    if state is not None:
        load_weights(model, state, source=str(weights_file))
    model.to(device)
    if freeze:
        model.requires_grad_(False)
        model.eval()

    tag_cfg = oc_pretrained.get_pretrained_cfg(backbone, pretrained) if pretrained else {}
    tokenizer = open_clip.get_tokenizer(backbone)
    return LoadedClip(
        model=model,
        tokenizer=tokenizer,
        preprocess=_preprocess(model, tag_cfg),
        backbone=backbone,
        pretrained=pretrained,
        weights_file=weights_file,
    )


def _preprocess(model: nn.Module, tag_cfg: Mapping[str, Any]) -> Preprocess:
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    pp.update({k: v for k, v in tag_cfg.items() if k in ("mean", "std", "interpolation", "resize_mode")})
    size = pp.get("size", 224)
    if isinstance(size, (tuple, list)):
        size = int(size[0]) if len(size) == 2 and size[0] == size[1] else (int(size[0]), int(size[1]))
    return Preprocess(
        image_size=size,
        mean=tuple(float(m) for m in pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(float(s) for s in pp.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=str(pp.get("interpolation", "bicubic")),
        resize_mode=str(pp.get("resize_mode", "shortest")),
    )


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's "initialized randomly" warning: weights are loaded right after, by us."""
    root = logging.getLogger()
    drop = _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def to_official_fp16(model: nn.Module) -> nn.Module:
    """Put a frozen CLIP in place into the official PromptSRC/PromptKD arithmetic (CLIP's `convert_weights`, spec
    §1.4): Conv/Linear/attention weights and biases and the `proj`/`text_projection` matrices in fp16, LayerNorms
    computing in fp32 and returning fp16, embeddings and `logit_scale` fp32. Run under fp16 autocast, the
    residual streams are then fp16 and prompts enter them cast to fp16, as the official `.half()` does."""
    from open_clip.model import convert_weights_to_lp
    from open_clip.transformer import LayerNormFp32

    convert_weights_to_lp(model, torch.float16)  # the same tensors as the official convert_weights
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and not isinstance(module, LayerNormFp32):
            module.__class__ = LayerNormFp32  # same parameters; computes in fp32 like OpenAI's LayerNorm
    return model
