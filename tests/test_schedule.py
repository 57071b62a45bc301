import math

import pytest

from utils.schedule import cosine_lr, warmup_lr

LR, META = 2e-4, 25


def test_cosine_endpoints_and_midpoint():
    eta_min = LR * 1e-3
    assert cosine_lr(LR, 0, META) == pytest.approx(LR)
    assert cosine_lr(LR, META, META) == pytest.approx(eta_min)
    assert cosine_lr(LR, 10, 20) == pytest.approx(eta_min + (LR - eta_min) / 2)
    # e = 5 of 25: hand-computed eta_min + (lr - eta_min) * (1 + cos(pi/5)) / 2
    assert cosine_lr(LR, 5, META) == pytest.approx(2e-7 + (2e-4 - 2e-7) * (1 + 0.8090169943749475) / 2)


def test_warmup_runs_linearly_from_lr_over_10_to_the_epoch_2_cosine():
    steps = 8 * 6  # sub_epochs * image batches
    target = 2e-7 + (2e-4 - 2e-7) * (1 + math.cos(math.pi * 2 / META)) / 2
    assert warmup_lr(LR, META, 0, 0, steps) == pytest.approx(2e-5)
    # halfway through the 2 * steps warm-up steps: the midpoint
    assert warmup_lr(LR, META, 1, 0, steps) == pytest.approx((2e-5 + target) / 2)
    last = warmup_lr(LR, META, 1, steps - 1, steps)
    assert last == pytest.approx(2e-5 + (2 * steps - 1) / (2 * steps) * (target - 2e-5))
    assert warmup_lr(LR, META, 2, 0, steps) is None  # cosine alone from epoch 2
