"""EfficientNet-B5 encoders (timm), as the published code taps them.

Any timm name with ``efficient`` and ``b5`` (e.g. ``tf_efficientnet_b5``, ``efficientnet_b5``). Taps
are the output of ``bn3`` (BatchNorm of the 1x1 projection, before the residual add) of the LAST
layer of stages ``blocks[-5]``, ``blocks[-3]``, ``blocks[-2]``, shallow to deep (``-pl 2`` the last two,
``-pl 1`` ``blocks[-2]``); tf_efficientnet_b5 gives 64 x H/8, 176 x H/16, 304 x H/32.

The stages run here in timm's order (stem, then blocks), without forward hooks, and stop after the
deepest tapped stage. The checkpoint holds the whole timm model's state.
"""
import itertools
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from custom_models.receptive_field import CellGrid, grid_after, modules_through
from custom_models.architectures import EFFICIENTNETS as ARCHS  # noqa: F401 (timm's names today; the rule is wider)
from custom_models.weights import timm_cache_path as imagenet_cache_path  # noqa: F401
from custom_models.weights import timm_imagenet_state as imagenet_state  # noqa: F401
from custom_models.weights import timm_weights_name as weights_name  # noqa: F401

TAPS = (-5, -3, -2)  # stage indices, shallow to deep


def build_net(arch: str) -> nn.Module:
    """timm's randomly initialised model (``timm.create_model(arch, pretrained=False)``)."""
    import timm
    from custom_models.weights import timm_pretrained_cfg
    timm_pretrained_cfg(arch)  # a name timm does not know is one line naming those it does
    return timm.create_model(arch, pretrained=False)


def tap_plan(arch: str, pool_layers: int, net: nn.Module) -> Tuple[List[str], Tuple[int, ...]]:
    indices = TAPS[-pool_layers:]
    return [f'blocks[{i}][-1].bn3' for i in indices], tuple(len(net.blocks) + i for i in indices)


def cell_grids(net: nn.Module, plan: Tuple[int, ...], input_size: int) -> List[CellGrid]:
    """Where each tap's cells sit on the input (custom_models/receptive_field.py): stem, then the stages
    through the tapped one (tf_ models pad the TensorFlow way, so this depends on ``input_size``)."""
    stem = list(modules_through(net, 'bn1'))
    return [grid_after(itertools.chain(stem, net.blocks[:i + 1].named_modules(prefix='blocks')), input_size)
            for i in plan]


def forward_taps(net: nn.Module, plan: Tuple[int, ...], x: torch.Tensor) -> List[torch.Tensor]:
    x = net.bn1(net.conv_stem(x))
    taps = []  # local, not module state (thread-safe)
    for index, stage in enumerate(net.blocks[:max(plan) + 1]):
        if index in plan:
            *layers, last = stage
            for layer in layers:
                x = layer(x)
            x, tap = inverted_residual_with_tap(last, x)
            taps.append(tap)
        else:
            x = stage(x)
    return taps


def inverted_residual_with_tap(block: nn.Module, x: torch.Tensor):
    """timm's InvertedResidual.forward, also returning the output of ``bn3`` (the published tap):
    the same operations in the same order."""
    shortcut = x
    if getattr(block, 'conv_s2d', None) is not None:
        x = block.bn_s2d(block.conv_s2d(x))
    x = block.bn1(block.conv_pw(x))
    x = block.bn2(block.conv_dw(x))
    x = block.se(block.aa(x))
    tap = block.bn3(block.conv_pwl(x))
    x = tap
    if block.has_skip:
        x = block.drop_path(x) + shortcut
    return x, tap


def unused_key(key: str) -> bool:
    """The classifier side, never run (head conv, its BatchNorm, the classifier)."""
    return key.startswith(('conv_head.', 'bn2.', 'classifier.'))


def normalise_state(arch: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return state


def looks_like(state: Dict[str, torch.Tensor]) -> bool:
    return 'conv_stem.weight' in state and 'blocks.0.0.conv_dw.weight' in state
