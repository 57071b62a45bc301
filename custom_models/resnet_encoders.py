"""ResNet encoders (torchvision): taps at the outputs of ``layer2``, ``layer3``, ``layer4``.

The 7x7 stem conv and every 3x3 conv pad by reflection, as in the authors' copy of torchvision's
ResNet. ``-pl L`` keeps the deepest L taps. The checkpoint holds the whole ResNet's state (its
``fc`` is never used and never checked).
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from custom_models.receptive_field import CellGrid, grid_after, modules_through
from custom_models.architectures import RESNETS as ARCHS  # noqa: F401 (the names this family builds)
from custom_models.weights import torchvision_cache_path as imagenet_cache_path  # noqa: F401
from custom_models.weights import torchvision_imagenet_state as imagenet_state  # noqa: F401
from custom_models.weights import torchvision_weights_name as weights_name  # noqa: F401

TAPS = ('layer2', 'layer3', 'layer4')


def reflect_pad_convs(resnet: nn.Module) -> nn.Module:
    """Switch the 7x7 stem conv and every 3x3 conv to reflection padding, in place.

    The authors' ResNet copy builds these convs with ``padding_mode='reflect'``; 1x1
    convs and the max-pool keep their padding. Conv2d keeps its padding amounts for
    every mode, so changing the mode after construction gives the same module.
    """
    for module in resnet.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size in ((3, 3), (7, 7)):
            module.padding_mode = 'reflect'
    return resnet


def build_net(arch: str) -> nn.Module:
    """The randomly initialised ResNet (reflection padding) whose state goes into checkpoints."""
    import torchvision.models as tvm
    return reflect_pad_convs(getattr(tvm, arch)())


def tap_plan(arch: str, pool_layers: int, net: nn.Module) -> Tuple[List[str], Tuple[int, ...]]:
    """(names, indices into TAPS) of the deepest ``pool_layers`` taps, shallow to deep."""
    indices = tuple(range(len(TAPS)))[-pool_layers:]
    return [TAPS[i] for i in indices], indices


def cell_grids(net: nn.Module, plan: Tuple[int, ...], input_size: int) -> List[CellGrid]:
    """Where each tap's cells sit on the input (custom_models/receptive_field.py)."""
    return [grid_after(modules_through(net, TAPS[i]), input_size) for i in plan]


def forward_taps(net: nn.Module, plan: Tuple[int, ...], x: torch.Tensor) -> List[torch.Tensor]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer1(x)
    taps = []
    for name in TAPS:
        x = getattr(net, name)(x)
        taps.append(x)
    return [taps[i] for i in plan]


def unused_key(key: str) -> bool:
    return key.startswith('fc.')


def normalise_state(arch: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return state


def looks_like(state: Dict[str, torch.Tensor]) -> bool:
    return 'conv1.weight' in state and 'layer1.0.conv1.weight' in state
