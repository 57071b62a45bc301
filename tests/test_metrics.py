import numpy as np
import pytest

from utils.errors import CflowError
from utils.metrics import aupro, aupro_direct, detection_auroc, gt_regions, localization_auroc, pro_fpr_curve


def test_aupro_solved_by_hand():
    # One 1x10 image: pixels 0-1 are one defect region (area 2), 8 negatives.
    # max 1, min 0, so th_k = 1 - k/1000. Pixel 0 (1.0) is positive from k=1, the
    # negative 0.7495 from k=251, pixel 1 (0.4995) from k=501; the other negatives never.
    # FPR in {0, 1/8} <= 0.3 everywhere, rescaled to {0, 1}; PRO steps 0 -> 0.5 -> 1.
    # The only x-move is k=250 -> 251 at PRO 0.5, so the area is exactly 0.5.
    maps = np.zeros((1, 1, 10))
    maps[0, 0, :4] = [1.0, 0.4995, 0.7495, 0.0]
    masks = np.zeros((1, 1, 10), bool)
    masks[0, 0, :2] = True
    pros, fprs, ths = pro_fpr_curve(masks, maps)
    assert pros[0] == 0 and pros[250] == 0.5 and pros[500] == 0.5 and pros[501] == 1.0
    assert fprs[250] == 0 and fprs[251] == 0.125 and fprs[-1] == 0.125
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)
    assert aupro_direct(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_pro_counts_the_filled_footprint_and_8_connectivity():
    masks = np.zeros((1, 7, 7), bool)
    masks[0, 1:4, 1:4] = True
    masks[0, 2, 2] = False           # a ring of area 8 around a hole
    masks[0, 5, 5] = masks[0, 6, 6] = True  # diagonal neighbours: one region
    regions = gt_regions(masks)
    assert [area for *_, area in regions] == [8, 2]
    maps = np.zeros((1, 7, 7))
    maps[0, 2, 2] = 1.0   # only the hole is hot
    maps[0, 0, 0] = 0.5   # so the min-max range is not degenerate below
    pros, fprs, _ = pro_fpr_curve(masks, maps)
    # at k=1 only the hole pixel is positive: it counts for the ring (1/8) and as a false positive
    assert pros[1] == pytest.approx((1 / 8 + 0) / 2)
    assert fprs[1] == pytest.approx(1 / (49 - 10))


@pytest.mark.parametrize('seed', range(4))
def test_fast_aupro_equals_the_direct_definition(seed):
    rng = np.random.default_rng(seed)
    n, size = 5, 48
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        for _ in range(rng.integers(0, 4)):
            r, c = rng.integers(0, size - 8, 2)
            h, w = rng.integers(2, 9, 2)
            masks[i, r:r + h, c:c + w] = True
    masks[0, 10:20, 10:20] = True
    masks[0, 13:16, 13:16] = False  # a hole
    maps = rng.random((n, size, size)) + masks * rng.uniform(0.1, 1.0)
    if seed % 2:
        maps = np.round(maps, 2)  # many ties on threshold-free values
    assert abs(aupro(masks, maps) - aupro_direct(masks, maps)) <= 1e-6


def pairwise_auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic: P(pos > neg) + P(pos == neg) / 2, over every pair."""
    greater = (positive[:, None] > negative[None, :]).sum()
    equal = (positive[:, None] == negative[None, :]).sum()
    return (greater + 0.5 * equal) / (positive.size * negative.size)


def test_aurocs_by_hand_and_by_counting_pairs():
    # 2 x 2 pairs: (0.35 vs 0.1) yes, (0.35 vs 0.4) no, 0.8 beats both -> 3/4
    assert detection_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # one tie counts a half: pairs (0.5 vs 0.5) tie, (0.9 vs 0.5) yes -> 1.5/2
    assert detection_auroc(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9])) == pytest.approx(0.75)
    masks = np.array([[[True, True, False], [False, False, False]]])
    maps = np.array([[[0.9, 0.2, 0.1], [0.3, 0.2, 0.3]]])
    # positives 0.9, 0.2; negatives 0.1, 0.3, 0.2, 0.3: 0.9 beats all 4, 0.2 beats 0.1 and ties 0.2
    assert localization_auroc(masks, maps) == pytest.approx((4 + 1 + 0.5) / 8)
    rng = np.random.default_rng(0)
    masks = rng.random((3, 8, 8)) > 0.8
    maps = np.round(rng.random((3, 8, 8)) + masks, 1)  # many ties
    assert localization_auroc(masks, maps) == pytest.approx(pairwise_auroc(maps[masks], maps[~masks]), abs=1e-12)


def test_metrics_refuse_one_class_test_sets():
    with pytest.raises(CflowError, match='both good and defective'):
        detection_auroc(np.zeros(4), np.arange(4.0))
    with pytest.raises(CflowError, match='no defect pixel'):
        localization_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
