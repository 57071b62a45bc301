"""A ViT-B/16 model through every action: norm-train, norm-test, calibrate (after training), export
(.onnx and .safetensors), predict and ``load_model`` under PyTorch, onnxruntime and OpenVINO.

Small on purpose (-pl 1 -cb 1, a few 224-px images, random-init encoder): the arithmetic is the one
the fixtures check; here every action must accept the family and agree with the others."""
import csv
import glob
import json
import os
import shutil

import numpy as np
import pytest

from custom_datasets.synthetic import make_demo_class
from custom_models import load_model
from main import main

pytest.importorskip('timm')

VIT = ['-enc', 'vit_base_patch16_224', '-inp', '224', '-pl', '1', '-cb', '1', '--no-cuda', '--workers', '0']


@pytest.fixture(scope='module')
def vit_model(tmp_path_factory):
    root = tmp_path_factory.mktemp('vit')
    make_demo_class(str(root / 'data'), seed=7, n_train=8, n_test_good=3, n_test_defect=3)
    other = make_demo_class(str(root / 'other'), seed=8, n_train=8, n_test_good=1, n_test_defect=1)
    shutil.copytree(os.path.join(other, 'train', 'good'), root / 'calibration')
    assert main(['--dataset', 'demo', '--data-path', str(root / 'data'), *VIT, '-bs', '4', '--meta-epochs', '1',
                 '--sub-epochs', '1', '--encoder-weights', 'none', '--output-dir', str(root / 'out'),
                 '--calibration-path', str(root / 'calibration')]) == 0
    (checkpoint,) = glob.glob(str(root / 'out' / 'weights' / '*.pt'))
    for name in ('model.onnx', 'model.safetensors'):
        assert main(['--action-type', 'export', '--checkpoint', checkpoint, '--output', str(root / name)]) == 0
    return root, checkpoint


def test_norm_test_of_the_trained_vit_gives_its_training_metrics(vit_model):
    root, checkpoint = vit_model
    (trained,) = glob.glob(str(root / 'out' / 'results' / '*.json'))
    assert main(['--action-type', 'norm-test', '--checkpoint', checkpoint, '--dataset', 'demo', '--data-path',
                 str(root / 'data'), *VIT, '--output-dir', str(root / 'test')]) == 0
    (tested,) = glob.glob(str(root / 'test' / 'results' / '*.json'))
    a, b = json.load(open(trained)), json.load(open(tested))
    for metric in ('DET_AUROC', 'SEG_AUROC'):
        assert a['last'][metric] is not None
        assert a['last'][metric] == pytest.approx(b['last'][metric], abs=1e-6)


def test_every_runtime_and_file_gives_the_same_vit_scores(vit_model):
    root, checkpoint = vit_model
    paths = sorted(glob.glob(str(root / 'data' / 'textile' / 'test' / '*' / '*.png')))
    models = {'pt': load_model(checkpoint), 'safetensors': load_model(str(root / 'model.safetensors')),
              'onnxruntime': load_model(str(root / 'model.onnx')),
              'openvino': load_model(str(root / 'model.onnx'), runtime='openvino')}
    results = {name: m.predict(paths) for name, m in models.items()}
    reference = np.stack([r.model_map for r in results['pt']])
    span = reference.max() - reference.min()
    assert span > 0 and reference.shape[1:] == (224, 224)
    for name, rs in results.items():
        assert np.abs(np.stack([r.model_map for r in rs]) - reference).max() <= 1e-4 * span, name
        assert [r.defective for r in rs] == [r.defective for r in results['pt']], name
    # the predict command runs the same detector
    for runtime, model in (('openvino', str(root / 'model.onnx')), ('torch', checkpoint)):
        out = root / f'predict_{runtime}'
        assert main(['--action-type', 'predict', '--checkpoint', model, '--runtime', runtime, '--input',
                     str(root / 'data' / 'textile' / 'test'), '--output-dir', str(out), '--no-cuda',
                     '--scores-only']) == 0
        rows = {r['source']: r for r in csv.DictReader(open(out / 'predictions.csv'))}
        for path, result in zip(paths, results['pt']):
            assert float(rows[path]["score"]) == pytest.approx(result.score, rel=1e-4, abs=1e-4 * float(span))
