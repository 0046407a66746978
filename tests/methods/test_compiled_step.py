"""`train.compile` on real methods (demo-size CLIP, random weights): the compiled step of PromptSRC (train-teacher),
PromptKD, SemPT on PromptKD, MMRL, DPT, RESTORE, CoCoOp, MaPLe and MMA trains like the eager step, and no method
reads a loss value back inside its step (a `float(tensor)` would be a host synchronisation per step and a graph
break); the methods in `WITHOUT_GRAPH_BREAKS` compile with none at all after the first step. torch.compile runs with
the "aot_eager" backend (graph capture and AOTAutograd without a C++ compiler)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from sempt_cli.engine import step as step_module
from sempt_cli.engine.step import compile_step
from sempt_cli.engine.trainer import _LossModule
from sempt_cli.methods.cocoop import CoCoOp
from sempt_cli.methods.dpt import DPT
from sempt_cli.methods.maple import MaPLe
from sempt_cli.methods.mma import MMA
from sempt_cli.methods.mmrl import MMRL
from sempt_cli.methods.promptkd import PromptKD, TeacherSignals
from sempt_cli.methods.promptsrc import PromptSRC
from sempt_cli.methods.restore import Restore
from sempt_cli.methods.sempt import AttributeBank, SemPT
from sempt_cli.models import DEMO_STUDENT, LoadedClip
from sempt_cli.protocol import Batch, Method
from sempt_cli.settings import SemptHyperParameters, load_settings

CLASSES = [f"class{i}" for i in range(5)]
TEACHER_DIM = 24


def promptsrc(clip: LoadedClip) -> Method:
    settings = load_settings({"model.backbone": DEMO_STUDENT, "prompts.vision_depth": 2, "prompts.text_depth": 2},
                             env={}).settings
    return PromptSRC(clip, CLASSES, settings)


def _signals() -> TeacherSignals:
    generator = torch.Generator().manual_seed(7)
    vectors = F.normalize(torch.randn(len(CLASSES), TEACHER_DIM, generator=generator), dim=-1)
    images = F.normalize(torch.randn(16, TEACHER_DIM, generator=generator), dim=-1)
    return TeacherSignals(lambda: vectors, lambda batch: images[batch.indices])


def promptkd(clip: LoadedClip) -> Method:
    settings = load_settings({"model.backbone": DEMO_STUDENT, "prompts.vision_depth": 2}, env={}).settings
    return PromptKD(clip, CLASSES, settings, teacher=_signals())


def sempt(clip: LoadedClip) -> Method:
    base = promptkd(clip)
    generator = torch.Generator().manual_seed(8)
    bank = AttributeBank(CLASSES, F.normalize(torch.randn(len(CLASSES), 4, TEACHER_DIM, generator=generator), dim=-1))
    return SemPT(base, SemptHyperParameters(num_descriptions=4), bank, ())


def mmrl(clip: LoadedClip) -> Method:
    return MMRL(clip, CLASSES, load_settings({"model.backbone": DEMO_STUDENT, "mmrl.start_layer": 2}, env={}).settings)


def dpt(clip: LoadedClip) -> Method:
    """Full DPT (class-aware visual prompts and the K-way head) without the warm-up, so every loss term runs."""
    settings = load_settings({"model.backbone": DEMO_STUDENT, "prompts.vision_depth": 2, "prompts.vision_length": 3,
                              "prompts.text_depth": 1, "prompts.text_length": 4, "dpt.guidance_epochs": 0},
                             env={}).settings
    return DPT(clip, CLASSES, settings)


def restore(clip: LoadedClip) -> Method:
    settings = load_settings({"model.backbone": DEMO_STUDENT, "prompts.vision_depth": 2, "prompts.text_depth": 2},
                             env={}).settings
    return Restore(clip, CLASSES, settings)


def cocoop(clip: LoadedClip) -> Method:
    """CoCoOp's per-image text forwards (its meta-net shifts the context of every image)."""
    return CoCoOp(clip, CLASSES, load_settings({"model.backbone": DEMO_STUDENT}, env={}).settings)


def maple(clip: LoadedClip) -> Method:
    """The towers read MaPLe's prompts through a bound method of the prompt learner: torch.compile traces it."""
    geometry = {"prompts.vision_depth": 3, "prompts.text_depth": 3, "prompts.vision_length": 2,
                "prompts.text_length": 2}
    return MaPLe(clip, CLASSES, load_settings({"model.backbone": DEMO_STUDENT, **geometry}, env={}).settings)


def mma(clip: LoadedClip) -> Method:
    """MMA's gradient-scale function and block hooks."""
    values = {"model.backbone": DEMO_STUDENT, "mma.start_layer": 2, "mma.end_layer": 3, "mma.scale": 0.01}
    return MMA(clip, CLASSES, load_settings(values, env={}).settings)


BUILDERS = [promptsrc, promptkd, sempt, mmrl, dpt, restore, cocoop, maple, mma]
WITHOUT_GRAPH_BREAKS = {mma}
"""Methods whose compiled step has no graph break at all after the first step (CUDA's default step mode)."""


def _train(method: Method, compiled: bool, steps: int = 3) -> list[float]:
    module = compile_step(_LossModule(method), "compile" if compiled else "off")
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    losses = []
    method.train()
    for _ in range(steps):
        batch = Batch(torch.randn(4, 3, 48, 48, generator=generator), torch.tensor([0, 1, 2, 3]),
                      torch.tensor([0, 5, 9, 12]), epoch=1)
        output = module(batch)
        output.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(output.total.detach()))
        if len(losses) == 1:  # the first step may do one-off work (PromptSRC encodes its frozen targets)
            counters.clear()
        assert all(isinstance(v, torch.Tensor) for v in output.parts.values()), "parts must stay on the device"
    return losses


@pytest.mark.parametrize("build", BUILDERS, ids=[build.__name__ for build in BUILDERS])
def test_compiled_step_trains_like_eager(demo_student: LoadedClip, build: Callable[[LoadedClip], Method],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_module, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    torch.manual_seed(11)
    eager = build(copy.deepcopy(demo_student))
    torch.manual_seed(11)
    compiled = build(copy.deepcopy(demo_student))
    eager_losses, compiled_losses = _train(eager, False), _train(compiled, True)
    assert eager_losses[0] != eager_losses[-1]  # the steps did train
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-5)
    want = {k: v.detach() for k, v in eager.trainable_state().items()}
    for name, value in compiled.trainable_state().items():
        torch.testing.assert_close(value.detach(), want[name], rtol=1e-4, atol=1e-5, msg=name)
    reads = [reason for reason in counters["graph_break"] if "item()" in reason or "__float__" in reason]
    assert not reads, reads  # a value read back inside the step, after the first
    if build in WITHOUT_GRAPH_BREAKS:
        assert not counters["graph_break"], dict(counters["graph_break"])
