"""Calibrated masks against the best single pixel threshold chosen with the labels (the oracle), on
demo-style classes of unseen data seeds, each with its own random-init encoder: resnet18 at 128 px, the
demo's 4 x 4 epochs, 64 training images, calibrated on 32 other good images, 64 good and 32 defective
test images. The masks are predict's (``load_model(...).predict``), at each image's own 192 px; no label
is used by the rule, the oracle uses them. Pixel F1 over every test pixel (a good decision: empty mask).
Also where the masks sit: centroid distance and offset from the true defects, cells on their receptive
fields against the published stretch (the same model and constants)."""
import shutil
import tempfile

import numpy as np

from benchmarks.models import labelled_test_set, trained_demo_style_class
from benchmarks.rows import Row
from custom_models import load_model
from custom_models.detector import detector_from_model, full_size_mask
from custom_models.model_file import read_model
from utils.calibration import decide_then_mask
from utils.oracle import pixel_f1, pixel_f1_optimal


def centroid_offsets(masks: np.ndarray, truth: np.ndarray, chosen: np.ndarray) -> dict:
    """Mean (dy, dx) and mean distance of the masks' centroids from the true masks', over the ``chosen``
    images with a non-empty mask (pixels of the images; positive = down, right)."""
    from scipy import ndimage
    offsets = np.array([np.subtract(ndimage.center_of_mass(masks[i]), ndimage.center_of_mass(truth[i]))
                        for i in np.flatnonzero(chosen) if masks[i].any()])
    return {'dy': float(offsets[:, 0].mean()), 'dx': float(offsets[:, 1].mean()),
            'distance': float(np.hypot(*offsets.T).mean()), 'count': len(offsets)}


def measure_class(seed: int, encoder_seed: int) -> dict:
    work = tempfile.mkdtemp(prefix='bench_masks_')
    try:
        class_dir, _, checkpoint = trained_demo_style_class(work, seed, encoder_seed)
        paths, truth, labels = labelled_test_set(class_dir)
        detector = load_model(checkpoint)
        predictions = detector.predict(paths)
        ours = np.stack([p.mask for p in predictions])
        defective = np.array([p.defective for p in predictions])
        t = detector.thresholds
        stored = np.stack([full_size_mask(p.model_map, decide_then_mask(p.model_map, p.score, t.image, t.pixel)[1],
                                          p.size) for p in predictions])
        loaded = read_model(checkpoint, {})
        stretched = detector_from_model(loaded, {k: v for k, v in loaded.calibration.items() if k != 'cell_grids'},
                                        'cpu', checkpoint).predict(paths)
        _, oracle = pixel_f1_optimal(truth, np.stack([p.anomaly_map for p in predictions]))
        return {'seed': seed, 'encoder_seed': encoder_seed, 'ours': pixel_f1(ours, truth),
                'stored t_P': pixel_f1(stored, truth), 'oracle': oracle, 'fpr': float(defective[~labels].mean()),
                'recall': float(defective[labels].mean()),
                'centroids': centroid_offsets(ours, truth, defective & labels),
                'stretched centroids': centroid_offsets(np.stack([p.mask for p in stretched]), truth,
                                                        np.array([p.defective for p in stretched]) & labels)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def class_rows(r: dict) -> list:
    name = f'masks, seed {r["seed"]} (encoder seed {r["encoder_seed"]})'
    rows = [Row(name, r['ours'], 'F1', ratio=r['ours'] / r['oracle'],
                notes=f'of the oracle\'s {r["oracle"]:.3f} (one global threshold, with labels); the stored t_P alone '
                      f'{r["stored t_P"]:.3f}; image FPR {100 * r["fpr"]:.1f} %, recall {100 * r["recall"]:.1f} %',
                data={k: r[k] for k in ('oracle', 'stored t_P', 'fpr', 'recall')})]
    for key in ('centroids', 'stretched centroids'):
        c = r[key]
        rows.append(Row(f'{name}, {key}', c['distance'], 'px', data=c,
                        notes=f'mean centroid distance from the true defects over {c["count"]} defective images; '
                              f'mean offset dy {c["dy"]:+.2f}, dx {c["dx"]:+.2f} px (192-px images; ' +
                              ('cells on their receptive fields)' if key == 'centroids' else
                               'the published stretch, same constants)')))
    return rows


def run(a):
    seeds = [int(s) for s in a.mask_seeds.split(',') if s]
    encoder_seeds = [int(s) for s in a.mask_encoder_seeds.split(',') if s]
    if len(encoder_seeds) != len(seeds):
        raise SystemExit(f'--mask-encoder-seeds names {len(encoder_seeds)} seeds for {len(seeds)} --mask-seeds: '
                         f'give one per class')
    results = [measure_class(seed, encoder_seed) for seed, encoder_seed in zip(seeds, encoder_seeds)]
    rows = [row for r in results for row in class_rows(r)]
    if results:
        ratios = [r['ours'] / r['oracle'] for r in results]
        rows.append(Row('masks, over seeds', ratio=float(np.median(ratios)), ratio_spread=(min(ratios), max(ratios)),
                        notes='median [min-max] of our pixel F1 / the oracle\'s'))
    return rows
