"""Anomaly maps and image scores from per-layer log-likelihoods.

Published (test-set normalisation), per pool layer over the WHOLE test set:
    p_l = exp(log p_l - max(log p_l)),   upsampled bilinearly (align_corners=True) to the input
    S = sum_l p_l,   anomaly map A = max(S) - S,   image score = max over the image of A
Because the normalisation spans the test set, a map depends on which images were tested
together. Calibrated (``utils/calibration.py``): the same formula with the two maxima
replaced by constants measured once on defect-free images, so every image's map stands
alone. Values are in float64 like the published code.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def summed_probabilities(log_probs: List[torch.Tensor], input_size: Tuple[int, int],
                         shifts: Optional[Sequence[float]] = None, chunk: int = 64) -> torch.Tensor:
    """S = sum_l upsample(exp(log p_l - shift_l)), N x H x W float64; shift_l = max(log p_l) by default."""
    n = log_probs[0].shape[0]
    total = torch.zeros((n, *input_size), dtype=torch.float64)
    for l, log_prob in enumerate(log_probs):
        log_prob = log_prob.detach().to('cpu', torch.float64)
        shift = log_prob.max() if shifts is None else shifts[l]
        prob = torch.exp(log_prob - shift)
        for start in range(0, n, chunk):  # chunked upsampling: one layer's full-size maps never all exist
            total[start:start + chunk] += F.interpolate(prob[start:start + chunk].unsqueeze(1), size=input_size,
                                                        mode='bilinear', align_corners=True)[:, 0]
    return total


def anomaly_maps(log_probs: List[torch.Tensor], input_size: Tuple[int, int], chunk: int = 64) -> np.ndarray:
    """N x H x W float64 anomaly maps, normalised over the whole set (the published rule)."""
    total = summed_probabilities(log_probs, input_size, chunk=chunk)
    return (total.max() - total).numpy()


def calibrated_maps(log_probs: List[torch.Tensor], input_size: Tuple[int, int], calibration: dict) -> np.ndarray:
    """N x H x W float64 anomaly maps with the calibration's constants: A = S_ref - S."""
    total = summed_probabilities(log_probs, input_size, calibration['log_p_max'])
    return (calibration['sum_max'] - total).numpy()


def image_scores(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(maps.shape[0], -1).max(axis=1)
