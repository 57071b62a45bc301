"""MobileNetV3 encoders (torchvision): taps at the 1x1 projection Conv2d (before its BatchNorm) of
the inverted-residual blocks ``features[-11|-10]``, ``features[-5]``, ``features[-2]``.

Taps without forward hooks: the blocks are run here in torchvision's order and the projection's
output is returned, so one encoder serves many threads and exports to ONNX. ``-pl L`` keeps the
deepest L taps. The checkpoint holds the state of ``.features`` only (keys start at ``0.``).
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from custom_models.receptive_field import CellGrid, grid_after, modules_through
from custom_models.architectures import MOBILENETS as ARCHS  # noqa: F401 (the names this family builds)
from custom_models.weights import torchvision_cache_path as imagenet_cache_path  # noqa: F401
from custom_models.weights import torchvision_imagenet_state as imagenet_state  # noqa: F401
from custom_models.weights import torchvision_weights_name as weights_name  # noqa: F401

# Feature-block indices of the three taps, shallow to deep.
TAPS = {'mobilenet_v3_large': (-11, -5, -2), 'mobilenet_v3_small': (-10, -5, -2)}


def build_net(arch: str) -> nn.Module:
    """The randomly initialised ``.features`` of torchvision's MobileNetV3."""
    import torchvision.models as tvm
    return getattr(tvm, arch)().features


def tap_plan(arch: str, pool_layers: int, net: nn.Module) -> Tuple[List[str], Tuple[int, ...]]:
    """(names, non-negative block indices) of the deepest ``pool_layers`` taps, shallow to deep."""
    indices = TAPS[arch][-pool_layers:]
    return [f'features[{i}]' for i in indices], tuple(len(net) + i for i in indices)


def cell_grids(net: nn.Module, plan: Tuple[int, ...], input_size: int) -> List[CellGrid]:
    """Where each tap's cells sit on the input (custom_models/receptive_field.py)."""
    return [grid_after(modules_through(net, str(i)), input_size) for i in plan]


def forward_taps(net: nn.Module, plan: Tuple[int, ...], x: torch.Tensor) -> List[torch.Tensor]:
    taps = []  # local, not module state: threads sharing one encoder keep their own taps
    for index, block in enumerate(net[:max(plan) + 1]):  # running past the deepest tap only costs time
        if index in plan:
            x, tap = inverted_residual_with_tap(block, x)
            taps.append(tap)
        else:
            x = block(x)
    return taps


def inverted_residual_with_tap(block: nn.Module, x: torch.Tensor):
    """torchvision's InvertedResidual.forward, also returning the output of its last 1x1 projection
    conv before that conv's BatchNorm (the published tap): the same operations in the same order."""
    *layers, projection = block.block
    h = x
    for layer in layers:
        h = layer(h)
    conv, *after = projection  # (Sequential subclasses cannot be sliced)
    tap = conv(h)
    h = tap
    for layer in after:
        h = layer(h)
    if block.use_res_connect:
        h = h + x
    return h, tap


def unused_key(key: str) -> bool:
    return False


def normalise_state(arch: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Accept a whole torchvision MobileNet state dict as well as its ``.features`` one."""
    if any(k.startswith('features.') for k in state):
        return {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
    return state


def looks_like(state: Dict[str, torch.Tensor]) -> bool:
    return '0.0.weight' in state or 'features.0.0.weight' in state
