"""The architecture names, import-light, so that ``--help`` and flag checks need neither torch
nor torchvision."""

RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnext50_32x4d', 'wide_resnet50_2')
MOBILENETS = ('mobilenet_v3_large', 'mobilenet_v3_small')
ENCODER_ARCHS = RESNETS + MOBILENETS
DECODER_ARCHS = ('freia-cflow', 'freia-flow')
