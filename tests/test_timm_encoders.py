"""The published code's timm encoders (ViT-B/16, EfficientNet-B5): taps, names, sizes and weights.

The fixtures (tests/test_reference_fixture.py) hold what the authors' hooks give; here the taps are
also compared with hooks on timm's own forward, and every refusal is one line."""
import os
import subprocess
import sys

import pytest
import torch

from custom_models.encoders import build_encoder, tap_shapes
from utils.errors import CflowError

from tests.conftest import ROOT
from tests.test_errors import assert_one_line_error, run_cli

timm = pytest.importorskip('timm')


def test_tap_shapes_and_the_published_order():
    assert tap_shapes('vit_base_patch16_224', 3, 224) == [(768, 14, 14)] * 3
    assert tap_shapes('vit_base_patch16_384', 1, 384) == [(768, 24, 24)]
    assert tap_shapes('tf_efficientnet_b5', 3, 256) == [(64, 32, 32), (176, 16, 16), (304, 8, 8)]
    assert tap_shapes('tf_efficientnet_b5', 2, 256) == [(176, 16, 16), (304, 8, 8)]
    with torch.device('meta'):
        from custom_models.encoders import FeatureEncoder, build_net
        vit = build_net('vit_base_patch16_224')
        names = [FeatureEncoder('vit_base_patch16_224', pl, vit, probe=False).tap_names for pl in (3, 2, 1)]
        eff = build_net('tf_efficientnet_b5')
        eff_names = FeatureEncoder('tf_efficientnet_b5', 1, eff, probe=False).tap_names
    assert names == [['blocks[10]', 'blocks[2]', 'blocks[6]'], ['blocks[2]', 'blocks[6]'], ['blocks[6]']]
    assert eff_names == ['blocks[-2][-1].bn3']


def test_vit_taps_equal_hooks_on_timm_forward_folded_as_published():
    torch.manual_seed(0)
    encoder = build_encoder('vit_base_patch16_224', 3, 'none')
    outputs = {}
    hooks = [encoder.net.blocks[i].register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o))
             for i in (10, 2, 6)]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        taps = encoder(x)
        encoder.net(x)  # timm's whole forward, as the published code runs it
    for h in hooks:
        h.remove()
    for tap, i in zip(taps, (10, 2, 6)):
        e = outputs[i].transpose(1, 2)[..., 1:]  # the published loops' token fold
        assert torch.equal(tap, e.reshape(-1, e.size(1), 14, 14))


def test_efficientnet_taps_equal_hooks_on_bn3():
    torch.manual_seed(0)
    encoder = build_encoder('efficientnet_b5', 3, 'none')
    outputs = []
    for stage in (-5, -3, -2):
        encoder.net.blocks[stage][-1].bn3.register_forward_hook(lambda m, a, o: outputs.append(o))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        taps = encoder(x)
        del outputs[:]
        encoder.net(x)
    assert [t.shape[1] for t in taps] == [64, 176, 304]
    for tap, expected in zip(taps, outputs):
        assert torch.equal(tap, expected)


BASE = ['--dataset', 'demo', '--no-cuda', '--encoder-weights', 'none']


def test_a_vit_at_another_inp_is_fed_its_own_size_and_named_by_inp(capsys):
    """As published: -inp only names a timm run (the authors' files say inp256 for 456-px EfficientNets)."""
    from config import parse_config
    for arch, size in (('vit_base_patch16_224', 224), ('vit_base_patch16_384', 384)):
        c = parse_config(BASE + ['-enc', arch, '-inp', '256'])
        assert c.input_size == size and '_inp256_' in c.model
    assert '-inp 256 only names the run' in capsys.readouterr().out


@pytest.mark.parametrize('name', ['vit_large_patch16_224', 'efficientnet_b3', 'efficientnet_b5x'])
def test_a_timm_name_outside_the_published_set_is_one_line(capsys, demo_root, name):
    rc, err = run_cli(capsys, BASE + ['--data-path', demo_root, '-enc', name, '-inp', '224'])
    assert_one_line_error(rc, err, name, 'tf_efficientnet_b5')
    if not name.startswith('efficientnet_b5'):
        assert 'vit_base_patch16_224' in err and 'vit_base_patch16_384' in err


def test_offline_timm_weights_name_the_file_and_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError('We could not connect to huggingface.co')
        return real(*args, **kwargs)
    real = timm.create_model
    monkeypatch.setattr(timm, 'create_model', offline)
    with pytest.raises(CflowError) as info:
        build_encoder('tf_efficientnet_b5', 1, 'imagenet')
    text = str(info.value)
    local = os.path.join(str(tmp_path / 'hub'), 'checkpoints', 'timm', 'tf_efficientnet_b5.ns_jft_in1k.safetensors')
    assert 'huggingface.co/timm/tf_efficientnet_b5.ns_jft_in1k' in text and local in text
    assert '--encoder-weights' in text
    # the file put there is what the encoder then loads
    from safetensors.torch import save_file
    torch.manual_seed(5)
    source = real('tf_efficientnet_b5', pretrained=False).state_dict()
    os.makedirs(os.path.dirname(local))
    save_file({k: v.contiguous() for k, v in source.items()}, local)
    encoder = build_encoder('tf_efficientnet_b5', 1, 'imagenet')
    assert torch.equal(encoder.net.blocks[5][-1].conv_pwl.weight, source['blocks.5.8.conv_pwl.weight'])


def test_a_local_timm_safetensors_file_loads_and_checks_the_architecture(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(4)
    source = timm.create_model('tf_efficientnet_b5', pretrained=False).state_dict()
    path = tmp_path / 'effb5.safetensors'
    save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    encoder = build_encoder('tf_efficientnet_b5', 3, str(path))
    assert torch.equal(encoder.net.blocks[2][-1].bn3.running_var, source['blocks.2.4.bn3.running_var'])
    with pytest.raises(CflowError, match='holds a .*efficientnet_b5 encoder, but -enc is resnet18'):
        build_encoder('resnet18', 3, str(path))


def test_other_encoders_never_import_timm():
    """timm is imported only for its encoders: a ResNet command's start-up does not grow."""
    code = ('import sys; sys.path.insert(0, ".")\n'
            'from config import parse_config\n'
            'from train import build_model\n'
            'c = parse_config(["--dataset", "demo", "-enc", "resnet18", "--no-cuda", "--encoder-weights", "none"])\n'
            'build_model(c)\n'
            'print("timm" in sys.modules)\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == 'False', out.stdout + out.stderr


def test_the_runner_tests_timm_checkpoints_with_the_settings_their_names_state(tmp_path, capsys):
    import shutil
    import reproduce
    from tests.conftest import reference_checkpoint
    from utils.presets import PRESETS
    folder = tmp_path / 'released'
    folder.mkdir()
    shutil.copy(reference_checkpoint('cflow_effb5'), folder / 'mvtec_tf_efficientnet_b5_freia-cflow_pl3_cb2_inp256_run0_bottle.pt')
    shutil.copy(reference_checkpoint('cflow_vitb16'),
                folder / 'mvtec_vit_base_patch16_224_freia-cflow_pl3_cb1_inp224_run0_bottle.pt')
    argv = ['--preset', 'mnv3-released', '--checkpoints', str(folder), '--dataset', 'demo', '--no-cuda',
            '--workers', '0', '--output-dir', str(tmp_path / 'out'), '--data-path', str(tmp_path / 'data')]
    jobs = reproduce.plan_jobs(reproduce.parse_args(argv), PRESETS['mnv3-released'])
    flags = [dict(zip(j.argv[::2], j.argv[1::2])) for j in jobs]
    assert [(f['-enc'], f['-inp'], f['-cb']) for f in flags] == [('tf_efficientnet_b5', '256', '2'),
                                                                 ('vit_base_patch16_224', '224', '1')]
