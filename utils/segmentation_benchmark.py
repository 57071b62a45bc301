"""MVTec AD 2's metrics of one labelled split, from images added one at a time at their own resolution
(the maps as written for the benchmark's server, float16):

    SEG_AUPRO@L = AU-PRO over the exact PRO curve up to FPR L (``utils/pro_curve.py``), L = 0.05 (the
                  headline) and 0.3
    DET_AUROC   = image AUROC of each map's maximum
    SEG_F1      = pixel F1 of the thresholded maps pooled over every pixel of the split:
                  2 TP / (2 TP + FP + FN)

all in %. Memory: one image, the PRO curve's sums, and a score per image.
"""
from typing import Optional, Sequence

import numpy as np

from utils.metrics import detection_auroc
from utils.pro_curve import ProCurve

BENCHMARK_PRO_LIMITS = (0.05, 0.3)


def benchmark_limits(pro_limit: Optional[float] = None) -> tuple:
    """MVTec AD 2's limits, and ``pro_limit`` (--pro-limit) when it is another."""
    return BENCHMARK_PRO_LIMITS + ((pro_limit,) if pro_limit is not None and pro_limit not in BENCHMARK_PRO_LIMITS
                                   else ())


def pro_name(limit: float) -> str:
    return f'SEG_AUPRO@{limit:g}'


class SegmentationBenchmark:
    def __init__(self, limits: Sequence[float] = BENCHMARK_PRO_LIMITS):
        self.limits = tuple(limits)
        self.curve = ProCurve()
        self.scores, self.labels = [], []
        self.tp = self.fp = self.fn = 0

    def add(self, anomaly_map: np.ndarray, thresholded: np.ndarray, defective: bool,
            truth: Optional[np.ndarray]) -> None:
        """One image: its map, its thresholded map (bool), its label, its ground truth (None: all good)."""
        truth = np.zeros(np.shape(anomaly_map), bool) if truth is None else np.asarray(truth, bool)
        self.curve.add(anomaly_map, truth)
        self.scores.append(float(np.max(anomaly_map)))
        self.labels.append(bool(defective))
        thresholded = np.asarray(thresholded, bool)
        self.tp += int((thresholded & truth).sum())
        self.fp += int((thresholded & ~truth).sum())
        self.fn += int((~thresholded & truth).sum())

    def metrics(self) -> dict:
        found = {pro_name(limit): 100.0 * self.curve.au_pro(limit) for limit in self.limits}
        found['DET_AUROC'] = 100.0 * detection_auroc(np.array(self.labels), np.array(self.scores))
        found['SEG_F1'] = 100.0 * 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)
        return found
