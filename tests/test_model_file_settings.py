"""Settings a model file states (input size, architecture) are enforced or taken by every action."""
import os

import pytest
import torch

from actions import read_settings

from tests.conftest import reference_checkpoint
from tests.test_errors import assert_one_line_error, run_cli


R18 = reference_checkpoint('cflow_r18')


@pytest.fixture(scope='module')
def calibrated_at_128(tmp_path_factory):
    state = torch.load(R18, map_location='cpu', weights_only=True)
    settings = {'enc_arch': 'resnet18', 'dec_arch': 'freia-cflow', 'pool_layers': 3, 'coupling_blocks': 4,
                'input_size': 128, 'norm_mean': [0.485, 0.456, 0.406], 'norm_std': [0.229, 0.224, 0.225]}
    state['calibration'] = {'log_p_max': [0.0] * 3, 'sum_max': 3.0, 'image_threshold': 1.0, 'pixel_threshold': 1.0,
                            'source': 'test', 'settings': settings}
    path = tmp_path_factory.mktemp('calibrated') / 'model.pt'
    torch.save(state, path)
    return str(path)


def test_norm_test_of_a_calibrated_file_takes_or_enforces_its_input_size(calibrated_at_128, capsys):
    c = read_settings(['--action-type', 'norm-test', '--checkpoint', calibrated_at_128, '--no-cuda'])
    assert c.input_size == 128 and c.enc_arch == 'resnet18' and c.crp_size == (128, 128) and 'inp128' in c.model
    rc, err = run_cli(capsys, ['--action-type', 'norm-test', '--checkpoint', calibrated_at_128, '-inp', '256',
                               '--no-cuda'])
    assert_one_line_error(rc, err, 'made with -inp 128, but -inp 256 was passed')


@pytest.mark.parametrize('action', ['calibrate', 'predict', 'export'])
def test_an_authors_name_states_the_input_size_for_every_action(action, tmp_path, capsys):
    named = tmp_path / 'mvtec_resnet18_freia-cflow_pl3_cb4_inp512_run0_bottle.pt'
    os.symlink(R18, named)
    extra = {'calibrate': ['--calibration-path', str(tmp_path)], 'predict': ['--input', str(tmp_path)],
             'export': ['--output', str(tmp_path / 'm.onnx')]}[action]
    base = ['--action-type', action, '--checkpoint', str(named), '-enc', 'resnet18', '--no-cuda'] + extra
    assert read_settings(base).input_size == 512
    rc, err = run_cli(capsys, base + ['-inp', '256'])
    assert_one_line_error(rc, err, 'is named inp512 but -inp is 256')
