"""Calibration on defect-free images: per-image anomaly maps, scores and thresholds.

The published maps are normalised by maxima over the whole test set, so one image's score
depends on the others. Calibration measures those constants once, on N defect-free
images that were not used for training (or the training images, optimistically):

    m_l    = max over calibration images and positions of log p_l          (per pool layer)
    S(x)   = sum_l upsample(exp(log p_l(x) - m_l))
    S_ref  = max over calibration pixels of S
    A(x)   = S_ref - S(x)            (>= 0 on calibration images, larger = more anomalous)
    score  = max over the image of A

and chooses thresholds from the calibration images alone, never from test labels:

    image threshold  t_I = Q_q(scores) + margin * (Q_q(scores) - median(scores)),  q = 0.99, margin = 0.1
    pixel threshold  t_P = min(t_I, Q_p(all calibration pixels of A)),           p = 0.999

An image is defective when its score exceeds t_I; its defect mask is the pixels with A > t_P
(empty for an image decided good), so a defective decision always has a non-empty mask.
"""
import math
from typing import List, Sequence

import numpy as np
import torch

from utils.anomaly_map import summed_probabilities
from utils.errors import CflowError

IMAGE_QUANTILE = 0.99
IMAGE_MARGIN = 0.1
PIXEL_QUANTILE = 0.999
CALIBRATION_KEY = 'calibration'  # the extra checkpoint key (the authors' loader reads only its two)


def calibrate_from_log_probs(log_probs: List[torch.Tensor], input_size: Sequence[int], source: str,
                             settings: dict, image_quantile: float = IMAGE_QUANTILE, margin: float = IMAGE_MARGIN,
                             pixel_quantile: float = PIXEL_QUANTILE) -> dict:
    """The calibration record (plain floats, lists and strings: it goes into checkpoints and JSON)."""
    n = log_probs[0].shape[0]
    if n < 2:
        raise CflowError(f'calibration needs at least 2 defect-free images, got {n}')
    log_p_max = [float(lp.max()) for lp in log_probs]
    total = summed_probabilities(log_probs, tuple(input_size), log_p_max)
    sum_max = float(total.max())
    maps = (sum_max - total).numpy()
    scores = maps.reshape(n, -1).max(axis=1)
    top, median = np.quantile(scores, image_quantile), np.median(scores)
    image_threshold = float(top + margin * (top - median))
    pixel_threshold = float(min(image_threshold, np.quantile(maps, pixel_quantile)))
    if not all(map(math.isfinite, log_p_max + [sum_max, image_threshold, pixel_threshold])):
        raise CflowError('calibration gave non-finite constants: the model diverged or the images are unusual')
    return {'log_p_max': log_p_max, 'sum_max': sum_max, 'image_threshold': image_threshold,
            'pixel_threshold': pixel_threshold, 'image_quantile': image_quantile, 'margin': margin,
            'pixel_quantile': pixel_quantile, 'n_images': int(n), 'source': source,
            'score_median': float(median), 'score_max': float(scores.max()), 'settings': dict(settings)}


def decisions(scores: np.ndarray, calibration: dict) -> np.ndarray:
    """True where an image is decided defective."""
    return np.asarray(scores) > calibration['image_threshold']


def decision_quality(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """False-positive rate on good images, recall on defective ones, precision and F1 at a threshold."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) > threshold
    tp, fp = int((predicted & labels).sum()), int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {'threshold': float(threshold), 'fpr': fp / max(int((~labels).sum()), 1), 'recall': recall,
            'precision': precision, 'f1': 2 * precision * recall / (precision + recall) if precision + recall else 0.0}


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The image threshold with the best F1 on labelled data: an oracle, for comparison only."""
    candidates = np.unique(scores)
    # a threshold just below each score decides that image (and all higher) defective
    thresholds = np.concatenate([[candidates[0] - 1.0], (candidates[:-1] + candidates[1:]) / 2])
    f1 = [decision_quality(labels, scores, t)['f1'] for t in thresholds]
    return float(thresholds[int(np.argmax(f1))])
