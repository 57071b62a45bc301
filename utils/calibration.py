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

An image is defective when its score exceeds t_I (empty mask when decided good). Its defect
mask is drawn relative to its own peak, since one global pixel threshold either floods a faint
image or clips a strong one:

    mask = A > t_M,   t_M = max(t_P, t_I + MASK_PEAK_SHARE * (score - t_I)),  MASK_PEAK_SHARE = 0.7

so it always holds the peak (a defective decision never has an empty mask), and no label
chose any of it (0.7: the share measured in issue 15 on exported maps, not tuned here; bench.py
reports it against the best single threshold chosen with the labels).

Memory is bounded whatever the number of images: S is made ``CHUNK_VALUES`` pixels at a
time (128 MB of float64), and only what the formulas need is kept: the max of S, each
image's min of S (its score is S_ref - min S), and the lowest (1 - p) share of S values
(+ 2), since Q_p of A = S_ref - S is read from the highest A values: 0.1 % of the pixels,
8 bytes each (an STC scene of 5,000 frames at 256 px: 2.6 MB).
"""
import math
from typing import List, Optional, Sequence

import numpy as np
import torch

from utils.anomaly_map import stitched_sums, summed_in_float64
from utils.errors import CflowError

MASK_PEAK_SHARE = 0.7
IMAGE_QUANTILE = 0.99
IMAGE_MARGIN = 0.1
PIXEL_QUANTILE = 0.999
CALIBRATION_KEY = 'calibration'  # the extra checkpoint key (the authors' loader reads only its two)
CHUNK_VALUES = 1 << 24  # pixels of S made at once: 128 MB of float64


def high_quantile(highest: np.ndarray, count: int, q: float) -> float:
    """np.quantile(values, q) (linear interpolation) of ``count`` values of which ``highest`` holds the
    largest ones, enough to reach position q (count - 1): the two order statistics it interpolates."""
    position = q * (count - 1)
    below = int(math.floor(position))
    ordered = np.sort(highest)
    offset = count - ordered.size  # the position of ordered[0] among all values
    low, high = ordered[below - offset], ordered[min(below + 1, count - 1) - offset]
    t = position - below
    # numpy's lerp, including its form for t >= 0.5
    return float(high - (high - low) * (1 - t)) if t >= 0.5 else float(low + (high - low) * t)


def image_threshold_rule(scores: np.ndarray, image_quantile: float, margin: float):
    """(t_I, median) of the calibration images' scores: t_I = q + margin * (q - median), q their quantile."""
    top, median = np.quantile(scores, image_quantile), np.median(scores)
    return float(top + margin * (top - median)), median


def calibrate_from_log_probs(log_probs: List[torch.Tensor], input_size: Sequence[int], source: str,
                             settings: dict, image_quantile: float = IMAGE_QUANTILE, margin: float = IMAGE_MARGIN,
                             pixel_quantile: float = PIXEL_QUANTILE, grids: Optional[List[List[float]]] = None,
                             layouts: Optional[Sequence] = None) -> dict:
    """The calibration record (plain floats, lists and strings: it goes into checkpoints and JSON).
    ``grids``: per layer [stride, offset] of its cells (``custom_models.receptive_field``): the maps, and
    so the constants and thresholds, are centred on them; recorded as ``cell_grids`` (None: the published
    stretch, as files calibrated before recorded none). ``layouts``: a tiled model's (``utils/tiling.py``):
    ``log_probs`` hold one row per tile, and S is each image's stitched canvas."""
    n = log_probs[0].shape[0] if layouts is None else len(layouts)
    if n < 2:
        raise CflowError(f'calibration needs at least 2 defect-free images, got {n}')
    log_p_max = [float(lp.max()) for lp in log_probs]
    pixels = int(np.prod(input_size))
    if layouts is None:
        total_values = n * pixels
        blocks = (total for _, total in summed_in_float64(log_probs, tuple(input_size), log_p_max,
                                                          max(1, CHUNK_VALUES // pixels), grids))
    else:
        total_values = sum(layout.canvas[0] * layout.canvas[1] for layout in layouts)
        blocks = (torch.from_numpy(canvas)[None] for canvas in stitched_sums(log_probs, layouts, input_size[0],
                                                                             log_p_max, grids))
    keep = min(total_values, int(math.floor((total_values - 1) * (1 - pixel_quantile))) + 2)
    sum_max, image_min, lowest = -math.inf, [], torch.empty(0, dtype=torch.float64)
    for total in blocks:
        flat = total.reshape(total.shape[0], -1)
        sum_max = max(sum_max, float(flat.max()))
        image_min.append(flat.min(dim=1).values)
        lowest = torch.cat([lowest, flat.flatten()]).topk(min(keep, lowest.numel() + flat.numel()), largest=False,
                                                           sorted=False).values
    scores = (sum_max - torch.cat(image_min)).numpy()
    image_threshold, median = image_threshold_rule(scores, image_quantile, margin)
    pixel_threshold = float(min(image_threshold, high_quantile(sum_max - lowest.numpy(), total_values,
                                                                pixel_quantile)))
    if not all(map(math.isfinite, log_p_max + [sum_max, image_threshold, pixel_threshold])):
        raise CflowError('calibration gave non-finite constants: the model diverged or the images are unusual')
    return {'log_p_max': log_p_max, 'sum_max': sum_max, 'image_threshold': image_threshold,
            'pixel_threshold': pixel_threshold, 'image_quantile': image_quantile, 'margin': margin,
            'pixel_quantile': pixel_quantile, 'mask_peak_share': MASK_PEAK_SHARE, 'n_images': int(n), 'source': source,
            'score_median': float(median), 'score_max': float(scores.max()), 'settings': dict(settings),
            **({'cell_grids': [list(map(float, g)) for g in grids]} if grids is not None else {})}


def score_calibration(scores: np.ndarray, source: str, settings: dict, image_quantile: float = IMAGE_QUANTILE,
                      margin: float = IMAGE_MARGIN) -> dict:
    """The calibration record of a model that gives image scores only (DifferNet): t_I by the rule above from
    the scores of defect-free images; its masks are relative to each map's own peak (no pixel constants)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size < 2:
        raise CflowError(f'calibration needs at least 2 defect-free images, got {scores.size}')
    image_threshold, median = image_threshold_rule(scores, image_quantile, margin)
    if not math.isfinite(image_threshold):
        raise CflowError('calibration gave a non-finite threshold: the model diverged or the images are unusual')
    return {'model': 'differnet', 'image_threshold': image_threshold, 'image_quantile': image_quantile,
            'margin': margin, 'n_images': int(scores.size), 'source': source, 'score_median': float(median),
            'score_max': float(scores.max()), 'settings': dict(settings)}


def thresholds_from_maps(maps: np.ndarray, image_quantile: float = IMAGE_QUANTILE, margin: float = IMAGE_MARGIN,
                         pixel_quantile: float = PIXEL_QUANTILE) -> dict:
    """t_I and t_P (module docstring) from the anomaly maps A (N x H x W) of the calibration images, for a
    model whose maps are all there is (an INT8 export): the rule ``calibrate_from_log_probs`` applies."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.shape[0] < 2:
        raise CflowError(f'calibration needs at least 2 defect-free images, got {maps.shape[0]}')
    scores = maps.reshape(maps.shape[0], -1).max(axis=1)
    image_threshold, median = image_threshold_rule(scores, image_quantile, margin)
    pixel_threshold = float(min(image_threshold, np.quantile(maps.ravel(), pixel_quantile)))
    if not (math.isfinite(image_threshold) and math.isfinite(pixel_threshold)):
        raise CflowError('calibration gave non-finite thresholds: the quantized model diverged')
    return {'image_threshold': image_threshold, 'pixel_threshold': pixel_threshold,
            'score_median': float(median), 'score_max': float(scores.max())}


def mask_threshold(score: float, calibration: dict) -> float:
    """t_M of an image decided defective: max(t_P, t_I + share * (score - t_I)) (module docstring)."""
    t_image, t_pixel = calibration['image_threshold'], calibration['pixel_threshold']
    share = calibration.get('mask_peak_share', MASK_PEAK_SHARE)
    return max(t_pixel, t_image + share * (float(score) - t_image))


def decisions(scores: np.ndarray, calibration: dict) -> np.ndarray:
    """True where an image is decided defective."""
    return np.asarray(scores) > calibration['image_threshold']


def decide_then_mask(anomaly_map: np.ndarray, score: float, t_image: float, t_mask: float):
    """(defective, mask) of one image: defective when its score exceeds t_I; then its mask A > t_M, empty
    when decided good (the one rule predict, ``load_model``, --viz and the benchmark apply)."""
    defective = bool(score > t_image)
    return defective, (anomaly_map > t_mask if defective else np.zeros(np.shape(anomaly_map), dtype=bool))


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
