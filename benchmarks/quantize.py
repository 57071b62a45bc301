"""INT8 against fp32 (OpenVINO, batch 1) on demo-style classes the tests do not use: resnet18 (random init)
at 128 px trained as the masks section trains, calibrated on 32 other good images, then each quantization
scope exported from the same fp32 file with ranges from those 32 images. Per class and scope: image and
pixel AUROC against fp32's, decisions identical, mask pixels identical (``load_model(...).predict``)."""
import os
import shutil
import tempfile

import numpy as np

from benchmarks.commands import command
from benchmarks.int8 import int8_exports
from benchmarks.models import at_side, labelled_test_set, trained_demo_style_class
from benchmarks.rows import Row
from custom_models import load_model
from utils.metrics import detection_auroc, localization_auroc
from utils.quantize import SCOPES


def measure(path: str, paths, truth, labels) -> dict:
    predictions = load_model(path, runtime='openvino').predict(paths)
    maps = np.stack([p.model_map for p in predictions])
    return {'image': detection_auroc(labels, [p.score for p in predictions]),
            'pixel': localization_auroc(at_side(truth, maps.shape[-1]), maps),
            'decisions': np.array([p.defective for p in predictions]),
            'masks': np.stack([p.mask for p in predictions])}


def class_entries(seed: int) -> dict:
    """scope -> this class's INT8 figures against fp32."""
    work = tempfile.mkdtemp(prefix='bench_quantize_')
    try:
        class_dir, calibration_dir, checkpoint = trained_demo_style_class(work, seed)
        fp32_path = os.path.join(work, 'fp32.onnx')
        command(['--action-type', 'export', '--checkpoint', checkpoint, '--output', fp32_path])()
        models = {'fp32': fp32_path, **int8_exports(fp32_path, calibration_dir, 128, SCOPES, work)}
        paths, truth, labels = labelled_test_set(class_dir)
        results = {name: measure(path, paths, truth, labels) for name, path in models.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fp32 = results['fp32']
    return {scope: {'seed': seed, 'image': 100 * (results[scope]['image'] - fp32['image']),
                    'pixel': 100 * (results[scope]['pixel'] - fp32['pixel']),
                    'decisions': 100 * float((results[scope]['decisions'] == fp32['decisions']).mean()),
                    'masks': 100 * float((results[scope]['masks'] == fp32['masks']).mean()),
                    'fp32_image': 100 * fp32['image'], 'fp32_pixel': 100 * fp32['pixel']} for scope in SCOPES}


def run(a):
    table, rows = {scope: [] for scope in SCOPES}, []
    for seed in [int(s) for s in a.quantize_seeds.split(',') if s]:
        for scope, e in class_entries(seed).items():
            table[scope].append(e)
            rows.append(Row(f'INT8 {scope}, class seed {seed}', (e['image'], e['pixel']), 'pt', data=e,
                            notes=f'image / pixel AUROC points vs fp32 ({e["fp32_image"]:.2f} / {e["fp32_pixel"]:.2f}); '
                                  f'decisions identical {e["decisions"]:.1f} %, mask pixels {e["masks"]:.2f} %'))
    for scope, entries in table.items():
        if entries:
            worst = {k: min(e[k] for e in entries) for k in ('image', 'pixel', 'decisions', 'masks')}
            rows.append(Row(f'INT8 {scope}, worst class', (worst['image'], worst['pixel']), 'pt', data=worst,
                            notes=f'decisions identical >= {worst["decisions"]:.1f} %, mask pixels >= '
                                  f'{worst["masks"]:.2f} % (targets: within 0.5 points, 98 %, 95 %)'))
    return rows
