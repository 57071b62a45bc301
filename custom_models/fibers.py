"""Fibers: every spatial position of a feature map is one sample for its flow.

A B x C x H x W map becomes (B*H*W) x C rows, row-major over (b, h, w), each with the
positional encoding of its (h, w) as condition, exactly as the published code lays
them out. Scoring a fiber does not depend on the others, so at test time all fibers of
a batch go through a decoder together (:func:`score_feature_map`), cut only into
memory-sized chunks; :func:`score_feature_map_loop` is the published 256-at-a-time
loop, kept as the baseline the benchmark and tests compare against.
"""
from typing import Tuple

import torch

from custom_models.flows import log_likelihood
from custom_models.positional import position_fibers


def to_fibers(feature_map: torch.Tensor, condition_vec: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B*H*W) x C fibers and their (B*H*W) x P positional conditions."""
    B, C, H, W = feature_map.shape
    fibers = feature_map.permute(0, 2, 3, 1).reshape(B * H * W, C)
    positions = position_fibers(condition_vec, H, W, str(feature_map.device)).repeat(B, 1)
    return fibers, positions


def score_feature_map(decoder, feature_map: torch.Tensor, condition_vec: int, chunk: int) -> torch.Tensor:
    """B x H x W per-dimension log-likelihoods, ``chunk`` fibers per decoder call."""
    B, C, H, W = feature_map.shape
    fibers, positions = to_fibers(feature_map, condition_vec)
    out = torch.empty(fibers.shape[0], device=fibers.device, dtype=torch.float32)
    for start in range(0, fibers.shape[0], chunk):
        stop = start + chunk
        out[start:stop] = log_likelihood(decoder, fibers[start:stop], positions[start:stop])
    return out.reshape(B, H, W)


def score_feature_map_loop(decoder, feature_map: torch.Tensor, condition_vec: int,
                           fiber_batch: int = 256) -> torch.Tensor:
    """The published test loop: 256 fibers per call, each result moved to the host."""
    B, C, H, W = feature_map.shape
    fibers, positions = to_fibers(feature_map, condition_vec)
    scores = []
    for start in range(0, fibers.shape[0], fiber_batch):
        idx = torch.arange(start, min(start + fiber_batch, fibers.shape[0]))
        log_prob = log_likelihood(decoder, fibers[idx], positions[idx])
        scores += log_prob.detach().cpu().tolist()
    return torch.tensor(scores, dtype=torch.float32).reshape(B, H, W)
