"""Anomaly maps and image scores from per-layer log-likelihoods of a whole test set.

Per pool layer, over the WHOLE test set (as published):
    p_l = exp(log p_l - max(log p_l)),   upsampled bilinearly (align_corners=True) to the input
    S = sum_l p_l,   anomaly map A = max(S) - S,   image score = max over the image of A
Values are in float64 like the published code. Because the normalisation spans the test
set, a map depends on which images were tested together.
"""
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def anomaly_maps(log_probs: List[torch.Tensor], input_size: Tuple[int, int], chunk: int = 64) -> np.ndarray:
    """N x H x W float64 anomaly maps from per-layer N x H_l x W_l log-likelihoods."""
    n = log_probs[0].shape[0]
    total = torch.zeros((n, *input_size), dtype=torch.float64)
    for log_prob in log_probs:
        log_prob = log_prob.detach().to('cpu', torch.float64)
        prob = torch.exp(log_prob - log_prob.max())
        for start in range(0, n, chunk):  # chunked upsampling: one layer's full-size maps never all exist
            total[start:start + chunk] += F.interpolate(prob[start:start + chunk].unsqueeze(1), size=input_size,
                                                        mode='bilinear', align_corners=True)[:, 0]
    return (total.max() - total).numpy()


def image_scores(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(maps.shape[0], -1).max(axis=1)
