"""Pre-train, ship and load the demo world's two tiny CLIPs (`sempt-demo-teacher`, `sempt-demo-student`).

Why: the demo world (`sempt_cli.data.demo`) lets the whole pipeline run for real on a CPU, but prompt
learning needs a CLIP that already knows something. These two models are pre-trained from scratch, with the
standard CLIP recipe, on the demo world's caption corpus, where invented class names appear next to their
pictures with a long-tailed frequency; so zero-shot by name is clearly above chance but imperfect, and the
larger teacher knows more than the student (design notes: `shared/spec/demo-world.md`).

Rebuild the shipped weights (the one documented command; a few minutes on 2 CPU cores)::

    python -m sempt_cli.models.demo_clip --out sempt_cli/models/weights --seed 0

It renders the corpus once, trains both models with fixed seeds, evaluates zero-shot on the demo test split
("a photo of a {name}.": base among base, novel among novel, all 40 classes), prints that table and writes
`<backbone>.safetensors` plus a `<backbone>.json` sidecar (recipe, corpus, timing, zero-shot results,
sha256, library versions and the exact command). The files are byte-identical across runs on one machine
with the same thread count (`--threads`, default 2; the count changes the last bits of floating point, as
may another CPU). On a CPU shared with other jobs, set `OMP_WAIT_POLICY=PASSIVE` (it does not change the
results): spinning OpenMP threads otherwise make training several times slower.

Stored format: every tensor in fp16, except that the token embedding (49408 x width, most of the size)
is stored sparse, as the BPE ids that occur in the corpus (a few hundred) plus their rows. When loading,
all other rows are zero. That is harmless: those ids never appear in any training caption, so their rows
were never trained (they held random initial values, which carry no meaning); demo prompts use only corpus
words, and any text outside the demo vocabulary (a template word, a vague description word) gets a neutral
zero vector instead of a random one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sempt_cli.data.transforms import CLIP_MEAN, CLIP_STD
from sempt_cli.errors import WeightsError
from sempt_cli.io import atomic_write_bytes, atomic_write_json, sha256_file
from sempt_cli.models.factory import DEMO_STUDENT, DEMO_TEACHER, LoadedClip, Tokenizer, load_clip, load_weights

if TYPE_CHECKING:
    from open_clip.model import CLIP

log = logging.getLogger(__name__)

__all__ = [
    "DEMO_BACKBONES",
    "DEMO_TAG",
    "WEIGHTS_DIR",
    "Corpus",
    "PretrainReport",
    "Recipe",
    "demo_sidecar_path",
    "demo_test_set",
    "demo_weights_path",
    "evaluate_demo_clip",
    "file_metadata",
    "load_demo_clip",
    "load_demo_state_dict",
    "pretrain",
    "read_sparse_state",
    "render_corpus",
    "sparse_state",
    "update_sidecar",
    "write_demo_weights",
    "zero_shot_accuracy",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEMO_TAG = "demo"
DEMO_BACKBONES = (DEMO_TEACHER, DEMO_STUDENT)
FORMAT = "sempt-demo-clip-sparse-v1"
TOKEN_KEY = "token_embedding.weight"
_IDS_KEY = "token_embedding.ids"
_ROWS_KEY = "token_embedding.rows"
ZERO_SHOT_PROMPT = "a photo of a {}."
REBUILD_COMMAND = "python -m sempt_cli.models.demo_clip --out sempt_cli/models/weights --seed 0"
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings of one pre-training run (defaults in `RECIPES`, tuned for 2 CPU cores)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.1
    warmup: float = 0.1
    """Fraction of the steps spent warming up linearly, before the cosine decay."""
    shift: int = 3
    """Largest random translation in pixels (augmentation), with horizontal flips."""


RECIPES: dict[str, Recipe] = {
    DEMO_TEACHER: Recipe(steps=200, batch_size=128, lr=1e-3),
    DEMO_STUDENT: Recipe(steps=100, batch_size=128, lr=1e-3),
}
"""Tuned on 2 CPU cores (unloaded: teacher about 2 min, student under 1 min, plus 40 s to render the corpus).

The student gets half the teacher's steps, like a small model given less pre-training compute: with equal
steps the two end up level (both are under-trained, so capacity is not what limits them), while the demo
needs teacher > student for distillation to have something to transfer. More teacher steps push its
base-among-base accuracy past 0.9 (0.96 at 400 steps); 200 keeps it near 0.9, clearly imperfect."""
CORPUS_SIZE = 24_000
CORPUS_SEED = 0


# ---------------------------------------------------------------------------------------------------------
# Corpus


@dataclass(frozen=True)
class Corpus:
    """The pre-training corpus rendered once into memory: uint8 images (N, 3, H, W) and their captions."""

    images: Tensor
    captions: list[str]
    seed: int
    size: int

    def __len__(self) -> int:
        return len(self.captions)


def render_corpus(n: int, *, seed: int = CORPUS_SEED, size: int = 48, start: int = 0) -> Corpus:
    """Render `n` corpus pairs (2-4 ms each on one core); sample i depends only on (seed, i), so prefixes agree."""
    from sempt_cli.data.demo import generate_pretraining_corpus

    pairs = generate_pretraining_corpus(n, seed=seed, size=size, start=start)
    images = torch.from_numpy(np.stack([image for image, _ in pairs])).permute(0, 3, 1, 2).contiguous()
    return Corpus(images, [caption for _, caption in pairs], seed, size)


def _normalise(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) -> CLIP-normalised float, exactly what `clip_test_transform` gives at native size."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _augment(images: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Random horizontal flip and translation by up to `shift` px (edge padding) on a uint8 batch.

    Light on purpose: crops or scale jitter would change the apparent size, which is an attribute."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    if shift <= 0:
        return images
    padded = F.pad(images.float(), (shift, shift, shift, shift), mode="replicate")
    dy = torch.randint(0, 2 * shift + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (n, 1), generator=generator)
    rows = (dy + torch.arange(h)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w)).view(n, 1, 1, w)
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
    return out.to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# Training


@dataclass
class PretrainReport:
    """What a pre-training run did, for the sidecar."""

    backbone: str
    seed: int
    recipe: Recipe
    corpus_size: int
    corpus_seed: int
    image_size: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    """Mean contrastive loss over consecutive windows of steps (about 20 windows)."""
    logit_scale: float = 0.0
    token_ids: list[int] = field(default_factory=list)
    """The BPE ids that occur in the corpus: the rows of the token embedding that were trained."""
    parameters: int = 0


class _TextEncoder:
    """`CLIP.encode_text` over a compact vocabulary and trimmed context, for speed during training only.

    The token table holds only the ids that occur in the corpus (a few hundred rows instead of 49408, so
    AdamW does not sweep 6M untouched values each step), and sequences are cut after the longest caption:
    the causal mask means positions after the end token never influence it, so this equals the real
    encode_text on the full 77-token context (a test checks it)."""

    def __init__(self, model: CLIP, token_ids: Tensor) -> None:
        self.model = model
        self.lookup = torch.full((int(model.vocab_size),), -1, dtype=torch.long)
        self.lookup[token_ids] = torch.arange(len(token_ids))
        self.table = nn.Parameter(model.token_embedding.weight.detach()[token_ids].clone())

    def __call__(self, tokens: Tensor) -> Tensor:
        model = self.model
        length = int((tokens != 0).sum(dim=1).max())
        tokens = tokens[:, :length]
        x = F.embedding(self.lookup[tokens], self.table) + model.positional_embedding[:length]
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        projection = model.text_projection
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def _param_groups(model: nn.Module, table: nn.Parameter, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's rule: no weight decay on gains, biases, norms and the logit scale."""
    decay: list[nn.Parameter] = [table]
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if name == TOKEN_KEY:
            continue
        exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def contrastive_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric InfoNCE over the batch (matching pairs on the diagonal)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.T
    target = torch.arange(logits.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def pretrain(
    backbone: str,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    corpus_size: int,
    corpus: Corpus | None = None,
    corpus_seed: int = CORPUS_SEED,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: float = 0.1,
    shift: int = 3,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[CLIP, PretrainReport]:
    """Contrastively pre-train `backbone` from random initialisation on the demo corpus.

    Standard CLIP: symmetric InfoNCE with a learnable temperature (init 1/0.07, clamped at 100), AdamW with
    linear warm-up and cosine decay, light augmentation. Deterministic for a given seed, corpus and thread
    count. `corpus` (its first `corpus_size` pairs are used) avoids re-rendering when training several
    models. The returned model is in eval mode, frozen, with the untrained token rows set to zero, i.e.
    exactly what `sparse_state` stores (before the fp16 rounding). `progress(step, loss)` is called per step.
    """
    if steps < 1 or batch_size < 2 or corpus_size < batch_size:
        raise ValueError("pretrain needs steps >= 1, batch_size >= 2 and corpus_size >= batch_size")
    recipe = Recipe(steps, batch_size, lr, weight_decay, warmup, shift)
    started = time.perf_counter()
    if corpus is None or len(corpus) < corpus_size or corpus.seed != corpus_seed:
        corpus = render_corpus(corpus_size, seed=corpus_seed)
    images = corpus.images[:corpus_size]
    captions = corpus.captions[:corpus_size]

    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        loaded = load_clip(backbone, None, freeze=False)
    model, tokenizer = loaded.model, loaded.tokenizer
    tokens = tokenizer(captions)
    token_ids = torch.unique(tokens)
    text = _TextEncoder(model, token_ids)
    optimizer = torch.optim.AdamW(_param_groups(model, text.table, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup_steps = max(1, round(warmup * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup_steps))
    generator = torch.Generator().manual_seed(seed)

    model.train()
    order = torch.randperm(corpus_size, generator=generator)
    cursor = 0
    step_losses: list[float] = []
    for step in range(steps):
        if cursor + batch_size > corpus_size:
            order, cursor = torch.randperm(corpus_size, generator=generator), 0
        index = order[cursor : cursor + batch_size]
        cursor += batch_size
        batch = _normalise(_augment(images[index], shift, generator))
        loss = contrastive_loss(model.encode_image(batch), text(tokens[index]), model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        step_losses.append(loss.item())
        if progress is not None:
            progress(step, step_losses[-1])

    with torch.no_grad():
        model.token_embedding.weight.zero_()
        model.token_embedding.weight[token_ids] = text.table.detach()
    model.requires_grad_(False)
    model.eval()
    window = max(1, steps // 20)
    losses = [float(np.mean(step_losses[i : i + window])) for i in range(0, steps, window)]
    report = PretrainReport(
        backbone=backbone,
        seed=seed,
        recipe=recipe,
        corpus_size=corpus_size,
        corpus_seed=corpus.seed,
        image_size=corpus.size,
        seconds=time.perf_counter() - started,
        losses=losses,
        logit_scale=float(model.logit_scale.exp()),
        token_ids=[int(i) for i in token_ids],
        parameters=sum(p.numel() for p in model.parameters()),
    )
    return model, report


# ---------------------------------------------------------------------------------------------------------
# Zero-shot evaluation on the demo test split


@dataclass(frozen=True)
class DemoTestSet:
    """Demo test images (uint8, N x 3 x H x W), their labels and the class names in label order."""

    images: Tensor
    labels: Tensor
    classnames: list[str]


def demo_test_set(root: Path | None = None, *, per_class: int | None = None, size: int = 48) -> DemoTestSet:
    """The demo world's test split, read from a generated world at `root` or else rendered in memory.

    Both give the same pixels (the files are lossless PNGs of the same renderer); rendering avoids writing
    a world to disk when only the models are rebuilt. `per_class` keeps the first that many per class."""
    from sempt_cli.data.demo import demo_world, render_class_image
    from sempt_cli.data.demo_render import IMAGES_PER_CLASS

    if root is not None:
        from PIL import Image

        from sempt_cli.data.readers import load_dataset

        splits = load_dataset("demo", root)
        kept: dict[int, int] = {}
        arrays, labels = [], []
        for sample in splits.test:
            if per_class is not None and kept.get(sample.label, 0) >= per_class:
                continue
            kept[sample.label] = kept.get(sample.label, 0) + 1
            with Image.open(sample.path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
            labels.append(sample.label)
        classnames = list(splits.classnames)
    else:
        world = demo_world()
        first = IMAGES_PER_CLASS["train"] + IMAGES_PER_CLASS["val"]
        count = IMAGES_PER_CLASS["test"] if per_class is None else min(per_class, IMAGES_PER_CLASS["test"])
        arrays, labels = [], []
        for label in range(len(world.classes)):
            for index in range(first, first + count):
                arrays.append(render_class_image(world, label, index, size=size))
                labels.append(label)
        classnames = world.classnames
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return DemoTestSet(images, torch.tensor(labels), classnames)


@torch.no_grad()
def zero_shot_accuracy(
    model: CLIP,
    tokenizer: Tokenizer,
    test: DemoTestSet,
    *,
    prompt: str = ZERO_SHOT_PROMPT,
    descriptions: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 500,
) -> dict[str, float]:
    """Zero-shot top-1 accuracy: base among base, novel among novel (the base-to-novel protocol), all.

    Base = the first half of the labels, novel = the second half, as `sempt_cli.data.subsample` splits.
    Classes are represented by `prompt` filled with the class name or, with `descriptions`, by the mean of
    their descriptions' normalised embeddings (how much the attribute words alone know)."""
    from sempt_cli.data.records import prompt_name

    was_training = model.training
    model.eval()
    if descriptions is None:
        texts = [prompt.format(prompt_name(name)) for name in test.classnames]
        text_features = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    else:
        text_features = torch.stack(
            [
                F.normalize(model.encode_text(tokenizer(list(descriptions[name]))), dim=-1).mean(0)
                for name in test.classnames
            ]
        )
        text_features = F.normalize(text_features, dim=-1)
    image_features = torch.cat(
        [
            F.normalize(model.encode_image(_normalise(test.images[i : i + batch_size])), dim=-1)
            for i in range(0, len(test.images), batch_size)
        ]
    )
    model.train(was_training)
    scores = image_features @ text_features.T
    num_base = (len(test.classnames) + 1) // 2
    base = test.labels < num_base
    results = {}
    for key, rows, columns, offset in (
        ("base", base, slice(0, num_base), 0),
        ("novel", ~base, slice(num_base, None), num_base),
        ("all", torch.ones_like(base), slice(None), 0),
    ):
        predicted = scores[rows][:, columns].argmax(dim=1) + offset
        results[key] = float((predicted == test.labels[rows]).float().mean())
    return results


# ---------------------------------------------------------------------------------------------------------
# Sparse fp16 storage


def sparse_state(model: nn.Module, token_ids: Sequence[int]) -> dict[str, Tensor]:
    """The model's state as stored: fp16 tensors, the token embedding as (ids, rows) of the used ids."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items() if k != TOKEN_KEY}
    ids = torch.tensor(sorted(set(int(i) for i in token_ids)), dtype=torch.int32)
    state[_IDS_KEY] = ids
    state[_ROWS_KEY] = model.state_dict()[TOKEN_KEY][ids.long()].to(torch.float16).contiguous()
    return state


def file_metadata(backbone: str, vocab_size: int) -> dict[str, str]:
    """The safetensors metadata of a sparse file: ONE key holding sorted JSON.

    Why one key: safetensors (0.8) writes a metadata map in random order per process, so several keys would
    make byte-identical rebuilds impossible (and the sha256 in the sidecar unreproducible)."""
    info = {"format": FORMAT, "backbone": backbone, "vocab_size": int(vocab_size)}
    return {"sempt": json.dumps(info, sort_keys=True)}


def read_sparse_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Dense fp32 state dict (untrained token rows zero) and the metadata of a sparse weights file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = json.loads((handle.metadata() or {}).get("sempt", "{}"))
        stored = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    if metadata.get("format") != FORMAT or _IDS_KEY not in stored or _ROWS_KEY not in stored:
        raise ValueError(f"it is not a {FORMAT} file")
    ids, rows = stored.pop(_IDS_KEY).long(), stored.pop(_ROWS_KEY).float()
    table = torch.zeros(int(metadata["vocab_size"]), rows.shape[1])
    table[ids] = rows
    state = {k: v.float() for k, v in stored.items()}
    state[TOKEN_KEY] = table
    return state, metadata


def write_demo_weights(
    model: CLIP,
    report: PretrainReport,
    out_dir: Path,
    *,
    zero_shot: Mapping[str, Any] | None = None,
    command: str = REBUILD_COMMAND,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `<backbone>.safetensors` (sparse fp16) and its JSON sidecar atomically; return the weights path."""
    from safetensors.torch import save

    from sempt_cli.data.demo import generator_hash

    out_dir = Path(out_dir)
    state = sparse_state(model, report.token_ids)
    vocab_size = int(model.token_embedding.weight.shape[0])
    path = out_dir / f"{report.backbone}.safetensors"
    atomic_write_bytes(path, save(state, metadata=file_metadata(report.backbone, vocab_size)))
    import open_clip

    sidecar = {
        "format": FORMAT,
        "backbone": report.backbone,
        "weights_file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "parameters": report.parameters,
        "storage": {
            "dtype": "float16",
            "token_embedding": f"sparse: {len(report.token_ids)} of {vocab_size} rows (the ids in the corpus); "
            "the others load as zero",
        },
        "seed": report.seed,
        "training": {
            **dataclasses.asdict(report.recipe),
            "optimizer": "AdamW(betas=(0.9, 0.98), eps=1e-6), linear warm-up then cosine decay",
            "loss": "symmetric InfoNCE, learnable logit scale (init 1/0.07, clamped at 100)",
            "augmentation": "horizontal flip, translation (replicate padding)",
            "seconds": round(report.seconds, 1),
            "threads": torch.get_num_threads(),
            "loss_curve": [round(v, 4) for v in report.losses],
            "final_logit_scale": round(report.logit_scale, 3),
        },
        "corpus": {
            "generator": "sempt_cli.data.demo.generate_pretraining_corpus",
            "options": _corpus_options(),
            "size": report.corpus_size,
            "seed": report.corpus_seed,
            "image_size": report.image_size,
            "demo_world_hash": generator_hash(report.image_size, 0),
        },
        "zero_shot": None if zero_shot is None else dict(zero_shot),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "machine": platform.machine(),
        },
        "command": command,
        **dict(extra or {}),
    }
    atomic_write_json(demo_sidecar_path(report.backbone, out_dir), sidecar)
    _make_readable(path, demo_sidecar_path(report.backbone, out_dir))
    return path


def _make_readable(*paths: Path) -> None:
    """Atomic writes create 0600 temporaries; shipped package data should be world-readable."""
    for path in paths:
        path.chmod(0o644)


def _corpus_options() -> dict[str, Any]:
    """The corpus generator's option defaults, recorded in case they change after the weights were built."""
    import inspect

    from sempt_cli.data.demo import generate_pretraining_samples

    parameters = inspect.signature(generate_pretraining_samples).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in ("start", "world")}


def update_sidecar(backbone: str, out_dir: Path, **fields: Any) -> None:
    """Set top-level fields of a written sidecar (the zero-shot results, measured on the file as shipped)."""
    path = demo_sidecar_path(backbone, out_dir)
    sidecar = json.loads(path.read_text(encoding="utf-8"))
    sidecar.update(fields)
    atomic_write_json(path, sidecar)
    _make_readable(path)


def evaluate_demo_clip(loaded: LoadedClip, test: DemoTestSet) -> dict[str, Any]:
    """Zero-shot results for the sidecar: by class name, and by the demo attribute descriptions."""
    from sempt_cli.data.demo import demo_attribute_descriptions

    by_name = zero_shot_accuracy(loaded.model, loaded.tokenizer, test)
    descriptions = demo_attribute_descriptions()
    by_descriptions = zero_shot_accuracy(loaded.model, loaded.tokenizer, test, descriptions=descriptions)
    per_class = len(test.labels) // max(1, len(test.classnames))
    return {
        "split": f"demo test split, {per_class} images per class; chance 0.05 (base, novel), 0.025 (all)",
        "by_name": {"prompt": ZERO_SHOT_PROMPT, **{k: round(v, 4) for k, v in by_name.items()}},
        "by_descriptions": {
            "texts": "demo_attribute_descriptions() (6 per class), mean of normalised embeddings",
            **{k: round(v, 4) for k, v in by_descriptions.items()},
        },
    }


# ---------------------------------------------------------------------------------------------------------
# Loading the shipped weights


def _check_backbone(backbone: str) -> None:
    if backbone not in DEMO_BACKBONES:
        raise WeightsError(
            f"There are no demo weights for {backbone!r}; they exist for {', '.join(DEMO_BACKBONES)}.",
        )


def demo_weights_path(backbone: str, weights_dir: Path | None = None) -> Path:
    """Where the shipped sparse weights of a demo backbone live (whether or not the file exists)."""
    _check_backbone(backbone)
    return Path(weights_dir or WEIGHTS_DIR) / f"{backbone}.safetensors"


def demo_sidecar_path(backbone: str, weights_dir: Path | None = None) -> Path:
    """The JSON sidecar next to the weights (recipe, zero-shot results, sha256)."""
    return demo_weights_path(backbone, weights_dir).with_suffix(".json")


def _rebuild_hint() -> str:
    return f"Reinstall sempt, or rebuild the demo weights with `{REBUILD_COMMAND}` (a few minutes on a CPU)."


def load_demo_state_dict(backbone: str, weights_dir: Path | None = None) -> dict[str, Tensor]:
    """The shipped weights of a demo backbone as a dense fp32 state dict, after checking the sidecar hash."""
    path = demo_weights_path(backbone, weights_dir)
    sidecar_path = demo_sidecar_path(backbone, weights_dir)
    if not path.is_file() or not sidecar_path.is_file():
        missing = path if not path.is_file() else sidecar_path
        raise WeightsError(f"The demo CLIP weights for {backbone} are missing: {missing}.", _rebuild_hint())
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        expected = str(sidecar["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"The demo weights sidecar {sidecar_path} is unreadable.", _rebuild_hint()) from exc
    if sha256_file(path) != expected:
        raise WeightsError(
            f"The demo CLIP weights {path} are corrupt (their sha256 differs from {sidecar_path.name}).",
            _rebuild_hint(),
        )
    try:
        state, metadata = read_sparse_state(path)
    except Exception as exc:
        raise WeightsError(f"The demo CLIP weights {path} cannot be read: {exc}.", _rebuild_hint()) from exc
    if metadata.get("backbone") != backbone:
        raise WeightsError(f"{path} holds weights for {metadata.get('backbone')!r}, not {backbone}.", _rebuild_hint())
    _warn_if_stale(sidecar)
    return state


def _warn_if_stale(sidecar: dict[str, Any]) -> None:
    """Warn on loading when the demo world changed after the weights were trained."""
    from sempt_cli.data.demo import generator_hash

    corpus = sidecar.get("corpus") or {}
    trained_on = corpus.get("demo_world_hash")
    if trained_on and trained_on != generator_hash(int(corpus.get("image_size", 48)), 0):
        log.warning(
            "The demo CLIP weights were trained on an older demo world (renderer changed); rebuild them with `%s`.",
            REBUILD_COMMAND,
        )


def load_demo_clip(
    backbone: str,
    device: str | torch.device = "cpu",
    *,
    weights_dir: Path | None = None,
    freeze: bool = True,
) -> LoadedClip:
    """Build a demo backbone and load its shipped weights; `weights_file` is the shipped file (cache identity)."""
    path = demo_weights_path(backbone, weights_dir)
    state = load_demo_state_dict(backbone, weights_dir)
    loaded = load_clip(backbone, None, device="cpu", freeze=freeze)
    load_weights(loaded.model, state, source=str(path))
    loaded.model.to(device)
    return dataclasses.replace(loaded, pretrained=DEMO_TAG, weights_file=path)


# ---------------------------------------------------------------------------------------------------------
# The rebuild command


def _command(args: Any) -> str:
    """The command line that reproduces this run (relative --out as given, defaults left out)."""
    parts = ["python", "-m", "sempt_cli.models.demo_clip", "--out", str(args.out), "--seed", str(args.seed)]
    for flag, value in (
        ("--steps", args.steps),
        ("--batch-size", args.batch_size),
        ("--corpus-size", args.corpus_size),
        ("--only", args.only),
        ("--eval-per-class", args.eval_per_class),
    ):
        if value is not None:
            parts += [flag, str(value)]
    if args.threads != 2:
        parts += ["--threads", str(args.threads)]
    return shlex.join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the demo CLIPs reproducibly, evaluate them zero-shot and write the weights and sidecars."""
    import argparse

    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m sempt_cli.models.demo_clip", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("sempt_cli/models/weights"), help="folder for the files")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the corpus seed stays 0)")
    parser.add_argument("--steps", type=int, default=None, help="override the steps of both recipes")
    parser.add_argument("--batch-size", type=int, default=None, help="override the batch size of both recipes")
    parser.add_argument("--corpus-size", type=int, default=None, help=f"corpus pairs (default {CORPUS_SIZE})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (results may depend on it)")
    parser.add_argument("--only", choices=["teacher", "student"], default=None, help="rebuild one model only")
    parser.add_argument("--eval-per-class", type=int, default=None, help="test images per class (default all 50)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()

    backbones = [b for b in DEMO_BACKBONES if args.only is None or b.endswith(args.only)]
    corpus_size = args.corpus_size or CORPUS_SIZE
    started = time.perf_counter()
    with console.status(f"Rendering the pre-training corpus ({corpus_size} pairs) and the test split"):
        corpus = render_corpus(corpus_size)
        test = demo_test_set(per_class=args.eval_per_class)
    render_seconds = time.perf_counter() - started
    console.print(f"Corpus and test split rendered in {render_seconds:.0f} s.")

    table = Table(title='Zero-shot top-1 (%), demo test split, "a photo of a {name}."')
    for column in ("model", "params", "train s", "base", "novel", "all", "descr. all", "MB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for backbone in backbones:
        recipe = RECIPES[backbone]
        recipe = dataclasses.replace(
            recipe, steps=args.steps or recipe.steps, batch_size=args.batch_size or recipe.batch_size
        )
        with console.status(f"Pre-training {backbone}") as status:

            def show(
                step: int, loss: float, status: Any = status, backbone: str = backbone, n: int = recipe.steps
            ) -> None:
                if step % 10 == 0 or step == n - 1:
                    status.update(f"Pre-training {backbone}: step {step + 1}/{n}, loss {loss:.3f}")

            model, report = pretrain(
                backbone,
                seed=args.seed,
                steps=recipe.steps,
                batch_size=recipe.batch_size,
                corpus_size=corpus_size,
                corpus=corpus,
                lr=recipe.lr,
                weight_decay=recipe.weight_decay,
                warmup=recipe.warmup,
                shift=recipe.shift,
                progress=show,
            )
        path = write_demo_weights(
            model, report, args.out, command=_command(args), extra={"corpus_render_seconds": round(render_seconds, 1)}
        )
        loaded = load_demo_clip(backbone, weights_dir=args.out)  # evaluate exactly what ships (fp16, sparse)
        results = evaluate_demo_clip(loaded, test)
        update_sidecar(backbone, args.out, zero_shot=results)
        name, described = results["by_name"], results["by_descriptions"]
        table.add_row(
            backbone.removeprefix("sempt-demo-"),
            f"{report.parameters / 1e6:.2f}M",
            f"{report.seconds:.0f}",
            *(f"{100 * name[k]:.1f}" for k in ("base", "novel", "all")),
            f"{100 * described['all']:.1f}",
            f"{path.stat().st_size / 1e6:.1f}",
        )
        console.print(f"{backbone}: {report.seconds:.0f} s, loss {report.losses[0]:.2f} -> {report.losses[-1]:.2f}.")
    console.print(table)
    console.print(
        "base = base classes among base, novel = novel among novel (chance 5.0), all = 40-way (chance 2.5); "
        "descr. = classes by their attribute descriptions. Demo numbers say nothing about real benchmarks."
    )
    console.print(f"Total {time.perf_counter() - started:.0f} s; weights in {args.out}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
