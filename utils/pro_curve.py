"""AU-PRO over the exact PRO curve, as the MVTec AD / MVTec AD 2 evaluation code computes it, with
bounded memory: images are added one at a time, at their own resolution.

The official computation (``pro_curve_util.compute_pro``, ``generic_util.trapezoid``):

    regions  = the 8-connected components of every ground-truth mask (good images have none)
    every distinct anomaly score s is a threshold; a pixel is positive when its score >= s
    FPR(s)  = |positive pixels outside every region| / |pixels outside every region|   (all images)
    PRO(s)  = mean over regions r of |positive pixels of r| / |r|
    curve   = (0, 0), (FPR(s), PRO(s)) for s from the highest score down, (1, 1)
    AU-PRO@L = trapezoid area of the curve for FPR <= L (the point at L interpolated linearly) / L

Every pixel adds 1 to the FPR count of its score if it is outside the regions, or 1 / |r| to the PRO sum
of its score if it is in region r. Those two sums per distinct score are all the curve needs, so each
image is reduced to (distinct scores, FPR counts, PRO sums) and merged into the running sums: memory is
one image plus the distinct scores seen (at most 65,536 for the float16 maps MVTec AD 2's server
reads), never every map at once. float16 maps take a faster path with the same result: their 65,536
possible values are histogram bins, in the order of the values (no sort).
"""
from typing import Optional

import numpy as np
from scipy import ndimage

from utils.errors import CflowError

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def regions_weight(truth: np.ndarray):
    """(outside, weight): True where a pixel is outside every 8-connected region of ``truth``; each region
    pixel's 1 / |its region|; and the region count."""
    labelled, count = ndimage.label(np.asarray(truth, bool), structure=EIGHT_CONNECTED)
    sizes = np.bincount(labelled.ravel())
    weight = np.where(labelled > 0, 1.0 / np.maximum(sizes[labelled], 1), 0.0)
    return labelled == 0, weight, count


def float16_order(values: np.ndarray) -> np.ndarray:
    """Bin 0..65535 of each float16 value, in the order of the values (-0 taken as +0)."""
    bits = (np.asarray(values, np.float16) + np.float16(0)).view(np.uint16)  # -0 + 0 = +0
    return np.where(bits & 0x8000, 0xFFFF - bits, bits | 0x8000).astype(np.int64)


FLOAT16_VALUES = np.arange(1 << 16, dtype=np.int64)
# the float16 value of each bin (the inverse of float16_order)
FLOAT16_OF_BIN = np.where(FLOAT16_VALUES & 0x8000, FLOAT16_VALUES & 0x7FFF,
                          0xFFFF - FLOAT16_VALUES).astype(np.uint16).view(np.float16).astype(np.float64)


class ProCurve:
    """Running sums of the PRO curve; ``add`` one image, then ``au_pro(limit)``."""

    def __init__(self):
        self.scores = np.empty(0)
        self.fp = np.empty(0)
        self.pro = np.empty(0)
        self.negatives = 0
        self.regions = 0
        self.bins = None  # float16 maps: (pixels, fp, pro) per float16 bin

    def add(self, anomaly_map: np.ndarray, truth: Optional[np.ndarray]) -> None:
        """One image's map and its ground truth (None or empty: a good image)."""
        scores = np.asarray(anomaly_map).ravel()
        if truth is None:
            outside, weight, count = np.ones(scores.shape, bool), np.zeros(scores.shape), 0
        else:
            if np.shape(truth) != np.shape(anomaly_map):
                raise CflowError(f'a ground-truth mask of {np.shape(truth)} for a map of {np.shape(anomaly_map)}: '
                                 f'the map must have its image\'s size')
            outside, weight, count = regions_weight(truth)
            outside, weight = outside.ravel(), weight.ravel()
        self.negatives += int(outside.sum())
        self.regions += count
        if scores.dtype == np.float16 and not self.scores.size:
            order = float16_order(scores)
            sums = [np.bincount(order, weights=w, minlength=1 << 16) for w in (None, outside, weight)]
            self.bins = sums if self.bins is None else [a + b for a, b in zip(self.bins, sums)]
            return
        if self.bins is not None:
            raise CflowError('float16 maps and maps of another precision cannot be pooled in one PRO curve')
        values, inverse = np.unique(scores, return_inverse=True)
        fp = np.bincount(inverse, weights=outside, minlength=values.size)
        pro = np.bincount(inverse, weights=weight, minlength=values.size)
        self.merge(values.astype(np.float64), fp, pro)

    def merge(self, values: np.ndarray, fp: np.ndarray, pro: np.ndarray) -> None:
        merged, inverse = np.unique(np.concatenate([self.scores, values]), return_inverse=True)
        self.fp = np.bincount(inverse, weights=np.concatenate([self.fp, fp]), minlength=merged.size)
        self.pro = np.bincount(inverse, weights=np.concatenate([self.pro, pro]), minlength=merged.size)
        self.scores = merged

    def sums(self):
        """(distinct scores ascending, FPR count, PRO sum) per score."""
        if self.bins is None:
            return self.scores, self.fp, self.pro
        used = self.bins[0] > 0
        return FLOAT16_OF_BIN[used], self.bins[1][used], self.bins[2][used]

    def curve(self):
        """(FPR, PRO) from the highest score down, with (0, 0) first and (1, 1) last, both clipped to 1."""
        if self.regions == 0 or self.negatives == 0:
            raise CflowError('AU-PRO needs defect regions in the ground truth and defect-free pixels')
        _, fp, pro = self.sums()
        fpr = np.cumsum(fp[::-1]) / self.negatives
        pro = np.cumsum(pro[::-1]) / self.regions
        return (np.concatenate([[0.0], np.minimum(fpr, 1.0), [1.0]]),
                np.concatenate([[0.0], np.minimum(pro, 1.0), [1.0]]))

    def au_pro(self, limit: float) -> float:
        """Normalised area under the PRO curve up to FPR ``limit`` (in [0, 1])."""
        fpr, pro = self.curve()
        return trapezoid_to(fpr, pro, limit) / limit


def trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x <= x_max, the segment crossing x_max cut there (y interpolated)."""
    inside = x <= x_max
    area = float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x) * inside[1:]))
    if x_max not in x:
        cut = int(np.searchsorted(x, x_max, side='right'))  # first point beyond x_max
        y_cut = y[cut - 1] + (y[cut] - y[cut - 1]) * (x_max - x[cut - 1]) / (x[cut] - x[cut - 1])
        area += 0.5 * (y_cut + y[cut - 1]) * (x_max - x[cut - 1])
    return area
