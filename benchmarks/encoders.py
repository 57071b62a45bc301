"""ResNet-18 beside the timm encoders, each at the size the published code feeds it (ResNet-18 at
--compare-size, a timm encoder at timm's: custom_models.preprocessing), in one interleaved run: the
norm-test pipeline (encoder, fused scorer, published maps) at batch --compare-images, and the predict
model (calibrated, batch 1) under PyTorch and OpenVINO; ratios to the first encoder's norm-test pipeline."""
import os
import shutil
import tempfile

import numpy as np
import torch

from benchmarks.models import build_model, calibrated_model, model_settings
from benchmarks.timing import interleaved, speed_rows
from custom_datasets.synthetic import make_demo_class
from custom_models.encoders import tap_shapes
from custom_models.scoring import ScoreOptions, make_scorers
from utils.anomaly_map import anomaly_maps
from utils.export_onnx import OpenVinoModel, export_onnx


def one_by_one(run, images):
    def timed():
        with torch.inference_mode():
            for x in images:
                run(x[None])
    return timed


def encoder_paths(a, arch: str, tmp: str):
    """(paths, notes, data, fed size) of one encoder: its norm-test pipeline and its predict model."""
    encoder, decoders = build_model(arch, a.pool_layers, a.coupling_blocks, 'cpu')
    settings = model_settings(arch, decoders, a.compare_size)
    size = settings['input_size']
    images = torch.rand(a.compare_images, 3, size, size, generator=torch.Generator().manual_seed(1))
    mean, std = (torch.tensor(settings[k]).reshape(1, 3, 1, 1) for k in ('norm_mean', 'norm_std'))
    built = make_scorers(ScoreOptions(device='cpu'), decoders)

    def norm_test():
        with torch.inference_mode():
            taps = encoder((images - mean) / std)
            anomaly_maps([score(e) for score, e in zip(built, taps)], (size, size))
    make_demo_class(tmp, f'encoders{size}', image_size=size, n_train=8, n_test_good=1, n_test_defect=1)
    model, _, _ = calibrated_model(arch, encoder, decoders, size, os.path.join(tmp, f'encoders{size}', 'train', 'good'))
    onnx_path = os.path.join(tmp, f'{arch}.onnx')
    export_onnx(model, onnx_path)
    openvino = OpenVinoModel(onnx_path)
    pipeline, pytorch, ov = (f'{arch}: norm-test pipeline (batch {a.compare_images})',
                             f'{arch}: predict model, PyTorch (batch 1)', f'{arch}: predict model, OpenVINO (batch 1)')
    with torch.inference_mode():
        reference = model(images[:1])[0].numpy()
    diff = float(np.abs(openvino(images[:1])[0] - reference).max() / np.ptp(reference))
    taps = ', '.join('x'.join(map(str, s)) for s in tap_shapes(encoder.arch, encoder.pool_layers, size))
    paths = {pipeline: norm_test, pytorch: one_by_one(model, images), ov: one_by_one(openvino, images)}
    notes = {pipeline: f'taps {taps}', ov: f'max diff vs PyTorch {diff:.1e} of the map range'}
    return paths, notes, {ov: {'max_diff_vs_pytorch': diff}}, size


def run(a):
    paths, notes, data, sizes = {}, {}, {}, {}
    tmp = tempfile.mkdtemp()
    try:
        for arch in a.compare_encoders.split(','):
            more_paths, more_notes, more_data, sizes[arch] = encoder_paths(a, arch, tmp)
            paths.update(more_paths)
            notes.update(more_notes)
            data.update(more_data)
        seconds = interleaved(paths, a.rounds, 'cpu')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = speed_rows(seconds, a.compare_images, next(iter(paths)), notes, data)
    for row in rows:
        arch = row.name.split(':')[0]
        row.notes = '; '.join(filter(None, (f'fed {sizes[arch]} px -pl {a.pool_layers} -cb {a.coupling_blocks}',
                                            row.notes)))
        row.data['fed_size'] = sizes[arch]
    return rows
