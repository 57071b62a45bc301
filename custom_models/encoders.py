"""Frozen ImageNet encoders that return their tapped feature maps ("pool layers").

The published code fills a module-level dict from forward hooks; here an encoder object
returns its taps, shallow to deep, from ``forward``. Tap rules (see the spec):

* ResNets: outputs of ``layer2``, ``layer3``, ``layer4``; the 7x7 stem conv and every
  3x3 conv pad by reflection, as in the authors' copy of torchvision's ResNet.
* MobileNetV3: the 1x1 projection Conv2d (before its BatchNorm) of inverted-residual
  blocks ``features[-11|-10], features[-5], features[-2]``.

``-pl L`` keeps the deepest L taps. ``encoder.net`` is the torchvision module whose state
dict goes into checkpoints: the whole ResNet, or a MobileNet's ``.features``.
"""
import os
import urllib.error
from functools import lru_cache
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torchvision.models as tvm

from custom_models.architectures import ENCODER_ARCHS, MOBILENETS, RESNETS  # noqa: F401 (re-exported)
from utils.errors import CflowError


# Feature-block indices of the three MobileNetV3 taps, shallow to deep.
MOBILENET_TAPS = {'mobilenet_v3_large': (-11, -5, -2), 'mobilenet_v3_small': (-10, -5, -2)}
RESNET_TAPS = ('layer2', 'layer3', 'layer4')


def imagenet_weights(arch: str):
    """The torchvision ``IMAGENET1K_V1`` weights enum of ``arch`` (the published weights)."""
    return tvm.get_model_weights(arch).IMAGENET1K_V1


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


def _build_net(arch: str) -> nn.Module:
    """The randomly initialised torchvision module that ``encoder.net`` holds."""
    model = getattr(tvm, arch)()
    if arch in RESNETS:
        return reflect_pad_convs(model)
    return model.features


class FeatureEncoder(nn.Module):
    """A frozen CNN whose ``forward`` returns the tapped maps, shallow to deep.

    Args:
        arch: one of :data:`ENCODER_ARCHS`.
        pool_layers: how many taps to keep (1..3), the deepest ones.
        net: the torchvision module (``_build_net(arch)``), weights already loaded.
    """

    def __init__(self, arch: str, pool_layers: int, net: nn.Module, probe: bool = True):
        super().__init__()
        if not 1 <= pool_layers <= 3:
            raise CflowError(f'-pl/--pool-layers must be 1, 2 or 3, got {pool_layers}')
        self.arch = arch
        self.pool_layers = pool_layers
        self.net = net
        if arch in RESNETS:
            self.tap_names = list(RESNET_TAPS[-pool_layers:])
        else:
            indices = MOBILENET_TAPS[arch][-pool_layers:]
            self.tap_names = [f'features[{i}]' for i in indices]
            self._tapped = {len(net) + i for i in indices}
            # Running past the deepest tap only costs time: stop there.
            self._last_block = max(self._tapped)
        if probe:  # tap_shapes builds a weightless twin of this encoder, which must not recurse
            self.pool_dims = [shape[0] for shape in tap_shapes(arch, pool_layers, 64)]
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if self.arch in RESNETS:
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            x = n.layer1(x)
            taps = {}
            for name in RESNET_TAPS:
                x = getattr(n, name)(x)
                taps[name] = x
            return [taps[name] for name in self.tap_names]
        taps = []  # local, not module state: threads sharing one encoder keep their own taps
        for index, block in enumerate(self.net[:self._last_block + 1]):
            if index in self._tapped:
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


@lru_cache(maxsize=64)
def tap_shapes(arch: str, pool_layers: int, input_size: int) -> List[tuple]:
    """(C, H, W) of each tap for a square input, from a weightless run on the meta device."""
    with torch.device('meta'):
        encoder = FeatureEncoder(arch, pool_layers, _build_net(arch), probe=False)
        taps = encoder(torch.empty(1, 3, input_size, input_size))
    return [tuple(t.shape[1:]) for t in taps]


def input_size_fits(arch: str, pool_layers: int, input_size: int, min_positions: int = 1) -> bool:
    """Whether every tap exists at this input size and has at least ``min_positions`` positions.

    A ResNet's reflection padding needs each padded map to be larger than its padding, so a
    too-small input fails inside the network; that failure is what this detects.
    """
    try:
        shapes = tap_shapes(arch, pool_layers, input_size)
    except RuntimeError:
        return False
    return all(H * W >= min_positions for _, H, W in shapes)


def smallest_input_size(arch: str, pool_layers: int, min_positions: int = 1, limit: int = 4096) -> int:
    """The smallest square -inp for which :func:`input_size_fits` holds (binary search: it is monotone)."""
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


def _required_keys(net: nn.Module) -> Dict[str, torch.Size]:
    """The state-dict entries the taps depend on (a ResNet's ``fc`` is not used)."""
    return {k: v.shape for k, v in net.state_dict().items() if not _unused_key(k)}


def _unused_key(key: str) -> bool:
    return key.startswith('fc.')


def _mismatches(required: Dict[str, torch.Size], state: Dict[str, torch.Tensor]) -> List[str]:
    """Keys missing, of another shape, or extra (a deeper network holds all of a shallower one's)."""
    bad = [k for k, s in required.items() if k not in state or tuple(state[k].shape) != tuple(s)]
    return bad + [k for k in state if k not in required and not _unused_key(k)]


def _signature(arch: str) -> Dict[str, torch.Size]:
    with torch.device('meta'):
        net = _build_net(arch)
    return _required_keys(net)


def guess_encoder_arch(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """The encoder architecture whose tapped part a state dict fits exactly, if any."""
    for arch in ENCODER_ARCHS:
        if not _mismatches(_signature(arch), normalise_encoder_state(arch, state)):
            return arch
    return None


def normalise_encoder_state(arch: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Accept a whole torchvision MobileNet state dict as well as its ``.features`` one."""
    if arch in MOBILENETS and any(k.startswith('features.') for k in state):
        return {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
    return state


def load_encoder_state(encoder: FeatureEncoder, state: Dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict into ``encoder.net`` after checking it is this architecture.

    Like the published loader, a ResNet's unused ``fc`` is ignored; unlike it, a missing,
    extra or differently shaped key is an error naming the architecture that was found.
    """
    state = normalise_encoder_state(encoder.arch, state)
    required = _required_keys(encoder.net)
    bad = _mismatches(required, state)
    if bad:
        found = guess_encoder_arch(state)
        found_text = f'a {found} encoder' if found else 'an encoder of no supported architecture'
        hint = f'; pass -enc {found}' if found else ''
        raise CflowError(f'{source} holds {found_text}, but -enc is {encoder.arch} '
                         f'({len(bad)} weights missing, extra or of another shape, e.g. {bad[0]!r}){hint}')
    encoder.net.load_state_dict(state, strict=False)


def imagenet_cache_path(arch: str) -> str:
    """Where torchvision keeps (or will download) the ImageNet file of ``arch``."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(imagenet_weights(arch).url))


def _download_imagenet_state(arch: str) -> Dict[str, torch.Tensor]:
    weights = imagenet_weights(arch)
    cache_file = imagenet_cache_path(arch)
    try:
        return weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError) as exc:
        raise CflowError(
            f'cannot get the ImageNet weights of {arch} ({weights.url}: {exc}); either put '
            f'{os.path.basename(cache_file)} into {os.path.dirname(cache_file)}/ (torch hub cache) or pass '
            f'--encoder-weights PATH to that file (or --encoder-weights none for a random-init encoder)') from None


def imagenet_weights_cached(arch: str) -> bool:
    """Whether torchvision's ImageNet file for ``arch`` is already in the hub cache."""
    return os.path.isfile(imagenet_cache_path(arch))


def read_state_file(path: str, what: str) -> dict:
    """``torch.load`` a weights file on the CPU, with a clear error when it cannot."""
    if not os.path.isfile(path):
        raise CflowError(f'{what} {path} does not exist: check the path')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean the same to the user
        raise CflowError(f'{what} {path} is not a readable torch file ({type(exc).__name__}: '
                         f'{str(exc).splitlines()[0] if str(exc) else ""})') from None


def build_encoder(arch: str, pool_layers: int, weights: str = 'imagenet') -> FeatureEncoder:
    """Build a frozen encoder in eval mode.

    Args:
        weights: ``'imagenet'`` (torchvision ``IMAGENET1K_V1``, downloaded or from the
            torch hub cache), ``'none'`` (random init from torch's current RNG state), or
            the path of a state-dict file (a torchvision model's, a MobileNet's
            ``.features``', or a CFLOW checkpoint's ``encoder_state_dict``).
    """
    if arch not in ENCODER_ARCHS:
        raise CflowError(f'unknown encoder {arch!r}: choose one of {", ".join(ENCODER_ARCHS)}')
    encoder = FeatureEncoder(arch, pool_layers, _build_net(arch))
    if weights == 'none':
        return encoder
    if weights == 'imagenet':
        load_encoder_state(encoder, _download_imagenet_state(arch), f'the ImageNet weights of {arch}')
        return encoder
    state = read_state_file(weights, '--encoder-weights file')
    if isinstance(state, dict) and 'encoder_state_dict' in state:
        state = state['encoder_state_dict']
    load_encoder_state(encoder, state, f'--encoder-weights file {weights}')
    return encoder
