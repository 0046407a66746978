"""The seam for class embeddings that depend on the image (`Method.class_side_needs_images`): the protocol's
logits and classifier score per-image class embeddings [B, C, D] row by row, and SemPT's factorised FE, its
training loss, hybrid classifier and calibration logits work with a per-image T_lbl."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sempt_cli.errors import SemptError
from sempt_cli.methods.sempt import (
    AttributeBank,
    AttributeFusion,
    SemPT,
    enhanced_embeddings_naive,
    enhanced_logits,
)
from sempt_cli.protocol import Batch, LossOutput, Method, TrainingForward
from sempt_cli.settings import SemptHyperParameters

DIM = 8
CLASSES = [f"class {i}" for i in range(6)]


def unit(*shape: int) -> Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


class Shifted(Method):
    """A toy method whose class embeddings are a learned table shifted by a function of the image."""

    name = "shifted-toy"
    class_side_needs_images = True

    def __init__(self, train_classnames: Sequence[str]) -> None:
        super().__init__(train_classnames)
        self.encoder = nn.Linear(12, DIM)
        self.table = nn.Parameter(torch.randn(len(CLASSES), DIM))
        self.shift = nn.Linear(DIM, DIM)

    def image_embeddings(self, images: Tensor) -> Tensor:
        return F.normalize(self.encoder(images), dim=-1)

    def class_embeddings(self, classnames: Sequence[str]) -> Tensor:
        raise SemptError("The toy's class embeddings depend on the image.")

    def class_embeddings_for(self, image_embeddings: Tensor, classnames: Sequence[str]) -> Tensor:
        rows = self.table[[CLASSES.index(name) for name in classnames]]
        return F.normalize(rows[None] + self.shift(image_embeddings)[:, None], dim=-1)

    def class_embedding_dim(self) -> int:
        return DIM

    def training_forward(self, batch: Batch) -> TrainingForward:
        image = self.image_embeddings(batch.images)

        def cross_entropy(logits: Tensor) -> LossOutput:
            ce = F.cross_entropy(logits, batch.labels)
            return LossOutput(ce, {"ce": ce.detach()})

        return TrainingForward(image, self.class_embeddings_for(image, self.train_classnames), cross_entropy)


def wrapped(seen: Sequence[str], **hyper: object) -> tuple[SemPT, Shifted]:
    base = Shifted(seen)
    bank = AttributeBank(list(CLASSES), unit(len(CLASSES), 4, DIM))
    settings = SemptHyperParameters(**{"top_k": 2, "tau_sa": 0.05, "alpha": 0.6, "beta": 0.5, **hyper})
    return SemPT(base, settings, bank, seen), base


def per_image_naive(image: Tensor, labels: Tensor, attributes: Tensor, fusion: AttributeFusion, alpha: float,
                    top_k: int, tau: float, scale: float) -> Tensor:
    """The formula as written, one image at a time against that image's own T_lbl."""
    rows = []
    for b in range(image.shape[0]):
        enhanced = enhanced_embeddings_naive(image[b : b + 1], labels[b], attributes, fusion, alpha, top_k, tau)
        rows.append(scale * torch.einsum("bd,bnd->bn", image[b : b + 1], enhanced))
    return torch.cat(rows)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
@pytest.mark.parametrize("chunk_elements", [1 << 24, 40])
def test_chunked_factorised_logits_with_per_image_labels_equal_the_naive_formula_per_image(
    kind: str, chunk_elements: int
) -> None:
    image, labels, attributes = unit(3, DIM), unit(3, 5, DIM), unit(5, 4, DIM)
    fusion = AttributeFusion(DIM, kind)
    expected = per_image_naive(image, labels, attributes, fusion, 0.3, 2, 0.01, 50.0)
    got = enhanced_logits(image, labels, attributes, fusion, alpha=0.3, top_k=2, tau=0.01, scale=50.0,
                          chunk_elements=chunk_elements)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    shared = enhanced_logits(image, labels[0], attributes, fusion, alpha=0.3, top_k=2, tau=0.01, scale=50.0)
    assert not torch.allclose(got, shared)  # each image was scored against its own labels


def test_per_image_gradients_survive_checkpointed_chunks() -> None:
    image, attributes = unit(2, DIM), unit(5, 4, DIM)
    labels = unit(2, 5, DIM).requires_grad_()
    fusion = AttributeFusion(DIM)
    per_image_naive(image, labels, attributes, fusion, 0.5, 2, 0.1, 10.0).square().sum().backward()
    expected = [labels.grad.clone(), *(p.grad.clone() for p in fusion.parameters())]
    labels.grad = None
    fusion.zero_grad()
    enhanced_logits(image, labels, attributes, fusion, alpha=0.5, top_k=2, tau=0.1, scale=10.0,
                    chunk_elements=2 * DIM * 2).square().sum().backward()  # 2 classes per chunk: recomputed
    for got, want in zip([labels.grad, *(p.grad for p in fusion.parameters())], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_protocol_scores_per_image_class_embeddings_row_by_row() -> None:
    method = Shifted(CLASSES)
    image = method.image_embeddings(torch.randn(3, 12))
    per_image = method.class_embeddings_for(image, CLASSES)
    expected = torch.stack([method.logits(image[b : b + 1], per_image[b])[0] for b in range(3)])
    torch.testing.assert_close(method.logits(image, per_image), expected)
    torch.testing.assert_close(method.classifier(CLASSES[2:])(image), expected[:, 2:])
    assert method.classifier(CLASSES)(image).shape == (3, len(CLASSES))


def test_sempt_on_per_image_labels_trains_scores_and_calibrates() -> None:
    sempt, base = wrapped(CLASSES[:3])
    assert sempt.class_side_needs_images and sempt.class_embedding_dim() == DIM
    batch = Batch(torch.randn(4, 12), torch.tensor([0, 1, 2, 1]), torch.arange(4))
    loss = sempt.training_loss(batch)
    assert set(loss.parts) == {"ce_lbl", "ce_enh"} and torch.isfinite(loss.total)
    loss.total.backward()
    for parameter in (base.table, base.shift.weight, sempt.fusion.fc1.weight):
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
    with torch.no_grad():
        image = sempt.image_embeddings(torch.randn(3, 12))
        got = sempt.classifier(CLASSES)(image)
        labels = base.class_embeddings_for(image, CLASSES)
        plain = base.logits(image, labels)
        enhanced = per_image_naive(image, labels, sempt.attributes.vectors, sempt.fusion, 0.6, 2, 0.05,
                                   float(sempt.logit_scale()))
        torch.testing.assert_close(got[:, :3], plain[:, :3])  # seen: the method's own rule
        torch.testing.assert_close(got[:, 3:], enhanced[:, 3:], rtol=1e-5, atol=1e-4)  # unseen: T_enh per image
        reference, calibration = sempt.calibration_logits(image, CLASSES)
        torch.testing.assert_close(reference, plain[:, 3:])
        torch.testing.assert_close(calibration, enhanced[:, 3:], rtol=1e-5, atol=1e-4)


def test_an_image_free_class_embedding_is_refused_in_one_sentence() -> None:
    sempt, _ = wrapped(CLASSES[:3])
    with pytest.raises(SemptError, match="depend on the image"):
        sempt.class_embeddings(CLASSES)
