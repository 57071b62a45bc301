"""``load_model(path).predict(inputs)``: the Python call, its runtimes, its thresholds, and the command
line's predict that runs the same object."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from custom_models import load_model
from main import main
from utils.errors import CflowError

from tests.test_errors import assert_one_line_error, run_cli


def sample_paths(demo_root):
    folder = os.path.join(demo_root, 'textile', 'test')
    return [os.path.join(folder, d, name) for d in ('good', 'stain', 'scratch')
            for name in sorted(os.listdir(os.path.join(folder, d)))[:3]]


@pytest.fixture(scope='module')
def models(trained, exported):
    out, checkpoint = exported
    return {'pt': load_model(checkpoint), 'safetensors': load_model(str(out / 'model.safetensors')),
            'onnxruntime': load_model(str(out / 'model.onnx')),
            'openvino': load_model(str(out / 'model.onnx'), runtime='openvino')}


@pytest.mark.parametrize('kind', ['pt', 'safetensors', 'onnxruntime', 'openvino'])
def test_every_kind_of_input_gives_the_same_result(models, demo_root, kind):
    model = models[kind]
    path = sample_paths(demo_root)[4]  # a defective one
    image = Image.open(path)
    array = np.asarray(image.convert('RGB'))
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
    results = [model.predict(x) for x in (path, image, array, tensor)]
    for r in results[1:]:
        assert r.score == results[0].score and r.defective == results[0].defective
        assert np.array_equal(r.mask, results[0].mask)
    first = results[0]
    assert first.anomaly_map.shape == first.mask.shape == (image.height, image.width)  # the input's own size
    assert first.model_map.shape == (64, 64) and first.anomaly_map.dtype == np.float32
    assert first.thresholds['image_threshold'] == model.calibration['image_threshold']
    assert first.defective == (first.score > first.thresholds['image_threshold'])
    assert first.mask.any() == first.defective


def test_any_size_is_resized_the_published_way_and_maps_come_back_at_that_size(models, demo_root):
    from utils.images import read_rgb, to_model_input
    model = models['pt']
    image = read_rgb(sample_paths(demo_root)[0]).resize((300, 170))
    result = model.predict(image)
    assert result.anomaly_map.shape == result.mask.shape == (170, 300)
    maps, scores = model.score_images(to_model_input(image, 64)[None])
    assert result.score == scores[0] and np.array_equal(result.model_map, maps[0])


def test_batches_give_the_results_of_single_calls(models, demo_root):
    model = models['pt']
    paths = sample_paths(demo_root)
    batched = model.predict(paths, batch_size=4)
    assert len(batched) == len(paths)
    for path, result in zip(paths, batched):
        alone = model.predict(path)
        assert abs(alone.score - result.score) <= 1e-6 * max(1.0, abs(alone.score))
        assert np.allclose(alone.model_map, result.model_map, rtol=1e-5, atol=1e-6)


def test_the_runtimes_agree(models, demo_root):
    """onnxruntime and OpenVINO run the exported graph; both equal the PyTorch model on the same images."""
    paths = sample_paths(demo_root)
    results = {name: m.predict(paths, batch_size=8) for name, m in models.items()}
    reference = np.stack([r.model_map for r in results['pt']])
    span = reference.max() - reference.min()
    assert span > 0
    for name, rs in results.items():
        maps = np.stack([r.model_map for r in rs])
        assert np.abs(maps - reference).max() <= 1e-4 * span, name
        assert [r.defective for r in rs] == [r.defective for r in results['pt']], name
    onnx, openvino = (np.stack([r.model_map for r in results[k]]) for k in ('onnxruntime', 'openvino'))
    assert np.abs(openvino - onnx).max() <= 1e-4 * (onnx.max() - onnx.min())  # the two runtimes directly
    assert models['openvino'].runtime == 'openvino' and models['onnxruntime'].runtime == 'onnxruntime'
    assert any(r.defective for r in results['pt']) and not all(r.defective for r in results['pt'])


def test_python_and_the_command_line_give_the_same_scores(models, trained, tmp_path):
    _, checkpoint, demo_root = trained
    folder = os.path.join(demo_root, 'textile', 'test', 'stain')
    for runtime, path in (('torch', checkpoint), ('openvino', None)):
        argv = ['--action-type', 'predict', '--checkpoint', path or models['openvino'].source, '--input', folder,
                '--output-dir', str(tmp_path / runtime), '--no-cuda', '--workers', '0', '--scores-only',
                '--runtime', runtime]
        assert main(argv) == 0
        rows = list(csv.DictReader(open(tmp_path / runtime / 'predictions.csv')))
        model = models['pt' if runtime == 'torch' else 'openvino']
        python = model.predict([r['source'] for r in rows])
        for row, result in zip(rows, python):
            assert float(row['score']) == pytest.approx(result.score, rel=1e-5)
            assert row['decision'] == ('defective' if result.defective else 'good')
            assert int(row['defect_pixels']) == int(result.mask.sum())


def test_a_stricter_threshold_never_adds_a_defective_decision(exported, demo_root):
    out, checkpoint = exported
    paths = sample_paths(demo_root)
    stored = load_model(checkpoint).predict(paths)
    t_image = load_model(checkpoint).calibration['image_threshold']
    for options in ({'sensitivity': 0.5}, {'image_threshold': 1.5 * t_image}, {'sensitivity': 0.8}):
        strict = load_model(checkpoint, **options).predict(paths)
        for a, b in zip(stored, strict):
            assert b.defective <= a.defective  # never good -> defective
            assert not (b.mask & ~a.mask).any()  # never a pixel more
    loose = load_model(checkpoint, sensitivity=2).predict(paths)
    assert sum(r.defective for r in loose) >= sum(r.defective for r in stored)
    t = loose[0].thresholds
    assert t['image_threshold'] == pytest.approx(t_image / 2) and t['thresholds'] == 'sensitivity 2'
    assert load_model(checkpoint, sensitivity=1).predict(paths[0]).thresholds['image_threshold'] == t_image
    # absolute thresholds: the decision follows them exactly
    scores = sorted(r.score for r in stored)
    middle = (scores[3] + scores[4]) / 2
    decided = load_model(checkpoint, image_threshold=middle).predict(paths)
    assert sum(r.defective for r in decided) == len(paths) - 4


def test_predict_writes_the_thresholds_it_used_and_keeps_the_stored_calibration(trained, tmp_path):
    _, checkpoint, demo_root = trained
    before = open(checkpoint, 'rb').read()
    assert main(['--action-type', 'predict', '--checkpoint', checkpoint, '--input',
                 os.path.join(demo_root, 'textile', 'test', 'good'), '--output-dir', str(tmp_path), '--no-cuda',
                 '--workers', '0', '--sensitivity', '2']) == 0
    report = json.load(open(tmp_path / 'predictions.json'))
    stored = report['stored_thresholds']
    assert report['image_threshold'] == pytest.approx(stored['image_threshold'] / 2)
    assert report['pixel_threshold'] == pytest.approx(stored['pixel_threshold'] / 2)
    assert report['thresholds'] == 'sensitivity 2'
    assert open(checkpoint, 'rb').read() == before  # the calibration in the file is unchanged


def test_threshold_flags_are_checked(trained, capsys, tmp_path):
    _, checkpoint, demo_root = trained
    base = ['--action-type', 'predict', '--checkpoint', checkpoint, '--input', demo_root, '--no-cuda',
            '--output-dir', str(tmp_path)]
    rc, err = run_cli(capsys, base + ['--sensitivity', '2', '--image-threshold', '1'])
    assert_one_line_error(rc, err, 'cannot be combined')
    rc, err = run_cli(capsys, base + ['--sensitivity', '0'])
    assert_one_line_error(rc, err, '--sensitivity must be above 0')


def test_an_uncalibrated_model_and_a_wrong_runtime_are_refused(trained, exported, tmp_path):
    from custom_models.checkpoint import read_checkpoint, save_checkpoint
    from custom_models.model_file import read_model
    _, checkpoint, _ = trained
    loaded = read_model(checkpoint, {})
    plain = str(tmp_path / 'plain.pt')
    save_checkpoint(plain, loaded.encoder, loaded.decoders)
    assert 'calibration' not in read_checkpoint(plain)
    with pytest.raises(CflowError, match='has no calibration.*--action-type calibrate'):
        load_model(plain)
    with pytest.raises(CflowError, match='runtime openvino runs .onnx files.*export it first'):
        load_model(checkpoint, runtime='openvino')
    with pytest.raises(CflowError, match='unknown runtime'):
        load_model(checkpoint, runtime='tensorrt')
    with pytest.raises(CflowError, match='must be float in \\[0, 1\\]'):
        load_model(checkpoint).predict(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(CflowError, match='must be in \\[0, 1\\]'):
        load_model(checkpoint).predict(torch.full((3, 8, 8), 2.0))


def test_the_readme_example_runs(trained, demo_root, tmp_path, monkeypatch):
    """The README's Python example, run as written, on this model and two demo images."""
    import re
    import shutil
    from tests.conftest import ROOT
    text = open(os.path.join(ROOT, 'README.md')).read()
    code = re.search(r'### From Python\n\n```python\n(.*?)```', text, re.S).group(1)
    _, checkpoint, _ = trained
    shutil.copy(checkpoint, tmp_path / 'model_calibrated.pt')
    for name, source in (('part.png', 'stain'), ('a.png', 'good'), ('b.png', 'scratch')):
        folder = os.path.join(demo_root, 'textile', 'test', source)
        shutil.copy(os.path.join(folder, sorted(os.listdir(folder))[0]), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, 'README.md', 'exec'), scope)
    assert scope['heat'].shape == scope['mask'].shape == Image.open(tmp_path / 'part.png').size[::-1]
    result = scope['result']
    assert len(scope['results']) == 2 and result.defective == (result.score > result.thresholds['image_threshold'])


def test_predict_flags_elsewhere_are_refused(capsys, trained):
    _, checkpoint, _ = trained
    rc, err = run_cli(capsys, ['--action-type', 'export', '--checkpoint', checkpoint, '--output', 'x.onnx',
                               '--sensitivity', '2'])
    assert_one_line_error(rc, err, '--sensitivity is for --action-type predict')


def test_an_onnx_file_is_for_predict_only(capsys, exported, demo_root):
    out, _ = exported
    rc, err = run_cli(capsys, ['--action-type', 'norm-test', '--checkpoint', str(out / 'model.onnx'),
                               '--dataset', 'demo', '--data-path', demo_root, '--no-cuda'])
    assert_one_line_error(rc, err, 'norm-test needs the model\'s weights', 'not the exported graph')
    rc, err = run_cli(capsys, ['--action-type', 'predict', '--checkpoint', str(out / 'model.onnx'), '--input', demo_root,
                               '--calibration-path', demo_root, '--no-cuda'])
    assert_one_line_error(rc, err, 'holds the calibration it was exported with', 'drop --calibration-path')
