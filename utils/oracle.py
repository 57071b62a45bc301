"""The oracle: thresholds chosen WITH the test labels, one per level, for comparison only (no decision of
predict, calibration or the benchmark's rule uses them). norm-test reports the image one beside the stored
threshold, ``--viz`` draws both when no calibration is given, and the benchmark measures masks against the
pixel one."""
from typing import Tuple

import numpy as np
from sklearn.metrics import precision_recall_curve

from utils.calibration import decision_quality


def image_f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The image threshold with the best F1 on labelled images (decided defective: score > threshold)."""
    candidates = np.unique(scores)
    # a threshold just below each score decides that image (and all higher) defective
    thresholds = np.concatenate([[candidates[0] - 1.0], (candidates[:-1] + candidates[1:]) / 2])
    f1 = [decision_quality(labels, scores, t)['f1'] for t in thresholds]
    return float(thresholds[int(np.argmax(f1))])


def pixel_f1_optimal(masks: np.ndarray, maps: np.ndarray) -> Tuple[float, float]:
    """(threshold, F1) of the one global pixel threshold with the best F1 over every pixel of the set
    (a pixel is predicted anomalous when its map value is >= the threshold; labels: mask != 0)."""
    precision, recall, thresholds = precision_recall_curve(np.asarray(masks).ravel().astype(bool),
                                                           np.asarray(maps).ravel())
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)[:-1]  # the last point (recall 0) has no threshold
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def pixel_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """F1 of predicted defect pixels against the true ones, pooled over every pixel given."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    tp = int((predicted & truth).sum())
    fp, fn = int((predicted & ~truth).sum()), int((~predicted & truth).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)
