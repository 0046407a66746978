"""`embed_attributes`: T_atr, the teacher's text embeddings of every attribute description, computed once and cached.

Spec §2 and §5: T_atr ∈ R^{N×S×d} (L2-normalised) comes from the same text encoder as T_lbl:

* ``teacher-prompted`` (default): the teacher's text tower with its learned prompts, "{ctx} {description}."
  (`PromptedTextTower.build_prompts`), exactly as class names become "{ctx} {class}.";
* ``teacher-frozen``: the teacher's frozen backbone without prompts (a depth-0 tower, no prefix).

Text features are constant during distillation, so they are cached with `TensorCache` under kind
``attribute-vectors``, keyed by the teacher checkpoint's sha256, the backbone identity, the attribute file's
sha256, the encoder choice and (for the prompted encoder) the teacher's prompt settings, plus the version of
the description-to-text rule. Every description is checked with the teacher's own tokenizer first: one that
would be cut at 77 tokens fails with its class named instead of being silently truncated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor

from sempt_cli.engine.cache import TensorCache
from sempt_cli.engine.runtime import Runtime, resolve_runtime
from sempt_cli.errors import SemptError, short_quote
from sempt_cli.io import sha256_file
from sempt_cli.knowledge.budget import SPECIAL_TOKENS, description_body
from sempt_cli.knowledge.generate import all_classnames
from sempt_cli.knowledge.schema import AttributeFile, load_attribute_file
from sempt_cli.models.checkpoint import load_learned
from sempt_cli.models.factory import LoadedClip
from sempt_cli.models.identity import backbone_identity
from sempt_cli.models.prompted import CLASS_CHUNK, PromptedTextTower, PromptSpec
from sempt_cli.pipeline.runs import load_teacher
from sempt_cli.settings import Settings

KIND = "attribute-vectors"
BODY_FORMAT = "description-v1"
"""How a description becomes the encoded text (`description_body`): bump when that rule changes."""


@dataclass(frozen=True)
class AttributeEmbeddings:
    """T_atr [N, S, D] (L2-normalised over D) for `classnames` in label order, and where it is cached."""

    vectors: Tensor
    classnames: list[str]
    descriptions: list[list[str]]
    encoder: str
    attribute_sha256: str
    path: Path
    reused: bool


def embed_attributes(
    teacher_checkpoint: Path,
    attribute_file: Path,
    settings: Settings,
    *,
    console: Console | None = None,
) -> AttributeEmbeddings:
    """T_atr of `attribute_file` with `sempt.attr_encoder`; `settings` also gives cache dir, device, precision.

    The file's class list must be its dataset's list in label order (the teacher's own list when the teacher
    was trained on that dataset). `data.dataset` is not consulted: the file says which dataset it describes.
    """
    console = console or Console(stderr=True)
    attributes = load_attribute_file(attribute_file)
    sidecar = load_learned(teacher_checkpoint)
    record = sidecar.record
    _check_classes(attributes, attribute_file, record.classnames if record.dataset == attributes.dataset else None)
    encoder = settings.sempt.attr_encoder
    file_sha = sha256_file(attribute_file)
    cache = TensorCache(settings.paths.cache_dir / "tensors")
    inputs: dict[str, Any] = {
        "teacher": sidecar.sha256, "backbone": record.backbone_identity, "attributes": file_sha,
        "encoder": encoder, "prompt": record.settings["prompts"] if encoder == "teacher-prompted" else None,
        "body": BODY_FORMAT,
    }

    def compute() -> dict[str, Tensor]:
        runtime = resolve_runtime(settings.model)
        teacher = load_teacher(teacher_checkpoint, runtime.device, {"paths.cache_dir": str(settings.paths.cache_dir)},
                               half=runtime.half_weights)
        teacher.eval()
        label = f"the {encoder} text encoder ({record.backbone})"
        return {"vectors": _encode(_text_tower(teacher, encoder), attributes, runtime, console, label)}

    tensors, reused = cache.get_or_compute(KIND, inputs, compute)
    return AttributeEmbeddings(tensors["vectors"], list(attributes.classnames), attributes.descriptions(), encoder,
                               file_sha, cache.path_for(KIND, inputs), reused)


def embed_attributes_frozen(
    clip: LoadedClip, attribute_file: Path, settings: Settings, *, console: Console | None = None
) -> AttributeEmbeddings:
    """T_atr of `attribute_file` from the frozen text tower of `clip` (a supervised baseline's own backbone, no
    prompts, no prefix): constant while the baseline trains, so cached like the teacher's (an unnamed, randomly
    initialised backbone is encoded afresh)."""
    console = console or Console(stderr=True)
    attributes = load_attribute_file(attribute_file)
    _check_classes(attributes, attribute_file)
    encoder = "backbone-frozen"
    file_sha = sha256_file(attribute_file)
    identity = backbone_identity(clip)
    cache = TensorCache(settings.paths.cache_dir / "tensors")
    inputs: dict[str, Any] = {"backbone": identity, "attributes": file_sha, "encoder": encoder, "body": BODY_FORMAT}

    def compute() -> dict[str, Tensor]:
        tower = PromptedTextTower(clip.model, PromptSpec(0), ctx_init=None, tokenizer=clip.tokenizer).eval()
        runtime = resolve_runtime(settings.model)
        return {"vectors": _encode(tower, attributes, runtime, console, f"the frozen text encoder ({clip.backbone})")}

    tensors, reused = (compute(), False) if identity is None else cache.get_or_compute(KIND, inputs, compute)
    return AttributeEmbeddings(tensors["vectors"], list(attributes.classnames), attributes.descriptions(), encoder,
                               file_sha, cache.path_for(KIND, inputs), reused)


def _encode(tower: PromptedTextTower, attributes: AttributeFile, runtime: Runtime, console: Console,
            label: str) -> Tensor:
    """L2-normalised features [N, S, D] of every description, "{prefix} {description}." by `tower`."""
    _check_lengths(tower, attributes)
    texts = [description_body(text) for row in attributes.descriptions() for text in row]
    console.print(f"Encoding {len(texts)} descriptions ({len(attributes.classnames)} classes × "
                  f"{attributes.num_descriptions}) with {label} ...")
    with torch.no_grad(), runtime.autocast():
        # tokenised chunk by chunk too: the token embeddings of every description at once would not fit
        features = torch.cat([tower(tower.build_prompts(texts[i : i + CLASS_CHUNK])).float()
                              for i in range(0, len(texts), CLASS_CHUNK)])
    vectors = F.normalize(features, dim=-1)
    return vectors.reshape(len(attributes.classnames), attributes.num_descriptions, -1)


def _check_classes(attributes: AttributeFile, path: Path, teachers: list[str] | None = None) -> None:
    """The file must list its dataset's classes in the data layer's label order (`teachers`: the teacher's own
    list, when it was trained on that dataset)."""
    if teachers is not None:
        expected, source = teachers, "the teacher's"
    else:
        expected, source = all_classnames(attributes.dataset), "sempt's shipped"
    if attributes.classnames != expected:
        first = next((i for i, (a, b) in enumerate(zip(attributes.classnames, expected, strict=False)) if a != b),
                     min(len(expected), len(attributes.classnames)))
        raise SemptError(
            f"The attribute file {path} lists {len(attributes.classnames)} classes of {attributes.dataset} that "
            f"differ from {source} list of {len(expected)} (first difference at label {first}).",
            "Regenerate it with `sempt gen-attributes` for this dataset.",
        )


def _text_tower(teacher: Any, encoder: str) -> PromptedTextTower:
    prompted = getattr(teacher, "text", None)
    if not isinstance(prompted, PromptedTextTower):
        raise SemptError(f"The teacher ({type(teacher).__name__}) has no prompted text tower to encode descriptions.")
    if encoder == "teacher-prompted":
        return prompted
    clip = getattr(teacher, "clip", None)
    if clip is None:
        raise SemptError(f"The teacher ({type(teacher).__name__}) does not expose its frozen backbone.")
    return PromptedTextTower(clip.model, PromptSpec(0), ctx_init=None, tokenizer=clip.tokenizer).eval()


def _prompt_tokens(tower: PromptedTextTower, text: str) -> int:
    """Tokens of the full prompt with start/end; a tokenizer without `encode` is judged by its padded output."""
    prompt = f"{tower.prefix} {text}".strip()
    encode = getattr(tower.tokenizer, "encode", None)
    if callable(encode):
        return len(encode(prompt)) + SPECIAL_TOKENS
    ids = tower.tokenizer([prompt])[0]
    used = int((ids != 0).sum())
    return tower.context_length + 1 if int(ids[-1]) != 0 else used


def _check_lengths(tower: PromptedTextTower, attributes: AttributeFile) -> None:
    over = []
    for entry in attributes.classes:
        for description in entry.descriptions:
            needed = _prompt_tokens(tower, description_body(description.text))
            if needed > tower.context_length:
                over.append(f"{short_quote(entry.name)}: {short_quote(description.text)} ({needed} tokens)")
    if over:
        more = f" and {len(over) - 3} more" if len(over) > 3 else ""
        raise SemptError(
            f"{len(over)} descriptions do not fit the text encoder's {tower.context_length}-token context after the "
            f"prompt {tower.prefix!r}: {'; '.join(over[:3])}{more}.",
            "Regenerate the attribute file with this teacher's prompt settings (--text-length, --ctx-init).",
        )
