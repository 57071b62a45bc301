"""2-D sinusoidal positional encoding, the condition of the conditional flows."""
import math
from functools import lru_cache

import torch


def positionalencoding2d(P: int, H: int, W: int) -> torch.Tensor:
    """Return a P x H x W tensor encoding each position (y, x) of an H x W map.

    With D = P/2 and div_i = exp(-2i * ln(10000)/D), i = 0 .. D/2-1:
        channels 0:D:2   = sin(x * div),  channels 1:D:2   = cos(x * div)   (x = column)
        channels D::2    = sin(y * div),  channels D+1::2  = cos(y * div)   (y = row)
    This is the published code's encoding, value for value.
    """
    if P % 4 != 0:
        raise ValueError(f'positional encoding needs a channel count divisible by 4, got {P}')
    D = P // 2
    div_term = torch.exp(torch.arange(0.0, D, 2) * -(math.log(1e4) / D))
    pos_w = torch.arange(0.0, W).unsqueeze(1)
    pos_h = torch.arange(0.0, H).unsqueeze(1)
    enc = torch.zeros(P, H, W)
    enc[0:D:2] = torch.sin(pos_w * div_term).t().unsqueeze(1).repeat(1, H, 1)
    enc[1:D:2] = torch.cos(pos_w * div_term).t().unsqueeze(1).repeat(1, H, 1)
    enc[D::2] = torch.sin(pos_h * div_term).t().unsqueeze(2).repeat(1, 1, W)
    enc[D + 1::2] = torch.cos(pos_h * div_term).t().unsqueeze(2).repeat(1, 1, W)
    return enc


@lru_cache(maxsize=32)
def position_fibers(P: int, H: int, W: int, device: str) -> torch.Tensor:
    """The encoding as (H*W) x P rows, row-major over (h, w), cached on ``device``.

    Computed once per map shape: the test and training loops only index into it.
    """
    return positionalencoding2d(P, H, W).reshape(P, H * W).t().contiguous().to(device)
