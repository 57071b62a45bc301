"""The architecture names, import-light, so that ``--help`` and flag checks need neither torch,
torchvision nor timm.

Each encoder family lives in its own module (``custom_models/{family}_encoders.py``) behind the
registry in ``custom_models/encoders.py``; this file only says which names each family accepts.
"""
from typing import Optional

RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnext50_32x4d', 'wide_resnet50_2')
MOBILENETS = ('mobilenet_v3_large', 'mobilenet_v3_small')
# The published code's timm encoders (built with timm.create_model, as published).
VITS = ('vit_base_patch16_224', 'vit_base_patch16_384')
# EfficientNet: any timm name with 'efficient' and 'b5' (the published rule); these are timm's today.
EFFICIENTNETS = ('tf_efficientnet_b5', 'efficientnet_b5')
ENCODER_ARCHS = RESNETS + MOBILENETS + VITS + EFFICIENTNETS
DECODER_ARCHS = ('freia-cflow', 'freia-flow')

# The one input size a ViT takes (its position embedding has one entry per 16 x 16 patch).
VIT_INPUT_SIZES = {'vit_base_patch16_224': 224, 'vit_base_patch16_384': 384}


def encoder_family(arch: str) -> Optional[str]:
    """'resnet', 'mobilenet', 'vit' or 'efficientnet': the family module that builds ``arch``; None if none does.

    As in the published ``load_encoder_arch``: a ViT must be one of :data:`VITS` exactly (no other
    ViT is accepted), an EfficientNet any name containing ``efficient`` and ``b5``.
    """
    if arch in RESNETS:
        return 'resnet'
    if arch in MOBILENETS:
        return 'mobilenet'
    if arch in VITS:
        return 'vit'
    if 'efficient' in arch and 'b5' in arch:
        return 'efficientnet'
    return None


def fixed_input_size(arch: str) -> Optional[int]:
    """The only -inp an encoder takes, or None where any size large enough works."""
    return VIT_INPUT_SIZES.get(arch)


def encoder_names_text() -> str:
    return ', '.join(RESNETS + MOBILENETS + VITS) + ", or a timm EfficientNet-B5 (a name with 'efficient' and 'b5', " \
        'e.g. ' + ', '.join(EFFICIENTNETS) + ')'
