"""ViT-B/16 encoders (timm), as the published code taps them.

Taps are the OUTPUTS of transformer blocks, in the published decoder order (not shallow to deep):
``-pl 3`` = ``blocks[10]``, ``blocks[2]``, ``blocks[6]``; ``-pl 2`` = ``blocks[2]``, ``blocks[6]``;
``-pl 1`` = ``blocks[6]``. Each tap is B x (1 + N) x 768 tokens; as in the published loops the class
token is dropped and the N = h*w patch tokens are folded row-major into a B x 768 x h x w map::

    e = tap.transpose(1, 2)[..., 1:]            # B x 768 x N
    e = e.reshape(B, 768, sqrt(N), sqrt(N))     # 14 x 14 at 224, 24 x 24 at 384

The blocks run here in timm's order (patch embedding, position embedding, blocks), without forward
hooks, and stop at the deepest tap. A ViT takes only its own input size (224 or 384). The
checkpoint holds the whole timm model's state, as the published ``save_weights`` writes it.
"""
import math
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from custom_models.receptive_field import CellGrid, grid_after
from custom_models.architectures import VITS as ARCHS  # noqa: F401 (the names this family builds)
from custom_models.weights import timm_cache_path as imagenet_cache_path  # noqa: F401
from custom_models.weights import timm_imagenet_state as imagenet_state  # noqa: F401
from custom_models.weights import timm_weights_name as weights_name  # noqa: F401

TAPS = (10, 2, 6)  # block indices, in the published decoder order


def build_net(arch: str) -> nn.Module:
    """timm's randomly initialised model (``timm.create_model(arch, pretrained=False)``)."""
    import timm
    return timm.create_model(arch, pretrained=False)


def tap_plan(arch: str, pool_layers: int, net: nn.Module) -> Tuple[List[str], Tuple[int, ...]]:
    indices = TAPS[-pool_layers:]
    return [f'blocks[{i}]' for i in indices], indices


def fold_tokens(tap: torch.Tensor) -> torch.Tensor:
    """B x (1 + N) x C tokens -> B x C x sqrt(N) x sqrt(N): class token dropped, patches row-major."""
    e = tap.transpose(1, 2)[..., 1:]
    side = math.isqrt(e.shape[2])
    return e.reshape(-1, e.shape[1], side, side)


def cell_grids(net: nn.Module, plan: Tuple[int, ...], input_size: int) -> List[CellGrid]:
    """Patch token i covers pixels 16 i ... 16 i + 15 (the patch embedding; attention moves no token)."""
    return [grid_after(net.patch_embed.named_modules(), input_size)] * len(plan)


def forward_taps(net: nn.Module, plan: Tuple[int, ...], x: torch.Tensor) -> List[torch.Tensor]:
    x = net.patch_embed(x)
    x = net._pos_embed(x)
    x = net.patch_drop(x)
    x = net.norm_pre(x)
    taps = {}  # local, not module state (thread-safe)
    for index, block in enumerate(net.blocks[:max(plan) + 1]):
        x = block(x)
        if index in plan:
            taps[index] = x
    return [fold_tokens(taps[i]) for i in plan]


def unused_key(key: str) -> bool:
    """The classifier side, never run (the final norm, the head)."""
    return key.startswith(('norm.', 'fc_norm.', 'head.', 'head_drop.'))


def normalise_state(arch: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return state


def looks_like(state: Dict[str, torch.Tensor]) -> bool:
    return 'patch_embed.proj.weight' in state and 'cls_token' in state
