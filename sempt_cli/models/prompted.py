"""Deep-prompted CLIP towers (IVLP semantics, spec §1) built around open_clip's own modules.

One implementation of deep prompting that CoOp, VPT, IVLP, PromptSRC, PromptKD, DPT and RESTORE
configure (architecture seam 3). The towers run open_clip's submodules step by step (conv1,
class/positional embeddings, patch dropout, ln_pre, each resblock, ln_post + pooling + proj; token
embedding, positional embedding, each resblock with the causal mask, ln_final, EOT pooling,
text_projection) and only edit the token sequence between them, so no transformer block is copied.

Where prompts go (spec §1; open_clip v3 is batch-first, NLD):

* vision: layer-0 prompts are appended after the patch tokens, get no positional embedding, and pass
  through `ln_pre`; before block i (1 <= i < depth) the last `length` tokens are dropped and block i's
  prompts appended; from block `depth` on, the prompt outputs flow on unchanged. Only CLS is pooled.
* text: prompts occupy positions 1..n (the "X X X X" / ctx_init slots of "{ctx} {class}."), get the
  positional embedding at layer 0, and are replaced before blocks 1 <= i < depth. The sequence keeps its
  length; pooling is at the EOT token (argmax of the ids). With `truncate=True` only the first
  max(EOT)+1 positions are run: under the causal mask nothing after EOT can reach it (spec §6.3).

Extension points, for methods that need more than IVLP:

* `prompts=`: any module `(layer, x) -> tokens | None` replaces the built-in `DeepPrompts`. It is asked
  for every layer; tokens are [n, width] (shared) or [N, n, width] (per image / per class) and go where
  IVLP prompts go (vision: replace the trailing prompt tokens, or append if there are none yet, so a
  source may first supply tokens at block k; text: positions 1..n). `None` leaves the sequence alone.
  This is how DPT's class-aware prompts or MMRL-style projected tokens are fed in from outside.
* `before_block` / `after_block` hooks on `forward_features`: callables `(block_index, x) -> x | None`
  that observe or edit the sequence around every block (RESTORE's per-layer features, insertions at
  other positions). `return_layers=True` collects every block's output without writing a hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer, Transformer, VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sempt_cli.errors import SemptError

PromptSource = Callable[[int, Tensor], Tensor | None]
BlockHook = Callable[[int, Tensor], Tensor | None]
Tokenizer = Callable[..., Tensor]

PROMPT_STD = 0.02


CLASS_CHUNK = 256
"""Classes per text forward; bounds memory for ImageNet-size class lists."""


@dataclass(frozen=True)
class PromptSpec:
    """Prompt sets per tower: `depth` layers (0 = none, 1 = input only, 9 = input + blocks 1..8) of `length`."""

    depth: int = 0
    length: int = 4

    def __post_init__(self) -> None:
        if self.depth < 0 or self.length < 0:
            raise ValueError(f"prompt depth and length must be >= 0, got {self.depth} and {self.length}")
        if self.depth > 0 and self.length == 0:
            raise ValueError("prompts with depth > 0 need length > 0")

    @property
    def enabled(self) -> bool:
        return self.depth > 0

    def num_parameters(self, width: int) -> int:
        return self.depth * self.length * width


@dataclass
class TowerOutput:
    """Everything a forward pass produced; `features` is what open_clip's encode_* would return."""

    features: Tensor  # pooled and projected, unnormalised: [N, embed_dim]
    tokens: Tensor  # the last block's output sequence, before the final LayerNorm: [N, L, width]
    num_prompts: int  # vision: trailing prompt tokens in `tokens`; text: context slots at positions 1..n
    layers: list[Tensor] = field(default_factory=list)  # every block's output if return_layers=True


class DeepPrompts(nn.Module):
    """IVLP prompts: one [length, width] fp32 parameter per layer 0..depth-1, initialised N(0, 0.02²).

    Layer 0 enters at the embedding level, layer i (i >= 1) right before block i. `init` overrides layer 0
    (the text tower's "a photo of a" initialisation).
    """

    def __init__(
        self,
        depth: int,
        length: int,
        width: int,
        *,
        init: Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.length = length
        self.tokens = nn.ParameterList()
        for layer in range(depth):
            value = torch.empty(length, width, dtype=torch.float32, device=device)
            nn.init.normal_(value, std=PROMPT_STD)
            if layer == 0 and init is not None:
                value.copy_(init.detach().to(value))
            self.tokens.append(nn.Parameter(value))

    @property
    def depth(self) -> int:
        return len(self.tokens)

    def forward(self, layer: int, x: Tensor) -> Tensor | None:
        return self.tokens[layer] if layer < len(self.tokens) else None


def _no_prompts(layer: int, x: Tensor) -> Tensor | None:
    return None


def _batched(tokens: Tensor, batch: int, like: Tensor) -> Tensor:
    """Broadcast [n, W] prompts over the batch and cast them to the activation dtype (autocast-safe)."""
    tokens = tokens.to(dtype=like.dtype)
    if tokens.dim() == 2:
        return tokens.unsqueeze(0).expand(batch, -1, -1)
    if tokens.dim() != 3 or tokens.shape[0] not in (1, batch):
        raise ValueError(f"prompt tokens must be [n, W] or [{batch}, n, W], got {tuple(tokens.shape)}")
    return tokens.expand(batch, -1, -1)


def _apply_hooks(hooks: Sequence[BlockHook], index: int, x: Tensor) -> Tensor:
    for hook in hooks:
        result = hook(index, x)
        if result is not None:
            x = result
    return x


def _run_blocks(
    transformer: Transformer,
    x: Tensor,
    *,
    insert: Callable[[int, Tensor], Tensor],
    mask_for: Callable[[int], Tensor | None],
    before: Sequence[BlockHook],
    after: Sequence[BlockHook],
    keep_layers: bool,
) -> tuple[Tensor, list[Tensor]]:
    """Run open_clip's resblocks one by one, letting the tower insert prompts before blocks 1..L-1."""
    batch_first = getattr(transformer, "batch_first", True)
    use_checkpoint = bool(getattr(transformer, "grad_checkpointing", False)) and torch.is_grad_enabled()
    layers: list[Tensor] = []
    for index, block in enumerate(transformer.resblocks):
        if index > 0:
            x = insert(index, x)
        x = _apply_hooks(before, index, x)
        mask = mask_for(x.shape[1])
        y = x if batch_first else x.transpose(0, 1)
        y = checkpoint(block, y, attn_mask=mask, use_reentrant=False) if use_checkpoint else block(y, attn_mask=mask)
        x = y if batch_first else y.transpose(0, 1)
        x = _apply_hooks(after, index, x)
        if keep_layers:
            layers.append(x)
    return x, layers


class _PromptedTower(nn.Module):
    """What both towers share: the prompt source, freezing, and trainable parameters."""

    prompts: nn.Module | None

    def _source(self) -> PromptSource:
        return self.prompts if self.prompts is not None else _no_prompts

    def freeze_backbone(self) -> None:
        """Train only the prompt source; every open_clip weight stays frozen."""
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith("prompts."))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class PromptedVisionTower(_PromptedTower):
    """open_clip's ViT image tower with IVLP deep vision prompts (depth 0 = `visual(images)` exactly)."""

    def __init__(
        self,
        visual: nn.Module,
        spec: PromptSpec | None = None,
        *,
        prompts: nn.Module | None = None,
        freeze_backbone: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise SemptError(
                f"Deep prompting needs an open_clip VisionTransformer image tower, not {type(visual).__name__}.",
                "Use a ViT backbone (ResNet and timm towers are not supported).",
            )
        spec = spec or PromptSpec()
        if spec.depth > len(visual.transformer.resblocks):
            raise SemptError(
                f"Vision prompt depth {spec.depth} exceeds the {len(visual.transformer.resblocks)} blocks "
                "of this backbone."
            )
        self.visual: VisionTransformer = visual
        self.spec = spec
        self.width = int(visual.conv1.out_channels)
        if prompts is None and spec.enabled:
            prompts = DeepPrompts(spec.depth, spec.length, self.width, device=visual.conv1.weight.device)
        self.prompts = prompts
        if freeze_backbone:
            self.freeze_backbone()

    @property
    def num_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    def embed(self, images: Tensor) -> tuple[Tensor, int]:
        """Patch + CLS + positions, layer-0 prompts appended, then ln_pre over everything (spec §1.1)."""
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))  # fp16 weights take fp16 images (official `image.type`)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        tokens = self._source()(0, x)
        num_prompts = 0
        if tokens is not None:
            tokens = _batched(tokens, x.shape[0], x)
            x = torch.cat([x, tokens], dim=1)
            num_prompts = tokens.shape[1]
        return v.ln_pre(x), num_prompts

    def pool(self, x: Tensor, num_prompts: int) -> Tensor:
        """open_clip's own pooling (ln_post, CLS or avg) over the image tokens, then `proj`."""
        if num_prompts:
            x = x[:, : x.shape[1] - num_prompts]
        pooled, _ = self.visual._pool(x)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled

    def forward_features(
        self,
        images: Tensor,
        *,
        before_block: Sequence[BlockHook] = (),
        after_block: Sequence[BlockHook] = (),
        return_layers: bool = False,
    ) -> TowerOutput:
        source = self._source()
        x, num_prompts = self.embed(images)
        state = {"n": num_prompts}

        def insert(index: int, x: Tensor) -> Tensor:
            tokens = source(index, x)
            if tokens is None:
                return x
            tokens = _batched(tokens, x.shape[0], x)
            x = torch.cat([x[:, : x.shape[1] - state["n"]], tokens], dim=1)
            state["n"] = tokens.shape[1]
            return x

        x, layers = _run_blocks(
            self.visual.transformer,
            x,
            insert=insert,
            mask_for=lambda length: None,
            before=before_block,
            after=after_block,
            keep_layers=return_layers,
        )
        return TowerOutput(self.pool(x, state["n"]), x, state["n"], layers)

    def forward(self, images: Tensor) -> Tensor:
        """Unnormalised image features, like `model.encode_image(images)`."""
        return self.forward_features(images).features


class ClassPrompts(nn.Module):
    """Tokenised prompts for a list of texts, with the frozen token embeddings cached (buffers, not saved).

    Only the first `length` = max(EOT)+1 embeddings are kept: that is all a truncated forward reads; the
    untruncated path looks the padding up again.
    """

    token_ids: Tensor
    eot_index: Tensor
    embeddings: Tensor

    def __init__(
        self,
        token_ids: Tensor,
        eot_index: Tensor,
        embeddings: Tensor,
        n_ctx: int,
        texts: Sequence[str] | None = None,
        eot: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("eot_index", eot_index, persistent=False)
        self.register_buffer("embeddings", embeddings, persistent=False)
        self.n_ctx = n_ctx
        self.texts = list(texts) if texts is not None else None
        # the EOT positions on the host too, so that `select` (every text forward) never waits for the device
        self._eot = list(eot) if eot is not None else [int(i) for i in eot_index.tolist()]
        self.length = max(self._eot) + 1 if self._eot else 1

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    def select(self, index: Tensor | slice | Sequence[int]) -> ClassPrompts:
        """A subset of the prompts (e.g. a chunk of classes), sharing nothing mutable with this one."""
        if isinstance(index, slice):  # views, no index tensor: a chunk costs no host-device traffic
            positions = list(range(len(self)))[index]
            idx: Tensor | slice = slice(positions[0], positions[-1] + 1) if positions and index.step in (None, 1) \
                else torch.as_tensor(positions, dtype=torch.long, device=self.token_ids.device)
        else:
            positions = [int(i) for i in (index.tolist() if isinstance(index, Tensor) else index)]
            idx = torch.as_tensor(positions, dtype=torch.long, device=self.token_ids.device)
        texts = [self.texts[i] for i in positions] if self.texts is not None else None
        length = max(self._eot[i] for i in positions) + 1 if positions else 1
        token_ids, eot_index, embeddings = self.token_ids[idx], self.eot_index[idx], self.embeddings[idx, :length]
        if isinstance(idx, slice):  # views of this one's buffers: copy them
            token_ids, eot_index, embeddings = token_ids.clone(), eot_index.clone(), embeddings.clone()
        return ClassPrompts(token_ids, eot_index, embeddings, self.n_ctx, texts, eot=[self._eot[i] for i in positions])

    def chunks(self, size: int | None = None) -> Iterator[ClassPrompts]:
        """The prompts in consecutive chunks of `size` classes (default `CLASS_CHUNK`): how every text encoder
        bounds its memory for ImageNet-size class lists."""
        size = size or CLASS_CHUNK
        if len(self) <= size:  # one chunk: these very prompts (no copy; encoders only read them)
            yield self
            return
        for start in range(0, len(self), size):
            yield self.select(slice(start, start + size))

    def embeddings_upto(self, length: int, token_embedding: nn.Module) -> Tensor:
        if length <= self.embeddings.shape[1]:
            return self.embeddings[:, :length]
        with torch.no_grad():
            rest = token_embedding(self.token_ids[:, self.embeddings.shape[1] : length])
        return torch.cat([self.embeddings, rest.to(self.embeddings.dtype)], dim=1)


@lru_cache(maxsize=4)
def _default_tokenizer(context_length: int) -> SimpleTokenizer:
    return SimpleTokenizer(context_length=context_length)


def _causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """open_clip's additive causal mask: -inf above the diagonal."""
    return torch.full((length, length), float("-inf"), device=device).triu_(1)


class PromptedTextTower(_PromptedTower):
    """open_clip's text tower with IVLP deep text prompts; works on `CLIP` and `CustomTextCLIP` models.

    Prompts per class are "{ctx} {classname}." where ctx is `ctx_init` when the layer-0 prompts are
    initialised from its token embeddings (length <= its token count) and "X X .. X" otherwise (spec §1.2).
    With depth 0 and no `prompts`, nothing is learned and `forward(token_ids)` equals `encode_text`.
    """

    causal_mask: Tensor

    def __init__(
        self,
        clip_model: nn.Module,
        spec: PromptSpec | None = None,
        ctx_init: str | None = "a photo of a",
        *,
        tokenizer: Tokenizer | None = None,
        truncate: bool = True,
        prompts: nn.Module | None = None,
        freeze_backbone: bool = True,
    ) -> None:
        super().__init__()
        spec = spec or PromptSpec()
        text = _text_tower_parts(clip_model)
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.pool_type = text.pool_type
        self.eos_id = text.eos_id
        self.causal = text.causal
        self.context_length = int(self.positional_embedding.shape[0])
        if spec.depth > len(self.transformer.resblocks):
            raise SemptError(
                f"Text prompt depth {spec.depth} exceeds the {len(self.transformer.resblocks)} blocks of this backbone."
            )
        self.spec = spec
        self.width = int(self.token_embedding.weight.shape[1])
        self.truncate = truncate and self.causal  # without a causal mask, later tokens reach EOT
        self.tokenizer = tokenizer or _default_tokenizer(self.context_length)
        device = self.token_embedding.weight.device
        self.register_buffer("causal_mask", _causal_mask(self.context_length, device), persistent=False)

        self.n_ctx = spec.length if (spec.enabled or prompts is not None) else 0
        self.prefix, init = self._context_prefix(ctx_init)
        # the ctx_init embeddings, for an external prompt source that wants the same initialisation
        self.ctx_init_vectors: Tensor | None = init
        if prompts is None and spec.enabled:
            prompts = DeepPrompts(spec.depth, spec.length, self.width, init=init, device=device)
        self.prompts = prompts
        if freeze_backbone:
            self.freeze_backbone()

    @property
    def num_layers(self) -> int:
        return len(self.transformer.resblocks)

    def _context_prefix(self, ctx_init: str | None) -> tuple[str, Tensor | None]:
        """The prompt prefix and the layer-0 initialisation it implies (spec §1.2)."""
        if self.n_ctx == 0:
            return (ctx_init or "").strip(), None
        if ctx_init:
            ctx_init = ctx_init.replace("_", " ").strip()
            ids = self.tokenizer([ctx_init]).to(self.token_embedding.weight.device)
            n_words = int(self._pool_index(ids)[0]) - 1
            if self.n_ctx <= n_words:
                with torch.no_grad():
                    init = self.token_embedding(ids[0, 1 : 1 + self.n_ctx]).float()
                return ctx_init, init
        return " ".join(["X"] * self.n_ctx), None

    def _pool_index(self, token_ids: Tensor) -> Tensor:
        if self.pool_type == "eos":
            assert self.eos_id is not None  # _text_tower_parts refuses 'eos' pooling without an id
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        return token_ids.argmax(dim=-1)

    def build_prompts(self, bodies: Sequence[str]) -> ClassPrompts:
        """Prompts "{prefix} {body}" for arbitrary bodies (class names, descriptions, templates' fillers)."""
        texts = [f"{self.prefix} {body}".strip() for body in bodies]
        return self.prompts_from_ids(self.tokenizer(texts), texts)

    def class_prompts(self, classnames: Sequence[str]) -> ClassPrompts:
        """Prompts "{ctx} {classname}." with "_" in class names read as spaces, as the official code does."""
        return self.build_prompts([f"{name.replace('_', ' ')}." for name in classnames])

    def prompts_from_ids(self, token_ids: Tensor, texts: Sequence[str] | None = None) -> ClassPrompts:
        token_ids = token_ids.to(self.token_embedding.weight.device, torch.long)
        eot = self._pool_index(token_ids)
        length = int(eot.max()) + 1 if eot.numel() else 1
        with torch.no_grad():
            embeddings = self.token_embedding(token_ids[:, :length])
        return ClassPrompts(token_ids, eot, embeddings, self.n_ctx, texts)

    def _replace_context(self, x: Tensor, tokens: Tensor, n_ctx: int) -> Tensor:
        tokens = _batched(tokens, x.shape[0], x)
        if tokens.shape[1] != n_ctx:
            raise ValueError(f"got {tokens.shape[1]} text prompt tokens for {n_ctx} context slots")
        return torch.cat([x[:, :1], tokens, x[:, 1 + n_ctx :]], dim=1)

    def _mask(self, length: int) -> Tensor | None:
        if not self.causal:
            return None
        if length <= self.context_length:
            return self.causal_mask[:length, :length]
        return _causal_mask(length, self.causal_mask.device)  # a hook lengthened the sequence

    def forward_features(
        self,
        prompts: ClassPrompts | Tensor,
        *,
        before_block: Sequence[BlockHook] = (),
        after_block: Sequence[BlockHook] = (),
        return_layers: bool = False,
    ) -> TowerOutput:
        if isinstance(prompts, Tensor):
            prompts = self.prompts_from_ids(prompts)
        source = self._source()
        n_ctx = prompts.n_ctx
        length = prompts.length if self.truncate else prompts.token_ids.shape[1]
        cast_dtype = self.transformer.get_cast_dtype()
        x = prompts.embeddings_upto(length, self.token_embedding).to(cast_dtype)
        tokens = source(0, x)
        if tokens is not None:
            x = self._replace_context(x, tokens, n_ctx)
        x = x + self.positional_embedding[:length].to(cast_dtype)

        def insert(index: int, x: Tensor) -> Tensor:
            tokens = source(index, x)
            return x if tokens is None else self._replace_context(x, tokens, n_ctx)

        x, layers = _run_blocks(
            self.transformer,
            x,
            insert=insert,
            mask_for=self._mask,
            before=before_block,
            after=after_block,
            keep_layers=return_layers,
        )
        return TowerOutput(self.pool(x, prompts.eot_index), x, n_ctx, layers)

    def pool(self, x: Tensor, index: Tensor) -> Tensor:
        """ln_final at the EOT positions, then text_projection (LayerNorm is per token, so pooling first is exact)."""
        pooled = self.ln_final(x[torch.arange(x.shape[0], device=x.device), index])
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        if self.text_projection is not None:
            return pooled @ self.text_projection
        return pooled

    def forward(self, prompts: ClassPrompts | Tensor) -> Tensor:
        """Unnormalised text features, like `model.encode_text(token_ids)` at depth 0."""
        return self.forward_features(prompts).features

    def encode(self, prompts: ClassPrompts) -> Tensor:
        """Unnormalised text features of any number of classes, encoded in class chunks."""
        return torch.cat([self(chunk) for chunk in prompts.chunks()])


@dataclass(frozen=True)
class _TextParts:
    """The open_clip modules and settings a `PromptedTextTower` runs."""

    token_embedding: nn.Embedding
    positional_embedding: nn.Parameter
    transformer: Transformer
    ln_final: nn.Module
    text_projection: nn.Linear | nn.Parameter | None
    pool_type: str
    eos_id: int | None
    causal: bool


def _text_tower_parts(model: nn.Module) -> _TextParts:
    """The text modules of an open_clip `CLIP` (on the model) or `CustomTextCLIP` (`model.text`)."""
    text = getattr(model, "text", None)
    if text is not None:
        if not isinstance(text, TextTransformer):
            raise SemptError(f"Deep text prompting needs open_clip's own text transformer, not {type(text).__name__}.")
        if text.cls_emb is not None or getattr(text, "use_pad_mask", False):
            raise SemptError("Text towers with a class token or padding mask (CoCa-style) are not supported.")
        owner, mask, pool_type, eos_id = text, text.attn_mask, text.pool_type, text.eos_id
    elif hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        owner, mask = model, getattr(model, "attn_mask", None)
        pool_type, eos_id = getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
    else:
        raise SemptError(f"{type(model).__name__} has no open_clip text tower.")
    if pool_type not in ("argmax", "eos"):
        raise SemptError(f"Text pooling {pool_type!r} is not supported; EOT pooling ('argmax'/'eos') is.")
    if pool_type == "eos" and eos_id is None:
        raise SemptError("This text tower pools at an EOS token but does not say which token that is (eos_id).")
    return _TextParts(
        token_embedding=owner.token_embedding,
        positional_embedding=owner.positional_embedding,
        transformer=owner.transformer,
        ln_final=owner.ln_final,
        text_projection=owner.text_projection,
        pool_type=pool_type,
        eos_id=eos_id,
        causal=mask is not None,
    )
