"""The official AU-PRO as MVTec's evaluation code computes it, written out: every pixel of every map held
and sorted at once (``pro_curve_util.compute_pro``, ``generic_util.trapezoid``). The baseline that the
segmentation section, and the tests, compare ``utils/pro_curve.py`` with."""
from bisect import bisect

import numpy as np
from scipy.ndimage import label


def official_pro_curve(maps, truths):
    """(FPRs, PROs) with (0, 0) first and (1, 1) last, at every distinct score, all pixels sorted together."""
    fp_changes, pro_changes, negatives, regions = [], [], 0, 0
    for truth in truths:
        labelled, n = label(truth, np.ones((3, 3), int))
        fp_changes.append((labelled == 0).astype(np.float64))
        change = np.zeros(truth.shape)
        for k in range(1, n + 1):
            change[labelled == k] = 1.0 / (labelled == k).sum()
        pro_changes.append(change)
        negatives += (labelled == 0).sum()
        regions += n
    scores = np.concatenate([np.ravel(m).astype(np.float64) for m in maps])
    order = np.argsort(scores, kind='stable')[::-1]
    scores = scores[order]
    fprs = np.cumsum(np.concatenate([c.ravel() for c in fp_changes])[order]) / negatives
    pros = np.cumsum(np.concatenate([c.ravel() for c in pro_changes])[order]) / regions
    keep = np.append(np.diff(scores) != 0, True)
    return (np.concatenate([[0], np.minimum(fprs[keep], 1), [1]]),
            np.concatenate([[0], np.minimum(pros[keep], 1), [1]]))


def official_trapezoid(x, y, x_max):
    """The area under y(x) up to x_max, the last segment cut at x_max (``generic_util.trapezoid``)."""
    correction = 0.0
    if x_max not in x:
        ins = bisect(list(x), x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction


def official_au_pro(maps, truths, limit: float) -> float:
    fprs, pros = official_pro_curve(maps, truths)
    return float(official_trapezoid(fprs, pros, limit) / limit)
