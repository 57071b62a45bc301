"""Where encoder weights come from: a file, torchvision's ImageNet weights, or timm's.

Shared by the encoder families: ResNets and MobileNets take torchvision's ``IMAGENET1K_V1`` (the
published weights); the timm families take the pretrained tag that timm serves today for that name
(downloaded by timm from the Hugging Face hub, or read from a local copy in the torch hub cache).
"""
import os
import urllib.error
from typing import Dict

import torch

from utils.errors import CflowError


def read_state_file(path: str, what: str) -> dict:
    """A weights file on the CPU (``torch.save`` or ``.safetensors``), with a clear error when it cannot be read."""
    if not os.path.isfile(path):
        raise CflowError(f'{what} {path} does not exist: check the path')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # pickle, zip, safetensors and torch errors all mean the same to the user
        raise CflowError(f'{what} {path} is not a readable torch file ({type(exc).__name__}: '
                         f'{str(exc).splitlines()[0] if str(exc) else ""})') from None


# ----------------------------------------------------------------------------------
# torchvision (ResNets, MobileNets)


def torchvision_weights(arch: str):
    """The torchvision ``IMAGENET1K_V1`` weights enum of ``arch`` (the published weights)."""
    import torchvision.models as tvm
    return tvm.get_model_weights(arch).IMAGENET1K_V1


def torchvision_weights_name(arch: str) -> str:
    return 'torchvision IMAGENET1K_V1'


def torchvision_cache_path(arch: str) -> str:
    """Where torchvision keeps (or will download) the ImageNet file of ``arch``."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(torchvision_weights(arch).url))


def torchvision_imagenet_state(arch: str) -> Dict[str, torch.Tensor]:
    weights = torchvision_weights(arch)
    cache_file = torchvision_cache_path(arch)
    try:
        return weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError) as exc:
        raise CflowError(
            f'cannot get the ImageNet weights of {arch} ({weights.url}: {exc}); either put '
            f'{os.path.basename(cache_file)} into {os.path.dirname(cache_file)}/ (torch hub cache) or pass '
            f'--encoder-weights PATH to that file (or --encoder-weights none for a random-init encoder)') from None


# ----------------------------------------------------------------------------------
# timm (ViT, EfficientNet)


def timm_pretrained_cfg(arch: str):
    """timm's default pretrained config for ``arch`` (its tag and hub id), read without building the model."""
    import timm
    from timm.models import get_pretrained_cfg
    if arch not in timm.list_models():
        raise CflowError(f'-enc {arch} is not a timm model: pass one of '
                         f'{", ".join(timm.list_models("*efficient*b5*"))}')
    return get_pretrained_cfg(arch)


def timm_weights_name(arch: str) -> str:
    cfg = timm_pretrained_cfg(arch)
    return f'timm {arch}.{cfg.tag}' if cfg is not None and cfg.tag else f'timm {arch}'


def timm_cache_path(arch: str) -> str:
    """The local copy of timm's pretrained file this project reads first: ``<torch hub>/checkpoints/timm/``."""
    cfg = timm_pretrained_cfg(arch)
    tag = f'.{cfg.tag}' if cfg is not None and cfg.tag else ''
    return os.path.join(torch.hub.get_dir(), 'checkpoints', 'timm', f'{arch}{tag}.safetensors')


def timm_download_url(arch: str) -> str:
    cfg = timm_pretrained_cfg(arch)
    if cfg is not None and cfg.hf_hub_id:
        return f'https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors'
    return cfg.url if cfg is not None else '(timm has no pretrained weights for this name)'


def timm_imagenet_state(arch: str) -> Dict[str, torch.Tensor]:
    """timm's pretrained weights of ``arch``: the local copy if present, else timm's own download."""
    local = timm_cache_path(arch)
    if os.path.isfile(local):
        return read_state_file(local, 'timm weights file')
    import timm
    try:
        return timm.create_model(arch, pretrained=True).state_dict()
    except Exception as exc:  # huggingface_hub and urllib raise many kinds for "no network"
        raise CflowError(
            f'cannot get timm\'s pretrained weights of {arch} ({timm_download_url(arch)}: {type(exc).__name__}); '
            f'either put that model.safetensors at {local} or pass --encoder-weights PATH to it '
            f'(or --encoder-weights none for a random-init encoder)') from None
