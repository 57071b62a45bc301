"""Anomaly maps and image scores from per-layer log-likelihoods: the one map assembly.

    S = sum_l upsample_bilinear(exp(min(log p_l - shift_l, 80)), align_corners=True)
    A = offset - S,   image score = max over the image of A

Published (test-set normalisation): shift_l = max of log p_l over the WHOLE test set and
offset = max of S over it, in float64 as the published code computes, so a map depends on
which images were tested together. Calibrated (``utils/calibration.py``): shift_l and offset
are constants measured once on defect-free images, so every image's map stands alone; the
deployable model (``custom_models/anomaly_model.py``) runs the same function in float32.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# exp(80) ~ 5.5e34: above it float32 overflows to inf, and the upsampling's zero weights would turn
# inf into NaN. Only fibers far likelier than any calibration fiber reach it (never with shift = max).
EXP_LIMIT = 80.0


def summed_probabilities(log_probs: Sequence[torch.Tensor], size: Tuple[int, int],
                         shifts: Sequence) -> torch.Tensor:
    """S of one batch, B x H x W in the log-likelihoods' dtype: the map assembly every path uses."""
    total = None
    for log_p, shift in zip(log_probs, shifts):
        prob = torch.exp(torch.clamp(log_p - shift, max=EXP_LIMIT))
        prob = F.interpolate(prob.unsqueeze(1), size=size, mode='bilinear', align_corners=True)[:, 0]
        total = prob if total is None else total + prob
    return total


def summed_in_float64(log_probs: List[torch.Tensor], size: Tuple[int, int], shifts: Optional[Sequence] = None,
                      chunk: int = 64):
    """(start, S of images start .. start + chunk) in float64 on the CPU, a chunk at a time (one layer's
    full-size maps never all exist); shift_l = max(log p_l) over all images by default."""
    log_probs = [lp.detach().to('cpu', torch.float64) for lp in log_probs]
    shifts = [lp.max() for lp in log_probs] if shifts is None else shifts
    for start in range(0, log_probs[0].shape[0], chunk):
        yield start, summed_probabilities([lp[start:start + chunk] for lp in log_probs], size, shifts)


def anomaly_maps(log_probs: List[torch.Tensor], input_size: Tuple[int, int], chunk: int = 64) -> np.ndarray:
    """N x H x W float64 anomaly maps, normalised over the whole set (the published rule)."""
    total = torch.empty((log_probs[0].shape[0], *input_size), dtype=torch.float64)
    for start, part in summed_in_float64(log_probs, input_size, chunk=chunk):
        total[start:start + part.shape[0]] = part
    return (total.max() - total).numpy()


def calibrated_maps(log_probs: List[torch.Tensor], input_size: Tuple[int, int], calibration: dict) -> np.ndarray:
    """N x H x W float64 anomaly maps with the calibration's constants: A = S_ref - S."""
    maps = np.empty((log_probs[0].shape[0], *input_size), dtype=np.float64)
    for start, part in summed_in_float64(log_probs, input_size, calibration['log_p_max']):
        maps[start:start + part.shape[0]] = (calibration['sum_max'] - part).numpy()
    return maps


def image_scores(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(maps.shape[0], -1).max(axis=1)
