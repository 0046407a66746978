"""PromptSRC: the 60-template frozen text targets are a training-only input, built lazily (issue #19, item 14)."""

from __future__ import annotations

import pytest
import torch

from sempt_cli.methods import promptsrc
from sempt_cli.methods.promptsrc import PromptSRC
from sempt_cli.models import LoadedClip
from sempt_cli.protocol import Batch
from sempt_cli.settings import load_settings


def test_frozen_text_targets_are_encoded_on_first_training_use_only(
    demo_student: LoadedClip, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = promptsrc.template_ensemble

    def counting(clip, classnames, templates):  # type: ignore[no-untyped-def]
        calls.append(len(templates))
        return real(clip, classnames, templates)

    monkeypatch.setattr(promptsrc, "template_ensemble", counting)
    settings = load_settings({"prompts.vision_depth": 2, "prompts.text_depth": 2}, env={}).settings
    method = PromptSRC(demo_student, ["cat", "dog"], settings)
    method.eval()
    with torch.no_grad():  # what eval / embed / distill do with a loaded teacher
        method.class_embeddings(["cat", "dog", "bird"])
        method.image_embeddings(torch.randn(2, 3, 48, 48))
    assert calls == []
    method.train()
    batch = Batch(torch.randn(2, 3, 48, 48), torch.tensor([0, 1]), torch.tensor([0, 1]))
    first = method.training_loss(batch)
    method.training_loss(batch)
    assert calls == [len(promptsrc.IMAGENET_TEMPLATES)]  # once, then kept
    assert "text" in first.parts and torch.isfinite(first.total)
