"""Detection AUROC, localization AUROC and AUPRO, as the published code defines them.

AUPRO (per-region overlap, Bergmann et al.), as published:
    thresholds th_k = max - k * (max - min) / 1000,  k = 0..999; a pixel is positive if map > th_k
    PRO_k = mean over every connected ground-truth region r (8-connectivity, all images) of
            |positive pixels inside r's hole-filled footprint| / area(r)
    FPR_k = |positive pixels among ground-truth negatives| / |ground-truth negatives|
    AUPRO = trapezoid area of PRO_k over the FPR_k <= 0.3, those FPRs min-max rescaled to [0, 1].

:func:`aupro` computes every PRO_k and FPR_k in one pass over the pixels: the step at
which a pixel turns positive is found by binary search among the same float64
thresholds, and counts per step are cumulative histograms. It is exact, not an
approximation; :func:`aupro_direct` is the definition written out (1000 thresholds,
one comparison of every map each), kept as the reference the tests compare against.
"""
import warnings
from typing import List, Tuple

import numpy as np
from skimage.measure import label, regionprops
from sklearn.metrics import auc, roc_auc_score

from utils.errors import CflowError

AUPRO_STEPS = 1000
AUPRO_MAX_FPR = 0.3


def require_both_classes(labels) -> np.ndarray:
    """0/1 image labels as bools, or an error unless good and defective images are both there."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise CflowError('the test set needs both good and defective images for AUROC; '
                         f'it has {labels.sum()} defective of {labels.size}')
    return labels


def detection_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level AUROC of anomaly scores against 0/1 labels."""
    return float(roc_auc_score(require_both_classes(labels), scores))


def localization_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel-level AUROC of anomaly maps against ground-truth masks (N x H x W)."""
    masks = np.asarray(masks).astype(bool)
    if not masks.any():
        raise CflowError('the test set has no defect pixel in any ground-truth mask: '
                         'localization AUROC is undefined')
    return float(roc_auc_score(masks.ravel(), np.asarray(maps).ravel()))


def aupro_thresholds(maps: np.ndarray, steps: int = AUPRO_STEPS) -> np.ndarray:
    """The published thresholds, from the max down, computed the same way as there."""
    max_th, min_th = maps.max(), maps.min()
    delta = (max_th - min_th) / steps
    return np.array([max_th - step * delta for step in range(steps)])


def gt_regions(masks: np.ndarray) -> List[Tuple[int, tuple, np.ndarray, int]]:
    """Every connected ground-truth region: (image index, bbox slices, filled footprint, area)."""
    regions = []
    for i, mask in enumerate(masks):
        for prop in regionprops(label(mask, connectivity=2)):
            r0, c0, r1, c1 = prop.bbox
            regions.append((i, (slice(r0, r1), slice(c0, c1)), prop.image_filled, prop.area))
    return regions


def _rescaled_area(fprs: np.ndarray, pros: np.ndarray, max_fpr: float) -> float:
    keep = fprs <= max_fpr
    fprs, pros = fprs[keep], pros[keep]
    if fprs.size < 2 or fprs.max() == fprs.min():
        warnings.warn('AUPRO is undefined: fewer than two distinct FPR values under the limit')
        return float('nan')
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros))


def _check_aupro_inputs(masks: np.ndarray, maps: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks).astype(bool)
    if masks.shape != np.shape(maps):
        raise ValueError(f'masks {masks.shape} and maps {np.shape(maps)} differ in shape')
    if not masks.any():
        raise CflowError('AUPRO needs at least one ground-truth defect region; the masks are empty')
    return masks


def pro_fpr_curve(masks: np.ndarray, maps: np.ndarray, steps: int = AUPRO_STEPS):
    """PRO_k, FPR_k and th_k for k = 0..steps-1, in one pass (see the module docstring)."""
    masks = _check_aupro_inputs(masks, maps)
    maps = np.asarray(maps, dtype=np.float64)
    thresholds = aupro_thresholds(maps, steps)
    ascending = thresholds[::-1]

    def first_positive_step(values: np.ndarray) -> np.ndarray:
        # value > th_k  <=>  k >= steps - (number of thresholds below value);
        # steps means "never positive" and lands in an overflow bin.
        return steps - np.searchsorted(ascending, values, side='left')

    # FPR: cumulative count of negatives that have turned positive by each step.
    neg_steps = first_positive_step(maps[~masks])
    fprs = np.cumsum(np.bincount(neg_steps, minlength=steps + 1)[:steps]) / neg_steps.size

    regions = gt_regions(masks)
    region_steps, region_ids = [], []
    for r, (i, box, filled, _) in enumerate(regions):
        values = maps[i][box][filled]
        region_steps.append(first_positive_step(values))
        region_ids.append(np.full(values.size, r))
    flat = np.concatenate(region_ids) * (steps + 1) + np.concatenate(region_steps)
    hits = np.bincount(flat, minlength=len(regions) * (steps + 1)).reshape(len(regions), steps + 1)
    areas = np.array([area for *_, area in regions], dtype=np.float64)
    pros = (np.cumsum(hits[:, :steps], axis=1) / areas[:, None]).mean(axis=0)
    return pros, fprs, thresholds


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = AUPRO_MAX_FPR,
          steps: int = AUPRO_STEPS) -> float:
    """AUPRO by the published definition, exact, in one pass over the pixels."""
    pros, fprs, _ = pro_fpr_curve(masks, maps, steps)
    return _rescaled_area(fprs, pros, max_fpr)


def aupro_direct(masks: np.ndarray, maps: np.ndarray, max_fpr: float = AUPRO_MAX_FPR,
                 steps: int = AUPRO_STEPS) -> float:
    """AUPRO written as the definition: a full comparison of every map per threshold.

    Slow (one pass per threshold); the reference :func:`aupro` is tested against.
    """
    masks = _check_aupro_inputs(masks, maps)
    maps = np.asarray(maps, dtype=np.float64)
    regions = gt_regions(masks)
    negatives = ~masks
    pros, fprs = [], []
    for thred in aupro_thresholds(maps, steps):
        binary = maps > thred
        overlaps = [np.logical_and(binary[i][box], filled).sum() / area for i, box, filled, area in regions]
        pros.append(np.mean(overlaps))
        fprs.append(np.logical_and(negatives, binary).sum() / negatives.sum())
    return _rescaled_area(np.array(fprs), np.array(pros), max_fpr)
