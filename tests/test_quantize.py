"""The INT8 export (issue 24): NNCF post-training quantization, an OpenVINO IR that predict and load_model
run, thresholds from the INT8 model's own maps, the precision named wherever a result is written.
OpenVINO work runs in its own process (tests/test_bench.py: several OpenVINO models compiled in the suite's
process left it crashing in a later subprocess call)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from main import main
from tests.conftest import ROOT


def in_a_process(*argv):
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope='module')
def int8(trained, exported, tmp_path_factory):
    """The demo model's INT8 export (encoder scope) from its calibration folder, beside its fp32 export
    (the suite's shared one: the checkpoint was calibrated on the same folder when it was trained)."""
    root, checkpoint, _ = trained
    out = tmp_path_factory.mktemp('int8')
    calibration = str(root / 'calibration')
    in_a_process('main.py', '--action-type', 'export', '--checkpoint', checkpoint, '--output', str(out / 'int8.xml'),
                 '--quantize', 'int8', '--calibration-path', calibration)
    return out, calibration, exported[0] / 'model.onnx'


def test_the_int8_file_carries_the_settings_its_precision_and_its_own_thresholds(int8):
    from utils.export_onnx import model_metadata
    out, calibration_dir, fp32_path = int8
    assert (out / 'int8.bin').stat().st_size > 0 and not [p for p in os.listdir(out) if p.startswith('.')]
    settings, calibration = model_metadata(str(out / 'int8.xml'))
    fp32_settings, fp32 = model_metadata(str(fp32_path))
    assert settings == fp32_settings
    assert calibration['precision'] == 'int8' and calibration['quantized'] == 'encoder'
    assert calibration['fp32_thresholds'] == {'image_threshold': fp32['image_threshold'],
                                              'pixel_threshold': fp32['pixel_threshold']}
    assert calibration['log_p_max'] == fp32['log_p_max'] and calibration['sum_max'] == fp32['sum_max']
    assert calibration_dir in calibration['source'] and "INT8 model's own" in calibration['source']
    assert calibration['image_threshold'] != fp32['image_threshold']  # re-calibrated, not copied
    # the thresholds are the calibration rule applied to the INT8 model's maps of the calibration images,
    # the graph really computes in int8 where it should (FakeQuantize before convolutions, none before the
    # flows' matrix products), and its maps stay near fp32's on fixed inputs
    code = f'''
import json, numpy as np, openvino as ov
from custom_datasets.common import calibration_images
from custom_models import load_model
from utils.calibration import thresholds_from_maps
import custom_datasets.synthetic as synthetic
paths = calibration_images({calibration_dir!r})
int8, fp32 = load_model({str(out / 'int8.xml')!r}), load_model({str(fp32_path)!r}, runtime='openvino')
maps = [p.model_map for p in int8.predict(paths)]
model = ov.Core().read_model({str(out / 'int8.xml')!r})
def quantized_input(node):  # through the ops int8 passes unchanged (reflection padding, max-pooling)
    while node.get_type_name() in ('Pad', 'MaxPool'):
        node = node.input_value(0).get_node()
    return node.get_type_name() == 'FakeQuantize'
fed = {{}}
for op in model.get_ops():
    if op.get_type_name() in ('Convolution', 'MatMul'):
        fed.setdefault(op.get_type_name(), []).append(quantized_input(op.input_value(0).get_node()))
a = np.stack([p.model_map for p in fp32.predict(paths)])
b = np.stack(maps)
print(json.dumps({{'thresholds': thresholds_from_maps(maps), 'conv': fed['Convolution'], 'matmul': fed['MatMul'],
                  'mean_error': float(np.abs(a - b).mean() / np.ptp(a)),
                  'score_corr': float(np.corrcoef(a.reshape(len(a), -1).max(1), b.reshape(len(b), -1).max(1))[0, 1])}}))
'''
    measured = json.loads(in_a_process('-c', code).strip().splitlines()[-1])
    assert measured['thresholds']['image_threshold'] == pytest.approx(calibration['image_threshold'], rel=1e-6)
    assert measured['thresholds']['pixel_threshold'] == pytest.approx(calibration['pixel_threshold'], rel=1e-6)
    assert all(measured['conv']) and not any(measured['matmul'])
    # the stated tolerance (README, "INT8"): mean map error within a quarter of the fp32 map's range
    assert measured['mean_error'] < 0.25


def test_predict_and_norm_test_name_the_precision(int8, trained, tmp_path, capsys):
    out, _, fp32_path = int8
    _, checkpoint, demo_root = trained
    images = os.path.join(demo_root, 'textile', 'test', 'scratch')
    stdout = in_a_process('main.py', '--action-type', 'predict', '--checkpoint', str(out / 'int8.xml'), '--input', images,
                          '--output-dir', str(tmp_path / 'int8'), '--no-cuda', '--workers', '0')
    assert 'int8 (encoder) model' in stdout
    report = json.load(open(tmp_path / 'int8' / 'predictions.json'))
    assert report['precision'] == 'int8 (encoder)' and report['runtime'] == 'openvino'
    assert report['image_threshold'] == report['stored_thresholds']['image_threshold']
    assert 'int8 (encoder) model' in open(tmp_path / 'int8' / 'index.html').read()
    assert main(['--action-type', 'predict', '--checkpoint', str(fp32_path), '--input', images,
                 '--output-dir', str(tmp_path / 'fp32'), '--no-cuda', '--workers', '0', '--scores-only']) == 0
    assert json.load(open(tmp_path / 'fp32' / 'predictions.json'))['precision'] == 'fp32'
    capsys.readouterr()
    assert main(['--action-type', 'norm-test', '--checkpoint', str(out / 'int8.xml')]) == 2
    err = capsys.readouterr().err
    assert 'INT8 quantized export of its encoder' in err and len(err.strip().splitlines()) == 1


def test_an_int8_file_runs_only_under_openvino(int8):
    from custom_models import load_model
    from utils.errors import CflowError
    with pytest.raises(CflowError, match='is an OpenVINO model .* --runtime openvino'):
        load_model(int8[0] / 'int8.xml', runtime='onnxruntime')


@pytest.mark.parametrize('case, message', [
    ('missing', 'is not a folder'),
    ('three images', 'holds 3 images: INT8 quantization needs at least 8'),
    ('no folder flag', '--quantize int8 needs --calibration-path DIR'),
    ('onnx output', 'writes an OpenVINO model (.xml + .bin)'),
    ('predict', '--quantize is for --action-type export'),
])
def test_the_export_refuses_bad_calibration_folders_in_one_line(trained, tmp_path, capsys, case, message):
    root, checkpoint, _ = trained
    few = tmp_path / 'few'
    few.mkdir()
    for name in sorted(os.listdir(root / 'calibration' / 'day1'))[:3]:
        shutil.copy(root / 'calibration' / 'day1' / name, few / name)
    argv = {'missing': ['--calibration-path', str(tmp_path / 'nothing')], 'three images': ['--calibration-path', str(few)],
            'no folder flag': [], 'onnx output': ['--calibration-path', str(few)],
            'predict': ['--calibration-path', str(few)]}[case]
    action = 'predict' if case == 'predict' else 'export'
    output = str(tmp_path / ('int8.onnx' if case == 'onnx output' else 'int8.xml'))
    assert main(['--action-type', action, '--checkpoint', checkpoint, '--output', output, '--quantize', 'int8',
                 '--input', str(few), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not os.path.exists(output)
