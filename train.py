"""``--action-type norm-train`` and ``norm-test``, as the published code runs them.

Training: meta epochs of the published steps (``custom_models/training.py``), each followed by
a test pass (``custom_models/scoring.py``) whose log-likelihoods become anomaly maps normalised
over the test set (``utils/anomaly_map.py``) and the metrics; then the final checkpoint, and its
calibration (``utils/calibration.py``). This module orchestrates: data, epochs, checkpoints,
results files.
"""
import random
import sys
from typing import List, Optional

import numpy as np
import torch

from actions import (benchmark_pass, calibrate_images, calibrate_on_folder, data_options, loader_options,
                     model_settings, record_stop, score_options, train_options)
from custom_datasets import build_datasets
from custom_datasets.common import calibration_images, require_defect_pixels
from utils.images import read_rgb
from custom_datasets.loaders import ReplayLoader, make_loader
from custom_models.encoders import build_encoder, input_size_fits, smallest_input_size, tap_shapes
from custom_models.flows import build_decoders
from custom_models.scoring import TestScores, score_loader, score_tiled
from custom_models.training import train_meta_epoch
from utils.anomaly_map import anomaly_maps, calibrated_maps, image_scores, stitched_maps
from utils.calibration import CALIBRATION_KEY, decision_quality
from utils.oracle import image_f1_optimal_threshold
from custom_models.checkpoint import save_checkpoint
from utils.errors import CflowError, user_message
from utils.metrics import aupro, detection_auroc, localization_auroc, require_both_classes
from custom_models.detector import detector_from_model
from custom_models.model_file import LoadedModel, read_model
from utils.results import METRIC_NAMES, ScoreObserver, reserve_run, write_results
from utils.pro_curve import ProCurve
from utils.progress import count
from utils.segmentation_benchmark import benchmark_limits, pro_name
from utils.threads import ThreadPolicy
from utils.tiling import tiling_of


def seed_everything(seed: int) -> None:
    """Seed Python, numpy (FrEIA's soft permutations) and torch (init, permutations, loaders)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fibers_fit(enc_arch: str, pool_layers: int, input_size: int, batch_size: int, fiber_batch: int) -> bool:
    """Whether every tapped map of a batch gives at least one fiber batch of N."""
    if not input_size_fits(enc_arch, pool_layers, input_size):
        return False
    return all(batch_size * H * W >= fiber_batch for _, H, W in tap_shapes(enc_arch, pool_layers, input_size))


def working_combination(c, n_train: int):
    """(-bs, -inp) that trains on ``n_train`` images: the given -inp if some batch size fits it, else
    the smallest larger standard size; among the batch sizes that fit, the one that drops the fewest
    images per sub-epoch (the larger on a tie, up to the published 32). None if nothing fits."""
    sizes = [c.input_size] + [s for s in (128, 192, 256, 320, 384, 448, 512, 640, 768, 1024) if s > c.input_size]
    for inp in sizes:
        fitting = [bs for bs in range(1, min(n_train, 32) + 1)
                   if fibers_fit(c.enc_arch, c.pool_layers, inp, bs, c.fiber_batch)]
        if fitting:
            return min(fitting, key=lambda bs: (n_train % bs, -bs)), inp
    return None


def check_fiber_count(c, encoder, n_train: int) -> None:
    """Fail before training if the images cannot fill the batches, naming a batch size and input size
    that work for this many images; warn when -bs drops a large share of them every sub-epoch."""
    fits = fibers_fit(c.enc_arch, c.pool_layers, c.input_size, c.batch_size, c.fiber_batch)
    if n_train < c.batch_size or not fits:
        found = working_combination(c, n_train)
        fix = (f'try -bs {found[0]} -inp {found[1]} (fits {n_train} images, '
               f'{count(n_train % found[0], "image")} dropped per sub-epoch)' if found else
               f'no batch size fits {n_train} images with {c.enc_arch}: add training images')
        if n_train < c.batch_size:
            raise CflowError(f'the training set has {n_train} images, fewer than -bs/--batch-size {c.batch_size} '
                             f'(incomplete batches are dropped, as published): {fix}')
        name, (C, H, W) = next((n, s) for n, s in zip(encoder.tap_names, tap_shapes(
            c.enc_arch, c.pool_layers, c.input_size)) if c.batch_size * s[1] * s[2] < c.fiber_batch)
        smallest = smallest_input_size(c.enc_arch, c.pool_layers, -(-c.fiber_batch // c.batch_size))
        raise CflowError(f'pool layer {name} gives {c.batch_size} x {H} x {W} = {c.batch_size * H * W} fibers per '
                         f'image batch, fewer than one fiber batch of {c.fiber_batch}: raise -bs/--batch-size or '
                         f'-inp/--input-size (at -bs {c.batch_size}, {c.enc_arch} needs -inp {smallest} or more); '
                         f'for these images {fix}')
    dropped = n_train % c.batch_size
    if dropped > 0.2 * n_train:
        found = working_combination(c, n_train)
        better = f'; -bs {found[0]} -inp {found[1]} drops {count(n_train % found[0], "image")}' if found else ''
        print(f'Warning: -bs {c.batch_size} trains on {n_train - dropped} of the {n_train} training images per '
              f'sub-epoch ({dropped} dropped: incomplete batches are dropped, as published){better}')


def map_metrics(c, labels, masks, maps: np.ndarray, image_score: np.ndarray) -> dict:
    """Detection AUROC, localization AUROC, with --pro the published AUPRO and with --pro-limit L the AU-PRO
    up to FPR L over the exact PRO curve (at the model's resolution; MVTec AD 2's own metrics are computed at
    each image's, after calibration), in %."""
    metrics = {'DET_AUROC': 100.0 * detection_auroc(labels, image_score),
               'SEG_AUROC': 100.0 * localization_auroc(masks, maps)}
    if c.pro:
        metrics['SEG_AUPRO'] = 100.0 * aupro(masks, maps)
    if c.pro_limit is not None and c.dataset != 'mvtec_ad2':
        curve = ProCurve()
        for anomaly_map, mask in zip(maps, masks):
            curve.add(anomaly_map, mask)
        metrics[pro_name(c.pro_limit)] = 100.0 * curve.au_pro(c.pro_limit)
    return metrics


def set_maps(c, scores: TestScores, calibration: Optional[dict] = None) -> np.ndarray:
    """The anomaly maps of a test pass: normalised over the set as published, or with the calibration's
    constants; a tiled model's stitched (``utils/tiling.py``), at the canvas resolution."""
    if scores.layouts is not None:
        return stitched_maps(scores.log_probs, scores.layouts, c.input_size, calibration)
    if calibration is None:
        return anomaly_maps(scores.log_probs, c.crp_size)
    return calibrated_maps(scores.log_probs, c.crp_size, calibration)


def tiled_sets(c, train_set, test_set):
    """(train set, test set) as a tiled model reads them (``custom_datasets/tiles.py``); as given when untiled."""
    tiling = tiling_of(model_settings(c))
    if tiling is None:
        return train_set, test_set
    from custom_datasets.tiles import TiledTrainingImages, tiled_test_set
    return (TiledTrainingImages(train_set, tiling) if train_set is not None else None,
            tiled_test_set(test_set, tiling) if test_set is not None else None)


def score_test_set(c, loader, encoder, decoders) -> TestScores:
    """One pass over the test set (a tiled model's: its tiles, -bs at a time)."""
    if c.tile is not None:
        return score_tiled(score_options(c), loader, encoder, decoders, c.batch_size)
    return score_loader(score_options(c), loader, encoder, decoders)


def replayed_test_loader(c, test_set):
    """The test set's loader, replayed from memory after the first pass (``--test-cache-mb``)."""
    if c.tile is not None:
        from custom_datasets.tiles import tiled_loader
        return ReplayLoader(tiled_loader(test_set, c.workers), c.test_cache_mb)
    return ReplayLoader(make_loader(test_set, False, loader_options(c)), c.test_cache_mb)


def evaluate(c, scores: TestScores):
    """Anomaly maps, image scores and the metrics (in %) of one test pass (published normalisation)."""
    maps = set_maps(c, scores)
    image_score = image_scores(maps)
    return maps, image_score, map_metrics(c, scores.labels, scores.masks, maps, image_score)


def evaluate_calibrated(c, scores: TestScores, calibration: dict) -> dict:
    """The calibrated maps' metrics, and the decisions at the stored threshold beside the F1-optimal one
    (an oracle: it is chosen with the test labels)."""
    maps = set_maps(c, scores, calibration)
    image_score = image_scores(maps)
    oracle = image_f1_optimal_threshold(scores.labels, image_score)
    return {**map_metrics(c, scores.labels, scores.masks, maps, image_score),
            'at_stored_threshold': decision_quality(scores.labels, image_score, calibration['image_threshold']),
            'at_f1_optimal_threshold_oracle': decision_quality(scores.labels, image_score, oracle),
            'calibration_source': calibration['source']}


def print_calibrated(result: dict) -> None:
    stored, oracle = result['at_stored_threshold'], result['at_f1_optimal_threshold_oracle']
    metrics = ', '.join(f'{k} {result[k]:.2f}' for k in METRIC_NAMES if k in result)
    print(f'Calibrated maps ({result["calibration_source"]}): {metrics}')
    for name, q in (('stored threshold', stored), ('F1-optimal threshold (oracle)', oracle)):
        print(f'  at the {name} {q["threshold"]:.4g}: false-positive rate {100 * q["fpr"]:.1f}% on good images, '
              f'recall {100 * q["recall"]:.1f}%, F1 {100 * q["f1"]:.1f}%')


def benchmark_metrics(c, encoder, decoders, calibration: Optional[dict], test_set, source: str) -> Optional[dict]:
    """MVTec AD 2's metrics of test_public (``utils/segmentation_benchmark.py``): the calibrated maps at each
    image's own resolution, in float16 as ``--action-type submission`` writes them, SegF1 at the stored
    thresholds. A model without calibration is calibrated on validation/good first (the benchmark's rule)."""
    from custom_datasets.mvtec_ad2 import CALIBRATION_SOURCE, good_images
    if calibration is None:
        if c.action_type == 'norm-train':
            return None  # its calibration failed (said so): no thresholds to score with
        calibration = calibrate_images(c, encoder, decoders, good_images(c.data_path, c.class_name, 'validation'),
                                       CALIBRATION_SOURCE)
    detector = detector_from_model(LoadedModel(encoder, decoders, model_settings(c), calibration), calibration,
                                   c.device, source)
    metrics = benchmark_pass(detector, c.data_path, test_set.x, test_set.y, test_set.mask, batch_size=c.batch_size,
                             limits=benchmark_limits(c.pro_limit))
    print(f'MVTec AD 2 metrics of test_public (calibrated on {calibration["source"]}; each image\'s own size): ' +
          ', '.join(f'{name} {value:.2f}' for name, value in metrics.items()))
    return {'split': 'test_public', 'resolution': 'each image\'s own', 'maps': 'float16, as submitted', **metrics,
            'image_threshold': calibration['image_threshold'], 'pixel_threshold': calibration['pixel_threshold'],
            'calibration_source': calibration['source']}


def build_model(c):
    """(encoder, decoders) on ``c.device``, seeded: the encoder from ``c.encoder_source`` (ImageNet,
    a file, a random init), or the model file of norm-test (its calibration is ``c.calibration``)."""
    seed_everything(c.seed)
    if c.checkpoint:
        loaded = read_model(c.checkpoint, model_settings(c), weights_architecture=False)  # checked against -enc...
        encoder, decoders = loaded.encoder, loaded.decoders
        print(f'Loading weights from {c.checkpoint}')
    else:
        encoder = build_encoder(c.enc_arch, c.pool_layers, c.encoder_source)
        decoders = build_decoders(c.dec_arch, encoder.pool_dims, c.coupling_blocks)
    encoder = encoder.to(c.device)
    if c.device.startswith('cuda'):
        encoder = encoder.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    decoders = [decoder.to(c.device) for decoder in decoders]
    return encoder, decoders


def run(c) -> dict:
    """Train (or load) and test as the flags say; write results and checkpoints."""
    train_set, test_set = build_datasets(data_options(c))
    labelled = test_set is not None  # else good images only: no test pass, no metrics
    if labelled:
        require_both_classes(test_set.y)  # before any training, not after the first epoch
        require_defect_pixels(test_set)
    train_set, test_set = tiled_sets(c, train_set, test_set)
    encoder, decoders = build_model(c)
    print(f'Model {c.model} on {c.device}: encoder {c.enc_arch} taps {encoder.tap_names} '
          f'(channels {encoder.pool_dims}), {len(train_set) if train_set else 0} train / '
          f'{count(len(test_set) if labelled else 0, "test image")}')
    test_loader = replayed_test_loader(c, test_set) if labelled else None
    calibration_paths = None
    if c.action_type == 'norm-train' and c.calibration_path:
        calibration_paths = calibration_images(c.calibration_path)  # a typo or bad image costs no training
    elif getattr(train_set, 'calibration_images', None):
        calibration_paths = train_set.calibration_images
    optimizer, train_loader, threads = training_setup(c, encoder, decoders, train_set)

    run_files = reserve_run(c.output_dir, c.model, c.run_date)
    calibration = c.calibration  # norm-test: the model file's; norm-train: made after training
    observers = {name: ScoreObserver(name) for name in METRIC_NAMES}
    history, checkpoints = [], []
    best_path = run_files.checkpoint()
    maps = image_score = scores = None
    try:
        for epoch in range(c.meta_epochs):
            train_loss = None
            if optimizer is not None:
                print(f'Train meta epoch: {epoch}')
                try:
                    train_loss = train_meta_epoch(train_options(c), epoch, train_loader, encoder, decoders, optimizer,
                                                  threads=threads)
                finally:  # the test pass and whatever runs next in this process get the usual threads
                    threads.restore()
            if not labelled:
                history.append({'epoch': epoch, 'train_loss': train_loss})
                write_results(c.items(), run_files, observers, history, checkpoints, status='running')
                continue
            scores = score_test_set(c, test_loader, encoder, decoders)
            print(f'Epoch: {epoch:d} \t test_loss: {scores.loss:.4f} and {scores.images_per_second:.2f} fps')
            maps, image_score, metrics = evaluate(c, scores)
            improved = {name: observers[name].update(value, epoch) for name, value in metrics.items()
                        if name in observers}
            for name in sorted(set(metrics) - set(observers)):  # --pro-limit's: in the results files' epochs
                print(f'{name}: \t {metrics[name]:.2f}')
            if c.save_best and improved['SEG_AUROC'] and optimizer is not None:
                save_checkpoint(best_path, encoder, decoders)
                print(f'Saving weights to {best_path}')
                if best_path not in checkpoints:
                    checkpoints.append(best_path)
            history.append({'epoch': epoch, 'train_loss': train_loss, 'test_loss': scores.loss,
                            'test_fps': scores.images_per_second, **metrics})
            if calibration is not None:  # norm-test of a calibrated model
                history[-1]['calibrated'] = evaluate_calibrated(c, scores, calibration)
                print_calibrated(history[-1]['calibrated'])
            write_results(c.items(), run_files, observers, history, checkpoints, status='running')
        if optimizer is not None:
            final_path = run_files.checkpoint('_final')
            save_checkpoint(final_path, encoder, decoders)  # the model first: calibration must not cost it
            checkpoints.append(final_path)
            print(f'Saving final weights to {final_path}')
            calibration = calibrate_final(c, encoder, decoders, train_set, calibration_paths, final_path, scores,
                                          history)
    except BaseException as exc:  # Ctrl-C or an error: keep what was done, marked as not complete
        record_stop(c, exc, run_files, observers, history, checkpoints)
        raise
    extra = None
    if c.dataset == 'mvtec_ad2' and labelled:
        extra = {'benchmark': benchmark_metrics(c, encoder, decoders, calibration, test_set,
                                                checkpoints[-1] if checkpoints else c.checkpoint)}
    files = write_results(c.items(), run_files, observers, history, checkpoints, extra=extra)
    print_summary(c, observers, history)
    if c.viz and labelled:
        files['viz'] = visualize(c, run_files.viz_dir, test_set.x, scores, maps, image_score, calibration,
                                 history[-1]['epoch'])
    print(f'Results in {", ".join(files[k] for k in ("text", "json") if k in files)}')
    return {'observers': observers, 'history': history, 'files': files, 'checkpoints': checkpoints,
            'maps': maps, 'scores': image_score, 'labels': scores.labels if scores else None}


def training_setup(c, encoder, decoders, train_set):
    """(optimizer, training loader, thread policy) for norm-train: the published one Adam over every
    decoder; (None, None, None) for norm-test."""
    if c.action_type != 'norm-train':
        return None, None, None
    check_fiber_count(c, encoder, len(train_set))
    optimizer = torch.optim.Adam([p for decoder in decoders for p in decoder.parameters()], lr=c.lr)
    return optimizer, make_loader(train_set, True, loader_options(c)), ThreadPolicy(c.threads)


def visualize(c, folder: str, paths, scores: TestScores, maps, image_score, calibration: Optional[dict],
              epoch: int) -> str:
    """--viz: the pictures predict draws (calibrated maps, stored thresholds) for a calibrated model, else
    the published maps with the oracle thresholds; returns the folder."""
    from utils.viz import save_visualizations
    if calibration is not None:
        maps = set_maps(c, scores, calibration)
        image_score = image_scores(maps)
    folder = save_visualizations(c.class_name, folder, paths, maps, image_score, scores.labels, scores.masks,
                                 epoch=epoch, read_image=read_rgb, calibration=calibration)
    print(f'Visualizations in {folder}')
    return folder


OPTIMISTIC = ('training images: the flows were fitted to them, so this threshold is optimistic '
              '(more false alarms on new good images than calibrated); pass --calibration-path')


def calibrate_after_training(c, encoder, decoders, train_set, paths: Optional[List[str]] = None) -> dict:
    """After norm-train: on ``paths`` (--calibration-path, listed and checked before training, or a
    good-only class's ``train_set.calibration_images``), else on the training images."""
    if c.calibration_path:
        return calibrate_on_folder(c, encoder, decoders, paths)
    if paths:
        return calibrate_images(c, encoder, decoders, paths, train_set.calibration_source)
    print(f'Notice: calibrating on the {OPTIMISTIC}')
    return calibrate_images(c, encoder, decoders, list(train_set.x), OPTIMISTIC.split(':')[0])


def calibrate_command(c, checkpoint: str) -> str:
    """The command that calibrates ``checkpoint`` (made with these settings) later."""
    folder = c.calibration_path or 'DIR_OF_GOOD_IMAGES'
    dataset = ' --dataset stc' if c.dataset == 'stc' else ''  # its normalisation
    return (f'python main.py --action-type calibrate --checkpoint {checkpoint} --calibration-path {folder}'
            f'{dataset} -enc {c.enc_arch} -dec {c.dec_arch} -pl {c.pool_layers} -cb {c.coupling_blocks} '
            f'-inp {c.input_size}')


def calibrate_final(c, encoder, decoders, train_set, calibration_paths, final_path: str, scores,
                    history) -> Optional[dict]:
    """Calibrate the trained model and rewrite its final checkpoint with the calibration; if that
    fails, the uncalibrated checkpoint stays, and the command that calibrates it is printed.
    Returns the calibration, or None when it failed."""
    try:
        calibration = calibrate_after_training(c, encoder, decoders, train_set, calibration_paths)
    except CflowError as exc:
        history[-1]['calibration_error'] = user_message(exc)
        print(f'warning: calibration failed: {user_message(exc)}. The uncalibrated model is kept in {final_path}; '
              f'calibrate it with: {calibrate_command(c, final_path)}', file=sys.stderr)
        return None
    save_checkpoint(final_path, encoder, decoders, extra={CALIBRATION_KEY: calibration})
    if scores is not None:  # a labelled test set: the calibrated maps' metrics and decisions
        history[-1]['calibrated'] = evaluate_calibrated(c, scores, calibration)
        print_calibrated(history[-1]['calibrated'])
    return calibration


def print_summary(c, observers, history) -> None:
    last = history[-1]
    if all(o.last is None for o in observers.values()):
        print(f'Result for {c.class_name} ({c.model}, seed {c.seed}): trained and calibrated; no metrics '
              f'(no labelled defects to measure them on)')
        return
    print(f'Result for {c.class_name} ({c.model}, seed {c.seed}):')
    for name, o in observers.items():
        if o.last is None:
            continue
        print(f'  {name}: max {o.max_score:.2f} at epoch {o.max_epoch} | last (epoch {last["epoch"]}) {o.last:.2f}')
