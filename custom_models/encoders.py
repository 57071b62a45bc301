"""Frozen ImageNet encoders that return their tapped feature maps ("pool layers").

The published code fills a module-level dict from forward hooks; here an encoder object returns
its taps from ``forward``, in the published decoder order. Each family lives in its own module,
like torchvision's ``models/``; this registry maps a name to it (``custom_models/architectures.py``
says which names each family accepts). A family module provides::

    ARCHS                                 # the names it builds (custom_models/architectures.py)
    build_net(arch) -> nn.Module          # random init; its state dict goes into checkpoints
    tap_plan(arch, pool_layers, net)      # (tap names, what forward_taps needs to find them)
    forward_taps(net, plan, x) -> [maps]  # B x C x H x W each, in decoder order
    cell_grids(net, plan, input_size)     # where each tap's cells sit on the input (receptive_field.py)
    unused_key(key)                       # state entries never run (a classifier head)
    normalise_state(arch, state)          # accepted variants of the state dict's keys
    looks_like(state)                     # a cheap key test before the exact check
    imagenet_state(arch), imagenet_cache_path(arch), weights_name(arch)

ResNets, MobileNets (torchvision) and ViT-B/16, EfficientNet-B5 (timm, imported only when used).
"""
import os
from functools import lru_cache
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from custom_models import efficientnet_encoders, mobilenet_encoders, resnet_encoders, vit_encoders
from custom_models.architectures import (ENCODER_ARCHS, MOBILENETS, RESNETS, encoder_family,  # noqa: F401
                                         encoder_names_text, fixed_input_size)
from custom_models.weights import read_state_file  # noqa: F401 (re-exported)
from utils.errors import CflowError

FAMILIES = {'resnet': resnet_encoders, 'mobilenet': mobilenet_encoders, 'vit': vit_encoders,
            'efficientnet': efficientnet_encoders}


def family(arch: str):
    """The module that builds ``arch`` (one error listing the accepted names otherwise)."""
    kind = encoder_family(arch)
    if kind is None:
        raise CflowError(f'unknown encoder -enc {arch!r}: choose one of {encoder_names_text()}')
    return FAMILIES[kind]


def build_net(arch: str) -> nn.Module:
    """The randomly initialised module that ``encoder.net`` holds."""
    return family(arch).build_net(arch)


class FeatureEncoder(nn.Module):
    """A frozen network whose ``forward`` returns the tapped maps, in decoder order.

    Args:
        arch: an encoder name (:func:`custom_models.architectures.encoder_family` knows it).
        pool_layers: how many taps to keep (1..3), as the published ``-pl``.
        net: the family's module (``build_net(arch)``), weights already loaded.
    """

    def __init__(self, arch: str, pool_layers: int, net: nn.Module, probe: bool = True):
        super().__init__()
        if not 1 <= pool_layers <= 3:
            raise CflowError(f'-pl/--pool-layers must be 1, 2 or 3, got {pool_layers}')
        self.arch = arch
        self.kind = encoder_family(arch)
        self.pool_layers = pool_layers
        self.net = net
        self.tap_names, self.tap_plan = family(arch).tap_plan(arch, pool_layers, net)
        if probe:  # tap_shapes builds a weightless twin of this encoder, which must not recurse
            self.pool_dims = [shape[0] for shape in tap_shapes(arch, pool_layers, probe_size(arch))]
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return FAMILIES[self.kind].forward_taps(self.net, self.tap_plan, x)

    def cell_grids(self, input_size: int) -> list:
        """Per tap, where its cells sit on an ``input_size`` image (``custom_models.receptive_field``)."""
        return FAMILIES[self.kind].cell_grids(self.net, self.tap_plan, input_size)


def probe_size(arch: str) -> int:
    """An input size every encoder of this name takes (for its tap dims)."""
    return fixed_input_size(arch) or 64


@lru_cache(maxsize=64)
def tap_shapes(arch: str, pool_layers: int, input_size: int) -> List[tuple]:
    """(C, H, W) of each tap for a square input, from a weightless run on the meta device."""
    with torch.device('meta'):
        encoder = FeatureEncoder(arch, pool_layers, build_net(arch), probe=False)
        taps = encoder(torch.empty(1, 3, input_size, input_size))
    return [tuple(t.shape[1:]) for t in taps]


def input_size_fits(arch: str, pool_layers: int, input_size: int, min_positions: int = 1) -> bool:
    """Whether every tap exists at this input size and has at least ``min_positions`` positions.

    A ResNet's reflection padding needs each padded map to be larger than its padding, so a
    too-small input fails inside the network; that failure is what this detects. A ViT takes
    only its own size.
    """
    fixed = fixed_input_size(arch)
    if fixed is not None and input_size != fixed:
        return False
    try:
        shapes = tap_shapes(arch, pool_layers, input_size)
    except RuntimeError:
        return False
    return all(H * W >= min_positions for _, H, W in shapes)


def smallest_input_size(arch: str, pool_layers: int, min_positions: int = 1, limit: int = 4096) -> int:
    """The smallest square -inp for which :func:`input_size_fits` holds (binary search: it is monotone)."""
    fixed = fixed_input_size(arch)
    if fixed is not None:
        return fixed
    low, high = 1, limit
    while low < high:
        middle = (low + high) // 2
        if input_size_fits(arch, pool_layers, middle, min_positions):
            high = middle
        else:
            low = middle + 1
    return low


# ----------------------------------------------------------------------------------
# Weights


def tapped_state(arch: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The entries of a state dict the taps can depend on (a classifier head is never run)."""
    unused = family(arch).unused_key
    return {k: v for k, v in state.items() if not unused(k)}


def _required_keys(arch: str, net: nn.Module) -> Dict[str, torch.Size]:
    return {k: v.shape for k, v in tapped_state(arch, net.state_dict()).items()}


def _mismatches(arch: str, required: Dict[str, torch.Size], state: Dict[str, torch.Tensor]) -> List[str]:
    """Keys missing, of another shape, or extra (a deeper network holds all of a shallower one's)."""
    bad = [k for k, s in required.items() if k not in state or tuple(state[k].shape) != tuple(s)]
    return bad + [k for k in tapped_state(arch, state) if k not in required]


@lru_cache(maxsize=None)
def _signature(arch: str) -> Dict[str, torch.Size]:
    with torch.device('meta'):
        net = build_net(arch)
    return _required_keys(arch, net)


def fits(arch: str, state: Dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` is exactly the tapped part of an ``arch`` network."""
    return not _mismatches(arch, _signature(arch), normalise_encoder_state(arch, state))


def guess_encoder_arch(state: Dict[str, torch.Tensor], preferred: Optional[str] = None) -> Optional[str]:
    """The encoder architecture whose tapped part a state dict fits exactly, if any (``preferred``
    first: tf_efficientnet_b5 and efficientnet_b5 have the same tensors, so only a flag can tell them
    apart). A family is only built (timm imported) where its keys look like the state's."""
    if preferred is not None and encoder_family(preferred) and fits(preferred, state):
        return preferred
    for module in FAMILIES.values():
        if module.looks_like(state):
            for arch in module.ARCHS:
                if fits(arch, state):
                    return arch
    return None


def normalise_encoder_state(arch: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The family's accepted key variants (e.g. a whole torchvision MobileNet as well as its ``.features``)."""
    return family(arch).normalise_state(arch, state)


def load_encoder_state(encoder: FeatureEncoder, state: Dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict into ``encoder.net`` after checking it is this architecture.

    Like the published loader, entries that are never run (a classifier head) are ignored;
    unlike it, a missing, extra or differently shaped key is an error naming the architecture
    that was found.
    """
    state = normalise_encoder_state(encoder.arch, state)
    bad = _mismatches(encoder.arch, _required_keys(encoder.arch, encoder.net), state)
    if bad:
        found = guess_encoder_arch(state)
        found_text = f'a {found} encoder' if found else 'an encoder of no supported architecture'
        hint = f'; pass -enc {found}' if found else ''
        raise CflowError(f'{source} holds {found_text}, but -enc is {encoder.arch} '
                         f'({len(bad)} weights missing, extra or of another shape, e.g. {bad[0]!r}){hint}')
    encoder.net.load_state_dict(state, strict=False)


def imagenet_cache_path(arch: str) -> str:
    """Where the pretrained file of ``arch`` is read from (torch hub cache; timm's own folder there)."""
    return family(arch).imagenet_cache_path(arch)


def imagenet_weights_cached(arch: str) -> bool:
    """Whether the pretrained file for ``arch`` is already on this machine."""
    return os.path.isfile(imagenet_cache_path(arch))


def weights_name(arch: str) -> str:
    """The pretrained weights this project downloads for ``arch`` (recorded in compact files)."""
    return family(arch).weights_name(arch)


def build_encoder(arch: str, pool_layers: int, weights: str = 'imagenet') -> FeatureEncoder:
    """Build a frozen encoder in eval mode.

    Args:
        weights: ``'imagenet'`` (torchvision ``IMAGENET1K_V1``, or timm's default pretrained tag,
            downloaded or from the torch hub cache), ``'none'`` (random init from torch's current RNG
            state), or the path of a state-dict file (``.pth``/``.pt``/``.safetensors``: a torchvision or
            timm model's, a MobileNet's ``.features``', or a CFLOW checkpoint's ``encoder_state_dict``).
    """
    encoder = FeatureEncoder(arch, pool_layers, build_net(arch))
    if weights == 'none':
        return encoder
    if weights == 'imagenet':
        load_encoder_state(encoder, family(arch).imagenet_state(arch), f'the ImageNet weights of {arch}')
        return encoder
    state = read_state_file(weights, '--encoder-weights file')
    if isinstance(state, dict) and 'encoder_state_dict' in state:
        state = state['encoder_state_dict']
    load_encoder_state(encoder, state, f'--encoder-weights file {weights}')
    return encoder
