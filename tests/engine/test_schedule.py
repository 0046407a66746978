"""LR schedule and GPA weights against the numbers in spec/promptkd-promptsrc.md §2.3–2.4."""

from __future__ import annotations

import pytest

from sempt_cli.engine.schedule import epoch_learning_rate, gaussian_aggregation_weights


@pytest.mark.parametrize(("epoch", "factor"), [(2, 1.0), (3, 0.9938), (11, 0.5782), (20, 0.0245)])
def test_cosine_with_constant_warmup(epoch: int, factor: float) -> None:
    lr = epoch_learning_rate(epoch, base_lr=0.0025, epochs=20, warmup_epochs=1, warmup_lr=1e-5)
    assert lr == pytest.approx(0.0025 * factor, abs=0.0025 * 1e-4)


def test_first_epoch_is_warmup() -> None:
    assert epoch_learning_rate(1, base_lr=0.0025, epochs=20, warmup_epochs=1, warmup_lr=1e-5) == 1e-5


def test_gpa_weights_b2n() -> None:
    w = gaussian_aggregation_weights(20, mean=15, std=1)
    assert sum(w) == pytest.approx(1.0)
    assert w[14] == pytest.approx(0.3989, abs=1e-4)
    assert w[13] == pytest.approx(0.2420, abs=1e-4) and w[15] == pytest.approx(0.2420, abs=1e-4)
    assert w[11] == pytest.approx(0.0044, abs=1e-4) and w[12] == pytest.approx(0.0540, abs=1e-4)
    assert max(w[:10]) < 2e-6


def test_gpa_weights_cross_and_few_shot() -> None:
    cross = gaussian_aggregation_weights(20, mean=6, std=10)
    assert cross[0] == pytest.approx(0.0554, abs=2e-4)
    assert max(cross) == pytest.approx(0.0628, abs=2e-4) and cross.index(max(cross)) == 5
    assert cross[19] == pytest.approx(0.0236, abs=2e-4)
    assert max(gaussian_aggregation_weights(50, mean=45, std=5)) == pytest.approx(0.0923, abs=2e-4)
