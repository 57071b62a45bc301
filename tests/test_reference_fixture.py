"""The authors' checkpoints load through --checkpoint and reproduce their outputs."""
import os

import pytest
import torch

from actions import read_settings, score_options
from custom_models.scoring import make_scorers, score_batch
from train import build_model
from utils.anomaly_map import anomaly_maps
from utils.errors import CflowError

from tests.conftest import reference_checkpoint, reference_fixture

FIXTURES = ['cflow_r18', 'cflow_mnv3l', 'cflow_vitb16', 'cflow_effb5']


def fixture_config(name, *extra):
    fx, folder = reference_fixture(name)
    argv = ['--action-type', 'norm-test', '--checkpoint', reference_checkpoint(name), '--no-cuda',
            '-enc', fx['enc_arch'], '-pl', str(fx['pool_layers']), '-cb', str(fx['coupling_blocks']),
            '-inp', str(fx['input_size']), *extra]
    return read_settings(argv), folder


def relative_error(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize('scorer', ['fused', 'freia'])
@pytest.mark.parametrize('name', FIXTURES)
def test_checkpoint_reproduces_every_expected_tensor(name, scorer):
    c, folder = fixture_config(name, '--scorer', scorer)
    expected = torch.load(os.path.join(folder, 'expected.pt'), weights_only=False)
    encoder, decoders = build_model(c)
    with torch.inference_mode():
        options = score_options(c)
        log_probs = score_batch(options, encoder, make_scorers(options, decoders), expected['input'])
        taps = encoder(expected['input'])
    for l, tap in enumerate(taps):  # the timm fixtures also hold each tap as the authors' loop folds it
        if f'tap_{l}' in expected:
            assert tap.shape == expected[f'tap_{l}'].shape
            assert relative_error(tap, expected[f'tap_{l}']) < 1e-4
    for l, log_prob in enumerate(log_probs):
        assert log_prob.shape == expected[f'log_prob_{l}'].shape
        assert relative_error(log_prob, expected[f'log_prob_{l}']) < 1e-4
    # at the size of the images the fixture scored (the timm fixtures' 256-px inputs predate the published
    # rule that now feeds EfficientNet-B5 456 px: tests/reference/timm_preprocess checks that step)
    maps = torch.from_numpy(anomaly_maps(log_probs, tuple(expected['input'].shape[-2:])))
    assert relative_error(maps, expected['anomaly_map']) < 1e-4


def test_wrong_encoder_names_expected_and_found():
    c, _ = fixture_config('cflow_r18', '-enc', 'resnet34')
    with pytest.raises(CflowError, match=r'holds a resnet18 encoder, but -enc is resnet34.*-enc resnet18'):
        build_model(c)
    c, _ = fixture_config('cflow_mnv3l', '-enc', 'wide_resnet50_2')
    with pytest.raises(CflowError, match='holds a mobilenet_v3_large encoder, but -enc is wide_resnet50_2'):
        build_model(c)


def test_wrong_pool_layer_count_names_expected_and_found():
    c, _ = fixture_config('cflow_r18', '-pl', '2')
    with pytest.raises(CflowError, match=r'holds 3 decoders .* model has 2 pool layers: pass -pl 3'):
        build_model(c)


def test_wrong_coupling_block_count_names_expected_and_found():
    c, _ = fixture_config('cflow_r18', '-cb', '8')
    with pytest.raises(CflowError, match='decoder 0 has 128 channels, 4 coupling blocks, freia-cflow, '
                                         'but the model expects 128 channels, 8 coupling blocks'):
        build_model(c)
    c, _ = fixture_config('cflow_r18', '-dec', 'freia-flow')
    with pytest.raises(CflowError, match='expects 128 channels, 4 coupling blocks, freia-flow'):
        build_model(c)


def test_cli_norm_test_reports_a_mismatch_in_one_line(capsys, demo_root):
    from main import main
    rc = main(['--action-type', 'norm-test', '--checkpoint', reference_checkpoint('cflow_r18'), '--no-cuda',
               '--dataset', 'demo', '--data-path', demo_root, '-enc', 'resnet18', '-cb', '8'])
    err = capsys.readouterr().err
    assert rc == 2 and 'Traceback' not in err and err.count('\n') == 1
    assert err.startswith('error: checkpoint') and '4 coupling blocks' in err and 'expects' in err


def test_a_changed_encoder_init_is_reported_as_such():
    """Another timm or torchvision release may initialise differently: the test says so before any number."""
    from tests.conftest import seeded_encoder_state
    fixture, _ = reference_fixture('cflow_effb5')
    changed = {**fixture, 'encoder_init': {**fixture['encoder_init'], 'state_sha256': '0' * 64}}
    with pytest.raises(pytest.fail.Exception, match='is not the one the fixture was made with.*timm 1.0.31'):
        seeded_encoder_state(changed)
