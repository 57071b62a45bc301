"""Tiling (``--tile``): the held-out check on high-resolution classes, and its cost against the published resize.

Quality: per unseen data seed, a generated 1,024 px class with 3-px scratches and 5-9 px spots
(``custom_datasets/highres.py``: 32 training images, 12 held-out good ones to calibrate on, 12 good and 24
defective test images), ResNet-18 (random init, encoder seed = data seed) at -inp 256, 2 x 2 epochs
(``--tiling-epochs``), trained
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


def train_and_predict(work: str, class_dir: str, seed: int, tiled: bool, epochs=(2, 2)) -> str:
    """The predict command's output folder for a model trained and calibrated by the norm-train command."""
    from main import main as run_main
    name = 'tiled' if tiled else 'resized'
    out = os.path.join(work, name)
    argv = ['--dataset', 'folder', '--data-path', os.path.dirname(class_dir), '-cl', os.path.basename(class_dir),
            '-enc', 'resnet18', '-inp', '256', '--meta-epochs', str(epochs[0]), '--sub-epochs', str(epochs[1]),
            '--encoder-weights', 'none',
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


def held_out(seed: int, epochs=(2, 2)) -> dict:
    work = tempfile.mkdtemp(prefix='bench_tiling_')
    try:
        class_dir = make_highres_class(work, 'fine_weave', seed=seed)
        return {name: predicted_quality(train_and_predict(work, class_dir, seed, name == 'tiled', epochs), class_dir)
                for name in ('tiled', 'resized')}
    finally:
        shutil.rmtree(work, ignore_errors=True)


SPEED_CASE = r'''
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
from custom_models import load_model
path, width, height, rounds, threads, tile_batch = sys.argv[1], *map(int, sys.argv[2:7])
torch.set_num_threads(threads)
rng = np.random.default_rng(0)
images = [Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)) for _ in range(2)]
model = load_model(path)
model.prepare(tile_batch)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
model.predict(images[0])
start = time.perf_counter()
for k in range(rounds):
    model.predict(images[k % 2])
seconds = (time.perf_counter() - start) / rounds
print(json.dumps({'seconds': seconds, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'before_mb': before}))
'''


def speed_case(path: str, width: int, height: int, rounds: int, threads: int, tile_batch: int = 8) -> dict:
    """One case in a fresh process (its own peak memory): seconds per image, peak and pre-scoring RSS in MB."""
    out = subprocess.run([sys.executable, '-c', SPEED_CASE, path, str(width), str(height), str(rounds), str(threads),
                          str(tile_batch)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


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


def large_image_rows(tiled: str, threads: int) -> list:
    """A 5,000 x 4,000 image (320 tiles of 256): peak memory with 8 tiles scored at a time (predict's default
    batch) against all 320 at once."""
    rows = []
    for tile_batch in (8, 320):
        r = speed_case(tiled, 5000, 4000, 1, threads, tile_batch)
        rows.append(Row(f'tiling, 5000 x 4000 image, 320 tiles, {tile_batch} at a time', r['peak_mb'], 'MB',
                        notes=f'peak RSS ({r["before_mb"]:.0f} MB before scoring); {r["seconds"]:.1f} s per image',
                        data=r))
    return rows


def speed(a) -> list:
    work = tempfile.mkdtemp(prefix='bench_tiling_speed_')
    try:
        models = speed_models(work)
        results = {}
        for _ in range(a.tiling_rounds):  # cases interleaved, each in a fresh process (its own peak memory)
            for side in (256, 512, 1024, 2048):
                for name, path in models.items():
                    rounds = max(1, 16 // (side // 256) ** 2)
                    results.setdefault((side, name), []).append(speed_case(path, side, side, rounds,
                                                                           a.tiling_threads))
        rows = []
        for side in (256, 512, 1024, 2048):
            tiles = (side // 256) ** 2
            per = {name: (float(np.median([r['seconds'] for r in results[(side, name)]])),
                          max(r['peak_mb'] for r in results[(side, name)])) for name in models}
            (t_tiled, m_tiled), (t_resized, m_resized) = per['tiled'], per['resized']
            rows.append(Row(f'tiling, {side} px image, {tiles} tile(s)', 1 / t_tiled, 'img/s',
                            ratio=t_resized / t_tiled,
                            notes=f'peak {m_tiled:.0f} MB; resized to 256 instead: {1 / t_resized:.2f} img/s, '
                                  f'peak {m_resized:.0f} MB (ratio: tiled / resized speed)',
                            data={'tiles': tiles, 'peak_mb': m_tiled, 'resized_img_s': 1 / t_resized,
                                  'resized_peak_mb': m_resized}))
        return rows + large_image_rows(models['tiled'], a.tiling_threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(a):
    rows = speed(a) if a.tiling_speed else []
    for seed in [int(s) for s in a.tiling_seeds.split(',') if s]:
        epochs = tuple(int(n) for n in a.tiling_epochs.split('x'))
        r = held_out(seed, epochs)
        # printed as each seed ends: kept if a later one fails
        print(f'tiling held-out, seed {seed}: {json.dumps(r)}', file=sys.stderr, flush=True)
        for name in ('tiled', 'resized'):
            q = r[name]
            rows.append(Row(f'tiling held-out, seed {seed}, {name}', q['auroc'], '%', data=q,
                            notes=f'image AUROC; pooled mask F1 {q["f1"]:.1f} %, image FPR {100 * q["fpr"]:.0f} %, '
                                  f'recall {100 * q["recall"]:.0f} % (through predict, 1,024 px class, '
                                  f'{a.tiling_epochs} epochs)'))
    return rows
