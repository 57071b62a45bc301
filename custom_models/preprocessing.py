"""The image size and normalisation an encoder sees, exactly as the published ``main.py`` sets them.

torchvision encoders (ResNets, MobileNets): images resized to ``-inp`` x ``-inp`` and normalised with
the dataset's constants (ImageNet mean/std; STC mean 0.5, std 0.225).

timm encoders (the published rule: any name containing ``vit`` or ``efficient``)::

    arch_config = resolve_data_config({}, model=encoder)
    c.norm_mean, c.norm_std = list(arch_config['mean']), list(arch_config['mean'])   # std = the MEAN
    c.img_size = c.crp_size = arch_config['input_size'][1:]

so the size is timm's for the name (tf_efficientnet_b5 456, efficientnet_b5 448, ViT 224 / 384),
whatever ``-inp`` says (``-inp`` only names the run, ``..._inp256_...``), and the std is timm's mean:
x = (image - mean) / mean, e.g. (x - 0.485) / 0.485 for EfficientNet-B5, (x - 0.5) / 0.5 for ViT.
The slip is kept on purpose: every checkpoint the published code trained with these encoders saw
inputs made this way.
"""
from dataclasses import dataclass
from typing import Sequence, Tuple

from custom_models.architectures import encoder_family


@dataclass(frozen=True)
class EncoderInput:
    """What the encoder is fed: ``size`` x ``size`` images, x = (image - mean) / std."""
    size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


def uses_timm_data_config(arch: str) -> bool:
    """The published test (``'vit' in c.enc_arch or 'efficient' in c.enc_arch``), for the names we build."""
    return encoder_family(arch) in ('vit', 'efficientnet')


def timm_data_config(arch: str) -> Tuple[Tuple[int, int], Tuple[float, ...]]:
    """((H, W), mean) of timm's data config for ``arch`` (``resolve_data_config({}, model=encoder)``:
    the model's default pretrained config, read without building the model)."""
    from timm.data import resolve_data_config
    from custom_models.weights import timm_pretrained_cfg
    cfg = timm_pretrained_cfg(arch)
    config = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    return tuple(config['input_size'][1:]), tuple(float(m) for m in config['mean'])


def published_input(arch: str, input_size: int, mean: Sequence[float], std: Sequence[float]) -> EncoderInput:
    """The input the published code feeds ``arch``: ``-inp`` with the dataset's ``mean``/``std`` for
    torchvision encoders; timm's size with mean = std = timm's mean for timm encoders (module docstring)."""
    if not uses_timm_data_config(arch):
        return EncoderInput(int(input_size), tuple(mean), tuple(std))
    (height, width), timm_mean = timm_data_config(arch)
    assert height == width, f'{arch}: timm states a non-square input {height} x {width}'
    return EncoderInput(int(height), timm_mean, timm_mean)
