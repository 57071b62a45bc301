"""Tiling (``--tile``): the held-out check on high-resolution classes, and its cost against the published resize.

Quality: per unseen data seed, a generated 1,024 px class with 3-px scratches and 5-9 px spots
(``custom_datasets/highres.py``: 32 training images, 12 held-out good ones to calibrate on, 12 good and 24
defective test images), ResNet-18 (random init, encoder seed = data seed) at -inp 256, 2 x 2 epochs, trained
and calibrated by the norm-train command twice: tiled (--tile 256) and resized (the published pipeline). Both
are scored by the predict command; image AUROC from its scores, pooled mask F1 from its mask files against
the true masks (every test pixel).

Cost: images/s of ``load_model(...).predict`` and the process's peak memory (a fresh process per case) for
1, 4, 16 and 64 tiles of 256 px (images of 256, 512, 1,024 and 2,048 px), beside the untiled model on the
same images (resized to 256).
"""
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks.rows import Row
from custom_datasets.highres import make_highres_class
from utils.images import read_mask
from utils.metrics import detection_auroc


def train_and_predict(work: str, class_dir: str, seed: int, tiled: bool) -> str:
    """The predict command's output folder for a model trained and calibrated by the norm-train command."""
    from main import main as run_main
    name = 'tiled' if tiled else 'resized'
    out = os.path.join(work, name)
    argv = ['--dataset', 'folder', '--data-path', os.path.dirname(class_dir), '-cl', os.path.basename(class_dir),
            '-enc', 'resnet18', '-inp', '256', '--meta-epochs', '2', '--sub-epochs', '2', '--encoder-weights', 'none',
            '--no-cuda', '--workers', '2', '--seed', str(seed), '--output-dir', out,
            '--calibration-path', os.path.join(class_dir, 'calibration')] + (['--tile', '256'] if tiled else [])
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(argv) == 0, f'training ({name}, seed {seed}) failed'
        (checkpoint,) = [f for f in os.listdir(os.path.join(out, 'weights')) if f.endswith('_final.pt')]
        predicted = os.path.join(work, f'{name}_predict')
        assert run_main(['--action-type', 'predict', '--checkpoint', os.path.join(out, 'weights', checkpoint),
                         '--input', os.path.join(class_dir, 'test'), '--output-dir', predicted, '--workers', '2']) == 0
    return predicted


def predicted_quality(predicted: str, class_dir: str) -> dict:
    """Image AUROC of predict's scores and pooled pixel F1 of its mask files against the true masks."""
    with open(os.path.join(predicted, 'predictions.csv')) as f:
        rows = list(csv.DictReader(f))
    labels = np.array([os.path.basename(os.path.dirname(r['source'])) != 'good' for r in rows])
    tp = fp = fn = 0
    for row, label in zip(rows, labels):
        mask = np.asarray(read_mask(os.path.join(predicted, row['mask']))) > 0
        if label:
            defect, name = row['source'].split(os.sep)[-2:]
            truth = np.asarray(read_mask(os.path.join(class_dir, 'ground_truth', defect,
                                                      name[:-4] + '_mask.png'))) > 0
        else:
            truth = np.zeros_like(mask)
        tp, fp, fn = tp + int((mask & truth).sum()), fp + int((mask & ~truth).sum()), fn + int((~mask & truth).sum())
    decided = np.array([r['decision'] == 'defective' for r in rows])
    return {'auroc': 100.0 * detection_auroc(labels, np.array([float(r['score']) for r in rows])),
            'f1': 100.0 * 2 * tp / max(2 * tp + fp + fn, 1), 'fpr': float(decided[~labels].mean()),
            'recall': float(decided[labels].mean())}


def held_out(seed: int) -> dict:
    work = tempfile.mkdtemp(prefix='bench_tiling_')
    try:
        class_dir = make_highres_class(work, 'fine_weave', seed=seed)
        return {name: predicted_quality(train_and_predict(work, class_dir, seed, name == 'tiled'), class_dir)
                for name in ('tiled', 'resized')}
    finally:
        shutil.rmtree(work, ignore_errors=True)


SPEED_CASE = r'''
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
from custom_models import load_model
path, side, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
rng = np.random.default_rng(0)
images = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(2)]
model = load_model(path)
model.prepare(8)
model.predict(images[0])
start = time.perf_counter()
for k in range(rounds):
    model.predict(images[k % 2])
seconds = (time.perf_counter() - start) / rounds
print(json.dumps({'seconds': seconds, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def speed_models(work: str) -> dict:
    """A calibrated random-init ResNet-18 at 256, tiled (--tile 256) and not, made by the commands."""
    from main import main as run_main
    calibration = os.path.join(make_highres_class(work, 'speed', seed=0, image_size=512, n_train=4, n_calibration=4,
                                                  n_test_good=1, n_test_defect=1), 'calibration', 'good')
    models = {}
    for name, extra in (('tiled', ['--tile', '256']), ('resized', [])):
        base = os.path.join(work, f'{name}.pt')
        with contextlib.redirect_stdout(io.StringIO()):
            from custom_models.checkpoint import save_checkpoint
            from custom_models.encoders import build_encoder
            from custom_models.flows import build_decoders
            encoder = build_encoder('resnet18', 3, 'none')
            save_checkpoint(base, encoder, build_decoders('freia-cflow', encoder.pool_dims, 8))
            out = os.path.join(work, f'{name}_calibrated.pt')
            assert run_main(['--action-type', 'calibrate', '--checkpoint', base, '--calibration-path', calibration,
                             '-inp', '256', '--output', out, '--workers', '0'] + extra) == 0
        models[name] = out
    return models


def speed(a) -> list:
    work = tempfile.mkdtemp(prefix='bench_tiling_speed_')
    try:
        models = speed_models(work)
        results = {}
        for _ in range(a.tiling_rounds):  # cases interleaved, each in a fresh process (its own peak memory)
            for side in (256, 512, 1024, 2048):
                for name, path in models.items():
                    rounds = max(1, 16 // (side // 256) ** 2)
                    out = subprocess.run([sys.executable, '-c', SPEED_CASE, path, str(side), str(rounds),
                                          str(a.tiling_threads)], capture_output=True, text=True, check=True)
                    results.setdefault((side, name), []).append(json.loads(out.stdout.splitlines()[-1]))
        rows = []
        for side in (256, 512, 1024, 2048):
            tiles = (side // 256) ** 2
            per = {name: (float(np.median([r['seconds'] for r in results[(side, name)]])),
                          max(r['peak_mb'] for r in results[(side, name)])) for name in models}
            (t_tiled, m_tiled), (t_resized, m_resized) = per['tiled'], per['resized']
            rows.append(Row(f'tiling, {side} px image, {tiles} tile(s)', 1 / t_tiled, 'img/s', ratio=t_resized / t_tiled,
                            notes=f'peak {m_tiled:.0f} MB; resized to 256 instead: {1 / t_resized:.2f} img/s, '
                                  f'peak {m_resized:.0f} MB (ratio: tiled / resized speed)',
                            data={'tiles': tiles, 'peak_mb': m_tiled, 'resized_img_s': 1 / t_resized,
                                  'resized_peak_mb': m_resized}))
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(a):
    rows = speed(a) if a.tiling_speed else []
    for seed in [int(s) for s in a.tiling_seeds.split(',') if s]:
        r = held_out(seed)
        for name in ('tiled', 'resized'):
            q = r[name]
            rows.append(Row(f'tiling held-out, seed {seed}, {name}', q['auroc'], 'AUROC %',
                            notes=f'pooled mask F1 {q["f1"]:.1f} %, image FPR {100 * q["fpr"]:.0f} %, recall '
                                  f'{100 * q["recall"]:.0f} % (through predict, 1,024 px class)', data=q))
    return rows
