import urllib.error

import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm

from custom_models import encoders
from custom_models.encoders import build_encoder, tap_shapes
from utils.errors import CflowError

SPEC_DIMS = {'resnet18': [128, 256, 512], 'resnet34': [128, 256, 512], 'resnet50': [512, 1024, 2048],
             'resnext50_32x4d': [512, 1024, 2048], 'wide_resnet50_2': [512, 1024, 2048],
             'mobilenet_v3_large': [40, 112, 160], 'mobilenet_v3_small': [24, 48, 96]}


@pytest.mark.parametrize('arch', sorted(SPEC_DIMS))
def test_tapped_channels_and_strides(arch):
    assert tap_shapes(arch, 3, 256) == [(SPEC_DIMS[arch][0], 32, 32), (SPEC_DIMS[arch][1], 16, 16),
                                        (SPEC_DIMS[arch][2], 8, 8)]
    assert [s[0] for s in tap_shapes(arch, 2, 128)] == SPEC_DIMS[arch][1:]  # -pl 2: the two deepest
    assert [s[0] for s in tap_shapes(arch, 1, 128)] == SPEC_DIMS[arch][2:]


def test_resnet_pads_3x3_and_7x7_convs_by_reflection_only():
    net = build_encoder('resnet18', 3, 'none').net
    modes = {(m.kernel_size, m.padding_mode) for m in net.modules() if isinstance(m, nn.Conv2d)}
    assert modes == {((7, 7), 'reflect'), ((3, 3), 'reflect'), ((1, 1), 'zeros')}


def test_resnet_taps_equal_a_reflect_padded_torchvision_forward():
    torch.manual_seed(0)
    encoder = build_encoder('resnet18', 3, 'none')
    reference = tvm.resnet18()
    for m in reference.modules():  # the authors' ResNet, built independently
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1):
            m.padding_mode = 'reflect'
    reference.load_state_dict(encoder.net.state_dict())
    reference.eval()
    outputs = {}
    for name in ('layer2', 'layer3', 'layer4'):
        getattr(reference, name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        taps = encoder(x)
        reference(x)
    for tap, name in zip(taps, ('layer2', 'layer3', 'layer4')):
        assert torch.equal(tap, outputs[name])


@pytest.mark.parametrize('arch,indices', [('mobilenet_v3_large', (-11, -5, -2)), ('mobilenet_v3_small', (-10, -5, -2))])
def test_mobilenet_taps_are_the_projection_conv_before_its_batchnorm(arch, indices):
    torch.manual_seed(0)
    encoder = build_encoder(arch, 3, 'none')
    features = getattr(tvm, arch)().features
    features.load_state_dict(encoder.net.state_dict())
    features.eval()
    outputs = []
    for i in indices:
        conv = features[i].block[-1][0]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
        conv.register_forward_hook(lambda m, i, o: outputs.append(o))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        taps = encoder(x)
        features(x)  # the whole .features, as the published code runs it
    assert len(taps) == 3
    for tap, expected in zip(taps, outputs):
        assert torch.equal(tap, expected)


def test_offline_imagenet_download_names_the_file_and_both_fixes(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError('Name or service not known')
    monkeypatch.setattr(tvm.WeightsEnum, 'get_state_dict', offline)
    with pytest.raises(CflowError) as info:
        build_encoder('wide_resnet50_2', 3, 'imagenet')
    text = str(info.value)
    assert 'wide_resnet50_2-95faca4d.pth' in text and '--encoder-weights' in text and 'hub' in text


def test_encoder_weights_file_loads_and_checks_architecture(tmp_path):
    torch.manual_seed(3)
    source = tvm.resnet18()
    path = tmp_path / 'r18.pth'
    torch.save(source.state_dict(), path)
    encoder = build_encoder('resnet18', 3, str(path))
    assert torch.equal(encoder.net.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    with pytest.raises(CflowError, match='holds a resnet18 encoder, but -enc is resnet50'):
        build_encoder('resnet50', 3, str(path))
    # a ResNet-34 holds every ResNet-18 key with the same shape: its extra blocks must not pass
    torch.save(tvm.resnet34().state_dict(), tmp_path / 'r34.pth')
    with pytest.raises(CflowError, match='holds a resnet34 encoder, but -enc is resnet18.*-enc resnet34'):
        build_encoder('resnet18', 3, str(tmp_path / 'r34.pth'))
    mnv3 = tvm.mobilenet_v3_small()
    torch.save(mnv3.state_dict(), tmp_path / 'mnv3.pth')  # a whole-model file: 'features.' keys
    encoder = build_encoder('mobilenet_v3_small', 3, str(tmp_path / 'mnv3.pth'))
    assert torch.equal(encoder.net[4].block[-1][0].weight, mnv3.features[4].block[-1][0].weight)
    with pytest.raises(CflowError, match='does not exist'):
        build_encoder('resnet18', 3, str(tmp_path / 'missing.pth'))
    (tmp_path / 'junk.pth').write_text('not a torch file')
    with pytest.raises(CflowError, match='not a readable torch file'):
        build_encoder('resnet18', 3, str(tmp_path / 'junk.pth'))
