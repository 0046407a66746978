"""Does a description fit CLIP's text context once the prompt is added? Checked with CLIP's own BPE tokenizer.

A description is encoded as "{prefix} {body}" (`PromptedTextTower.build_prompts`): the prefix is the
learned-context slots ("a photo of a" or "X X X X", `prompts.text_length` tokens) for `teacher-prompted`
and nothing for `teacher-frozen`; the body is the description with a final period (`description_body`).
With the start and end tokens that must fit in 77 tokens, or the tokenizer silently cuts the description.
Generation checks against the longer (prompted) prefix, so a file fits either encoder; `embed_attributes`
checks again with the teacher's real tokenizer and prompt settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from open_clip.tokenizer import SimpleTokenizer

CONTEXT_LENGTH = 77
SPECIAL_TOKENS = 2  # <start_of_text>, <end_of_text>


@cache
def clip_tokenizer() -> SimpleTokenizer:
    """open_clip's CLIP BPE tokenizer (the one every CLIP/open_clip ViT text tower here uses); imported late
    because it pulls in torch."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def description_body(text: str) -> str:
    """The text encoded for a description: whitespace collapsed, a final period added like "{class}."."""
    body = " ".join(text.split())
    return body if body.endswith((".", "!", "?")) else f"{body}."


def context_prefix(text_depth: int, text_length: int, ctx_init: str | None) -> str:
    """The prefix `PromptedTextTower` puts before every body, from the prompt settings (mirrors its rule)."""
    n_ctx = text_length if text_depth > 0 else 0
    if n_ctx == 0:
        return (ctx_init or "").strip()
    if ctx_init:
        ctx_init = ctx_init.replace("_", " ").strip()
        if n_ctx <= len(clip_tokenizer().encode(ctx_init)):
            return ctx_init
    return " ".join(["X"] * n_ctx)


@dataclass(frozen=True)
class TokenBudget:
    """How many tokens a description may use after `prefix` in a `context_length` context."""

    prefix: str = ""
    context_length: int = CONTEXT_LENGTH

    def tokens(self, text: str) -> int:
        """Tokens the full prompt of `text` needs, start and end tokens included."""
        prompt = f"{self.prefix} {description_body(text)}".strip()
        return len(clip_tokenizer().encode(prompt)) + SPECIAL_TOKENS

    @property
    def prefix_tokens(self) -> int:
        return len(clip_tokenizer().encode(self.prefix)) if self.prefix else 0

    @property
    def limit(self) -> int:
        """Tokens left for the description's body (its final period included)."""
        return self.context_length - SPECIAL_TOKENS - self.prefix_tokens

    def problem(self, text: str) -> str | None:
        """None if `text` fits, else a sentence the LLM (and the user) can act on."""
        needed = self.tokens(text)
        if needed <= self.context_length:
            return None
        body = needed - SPECIAL_TOKENS - self.prefix_tokens
        return f"is {body} CLIP tokens long, {body - self.limit} more than the {self.limit} that fit; shorten it"

    def max_words(self) -> int:
        """A word limit to ask for: about 2 tokens per word leaves room for rare words and punctuation."""
        return max(5, min(20, self.limit // 2))
