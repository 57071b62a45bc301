"""Training and test loops (``norm-train``, ``norm-test``), following the published code.

Training, per image batch and per pool layer: a fresh random permutation of the
B*H*W fibers, cut into floor(E/N) batches of N = 256; each step minimises
-logsigmoid(log p / C) with Adam over all decoders together, ``zero_grad(set_to_none=False)``
as in torch 1.8. Testing scores every fiber of the test set (all at once per batch),
turns the log-likelihoods into anomaly maps and computes the metrics.
"""
import functools
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from custom_datasets import build_datasets
from custom_datasets.common import require_defect_pixels
from custom_datasets.loaders import ReplayLoader, make_loader
from custom_models.encoders import (build_encoder, imagenet_weights_cached, input_size_fits, smallest_input_size,
                                    tap_shapes)
from custom_models.fast_flow import FastFlowScorer, coupling_log_likelihood
from custom_models.fibers import score_feature_map, to_fibers
from custom_models.flows import build_decoders, log_likelihood, nll_loss
from utils.anomaly_map import anomaly_maps, calibrated_maps, image_scores
from utils.decoder_adam import make_stepper
from utils.calibration import CALIBRATION_KEY, decision_quality, f1_optimal_threshold
from utils.checkpoint import load_checkpoint_decoders, load_checkpoint_encoder, read_checkpoint, save_checkpoint
from utils.errors import CflowError, user_message
from utils.metrics import aupro, detection_auroc, localization_auroc, require_both_classes
from utils.results import METRIC_NAMES, ScoreObserver, reserve_run, write_results
from utils.progress import count, progress
from utils.schedule import cosine_lr, set_lr, warmup_lr
from utils.threads import ThreadPolicy


def seed_everything(seed: int) -> None:
    """Seed Python, numpy (FrEIA's soft permutations) and torch (init, permutations, loaders)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encoder_weights_choice(c) -> str:
    """'imagenet', 'none' or a path: what ``build_encoder`` loads, with a notice where it matters."""
    if c.action_type == 'norm-test':
        return 'none'  # every encoder weight comes from the checkpoint
    if c.encoder_weights is not None:
        if c.encoder_weights == 'none':
            print('Notice: random-init encoder (--encoder-weights none); scores are not comparable to the paper')
        return c.encoder_weights
    if c.dataset == 'demo' and not imagenet_weights_cached(c.enc_arch):
        print(f'Notice: no ImageNet weights for {c.enc_arch} in the torch hub cache; the demo uses a '
              f'seeded random-init encoder (scores are lower than with ImageNet weights)')
        return 'none'
    return 'imagenet'


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


def check_finite_loss(mean_loss: float, epoch: int, sub_epoch: int) -> None:
    """Stop a diverged flow where the loss is synchronised anyway: the end of a sub-epoch."""
    if not math.isfinite(mean_loss):
        raise CflowError(f'training diverged: the loss of epoch {epoch}.{sub_epoch} is {mean_loss}; '
                         f'lower --lr, use fewer -cb/--coupling-blocks, or check the images for '
                         f'extreme values (the results of earlier epochs are kept)')


def train_meta_epoch(c, epoch: int, loader: DataLoader, encoder, decoders, optimizer,
                     step_log: Optional[list] = None, threads=None) -> float:
    """One meta epoch of ``c.sub_epochs`` passes; returns the last sub-epoch's mean loss.

    ``optimizer`` is the published one Adam over all decoders; ``c.adam`` says how it is
    stepped (``utils/decoder_adam.py``: fused kernel by default, the published kernel, or
    the idle decoders' steps deferred).
    ``threads``, when given, is a ``utils.threads.ThreadPolicy``, re-checked between steps.

    ``step_log``, when given, receives (mean loss, lr) of every optimizer step (a host
    sync per step: for tests against the published trajectory, not for real runs).
    A non-finite sub-epoch loss stops training with a one-line error.
    """
    for decoder in decoders:
        decoder.train()
    stepper = make_stepper(getattr(c, 'adam', 'fused'), optimizer, [list(d.parameters()) for d in decoders])
    set_lr(stepper, cosine_lr(c.lr, epoch, c.meta_epochs))
    mean_loss = float('nan')
    try:
        for sub_epoch in range(c.sub_epochs):
            mean_loss = train_sub_epoch(c, epoch, sub_epoch, loader, encoder, decoders, stepper, step_log, threads)
    finally:  # every waiting idle step applied before anything reads the weights, also on Ctrl-C
        stepper.flush()
    return mean_loss


def train_sub_epoch(c, epoch: int, sub_epoch: int, loader, encoder, decoders, stepper,
                    step_log: Optional[list], threads) -> float:
    """One pass over the training images: the published steps, per image batch and pool layer."""
    n_batches = len(loader)
    N = c.fiber_batch
    loss_sum = torch.zeros((), device=c.device, dtype=torch.float64)
    loss_count = 0
    bar = progress(loader, total=n_batches, desc=f'train epoch {epoch}.{sub_epoch}')
    for i, (image, _, _) in enumerate(bar):
        warm = warmup_lr(c.lr, c.meta_epochs, epoch, i + sub_epoch * n_batches, n_batches * c.sub_epochs)
        if warm is not None:
            set_lr(stepper, warm)
        with torch.no_grad():
            taps = encoder(image.to(c.device, non_blocking=True))
        for layer, (feature_map, decoder) in enumerate(zip(taps, decoders)):
            fibers, positions = to_fibers(feature_map, c.condition_vec)
            perm = torch.randperm(fibers.shape[0]).to(c.device)
            for f in range(fibers.shape[0] // N):
                idx = perm[f * N:(f + 1) * N]
                stepper.prepare(layer)  # includes zero_grad(set_to_none=False), as in torch 1.8
                loss = nll_loss(log_likelihood(decoder, fibers[idx], positions[idx]))
                loss.mean().backward()
                stepper.step(layer)
                if step_log is not None:
                    step_log.append((loss.detach().mean().item(), stepper.param_groups[0]['lr']))
                loss_sum += loss.detach().sum()
                loss_count += loss.shape[0]
                if threads is not None:
                    threads.adjust()  # a clock read; the load itself is measured every second or so
    mean_loss = loss_sum.item() / max(loss_count, 1)
    check_finite_loss(mean_loss, epoch, sub_epoch)
    print(f'Epoch: {epoch:d}.{sub_epoch:d} \t train loss: {mean_loss:.4f}, lr={stepper.param_groups[0]["lr"]:.6f}')
    return mean_loss


def check_finite_scores(log_probs: List[torch.Tensor]) -> None:
    """A NaN or +inf log-likelihood would make every map of its layer NaN: stop with a clear line.
    (-inf is a valid "infinitely unlikely": exp(-inf - max) = 0, the most anomalous value.)"""
    for layer, log_prob in enumerate(log_probs):
        bad = int((torch.isnan(log_prob) | (log_prob == float('inf'))).sum())
        if bad:
            raise CflowError(f'decoder {layer} gave {bad} NaN or +inf log-likelihoods of {log_prob.numel()}: the '
                             f'flow diverged or the checkpoint is broken; retrain with a lower --lr (the results '
                             f'of earlier epochs are kept)')


@dataclass
class TestScores:
    log_probs: List[torch.Tensor]  # per pool layer, N x H_l x W_l
    labels: np.ndarray             # N, 0/1
    masks: np.ndarray              # N x inp x inp, bool
    loss: float
    images_per_second: float


def make_scorers(c, decoders) -> List[Callable[[torch.Tensor], torch.Tensor]]:
    """Per decoder, a function from a B x C x H x W map to B x H x W log-likelihoods.

    ``fused`` (default) precomputes the positional-condition terms and folds the global
    affine into the permutation (``custom_models/fast_flow.py``); ``freia`` calls the
    FrEIA modules. Both score all fibers of a batch at once and agree to round-off.
    """
    for decoder in decoders:
        decoder.eval()
    if c.scorer == 'freia':
        return [functools.partial(score_feature_map, torch.compile(d) if c.compile else d,
                                  condition_vec=c.condition_vec, chunk=c.fiber_chunk) for d in decoders]
    scorers = [FastFlowScorer(d, c.condition_vec).to(c.device) for d in decoders]
    if c.compile:  # only the arithmetic: the cached condition terms stay outside the graph
        compiled = torch.compile(coupling_log_likelihood)
        for scorer in scorers:
            scorer.score_fibers = compiled
    return [functools.partial(scorer, chunk=c.fiber_chunk) for scorer in scorers]


def score_batch(c, encoder, scorers, images: torch.Tensor) -> List[torch.Tensor]:
    """Per pool layer, B x H_l x W_l log-likelihoods of a batch of normalised images."""
    autocast = torch.autocast(device_type=c.device.split(':')[0], dtype=torch.bfloat16, enabled=c.bf16)
    with autocast:
        taps = encoder(images.to(c.device, non_blocking=True))
    return [scorer(feature_map.float()) for feature_map, scorer in zip(taps, scorers)]


def score_test_set(c, loader: DataLoader, encoder, decoders) -> TestScores:
    """Per-layer log-likelihood of every position of every test image."""
    per_layer = [[] for _ in decoders]
    labels, masks = [], []
    start = time.time()
    with torch.inference_mode():
        scorers = make_scorers(c, decoders)
        for image, label, mask in progress(loader, total=len(loader), desc='test'):
            labels.append(label.numpy())
            masks.append(mask[:, 0].numpy() != 0)
            for l, log_prob in enumerate(score_batch(c, encoder, scorers, image)):
                per_layer[l].append(log_prob)
        log_probs = [torch.cat(chunks).cpu() for chunks in per_layer]
    seconds = time.time() - start
    check_finite_scores(log_probs)
    loss = torch.cat([nll_loss(lp.flatten().double()) for lp in log_probs]).mean().item()
    return TestScores(log_probs, np.concatenate(labels), np.concatenate(masks), loss,
                      len(loader.dataset) / max(seconds, 1e-9))


def map_metrics(c, labels, masks, maps: np.ndarray, image_score: np.ndarray) -> dict:
    """Detection AUROC, localization AUROC and (with --pro) AUPRO, in %."""
    metrics = {'DET_AUROC': 100.0 * detection_auroc(labels, image_score),
               'SEG_AUROC': 100.0 * localization_auroc(masks, maps)}
    if c.pro:
        metrics['SEG_AUPRO'] = 100.0 * aupro(masks, maps)
    return metrics


def evaluate(c, scores: TestScores):
    """Anomaly maps, image scores and the metrics (in %) of one test pass (published normalisation)."""
    maps = anomaly_maps(scores.log_probs, c.crp_size)
    image_score = image_scores(maps)
    return maps, image_score, map_metrics(c, scores.labels, scores.masks, maps, image_score)


def evaluate_calibrated(c, scores: TestScores, calibration: dict) -> dict:
    """The calibrated maps' metrics, and the decisions at the stored threshold beside the F1-optimal one
    (an oracle: it is chosen with the test labels)."""
    maps = calibrated_maps(scores.log_probs, c.crp_size, calibration)
    image_score = image_scores(maps)
    oracle = f1_optimal_threshold(scores.labels, image_score)
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


def build_model(c):
    """Encoder and decoders on ``c.device``, seeded; checkpoint loaded for norm-test.

    A checkpoint's calibration, if any, goes to ``c.calibration`` (norm-test then also
    reports the calibrated metrics).
    """
    seed_everything(c.seed)
    c.calibration = None
    if c.checkpoint.endswith('.safetensors'):  # compact file: its settings were applied by config
        from utils.model_file import read_compact
        loaded = read_compact(c.checkpoint)
        encoder, decoders, c.calibration = loaded.encoder, loaded.decoders, loaded.calibration
        c.encoder_source = 'checkpoint'
        print(f'Loading weights from {c.checkpoint}')
    else:
        state = read_checkpoint(c.checkpoint) if c.checkpoint else None
        c.encoder_source = 'checkpoint' if state is not None else encoder_weights_choice(c)  # recorded in results
        encoder = build_encoder(c.enc_arch, c.pool_layers, 'none' if state is not None else c.encoder_source)
        if state is not None:
            load_checkpoint_encoder(state, c.checkpoint, encoder)
        decoders = build_decoders(c.dec_arch, encoder.pool_dims, c.coupling_blocks)
        if state is not None:
            load_checkpoint_decoders(state, c.checkpoint, decoders)
            c.calibration = state.get(CALIBRATION_KEY)
            print(f'Loading weights from {c.checkpoint}')
    encoder = encoder.to(c.device)
    if c.device.startswith('cuda'):
        encoder = encoder.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    decoders = [decoder.to(c.device) for decoder in decoders]
    return encoder, decoders


def run(c) -> dict:
    """Train (or load) and test as the flags say; write results and checkpoints."""
    train_set, test_set = build_datasets(c)
    labelled = test_set is not None  # else good images only: no test pass, no metrics
    if labelled:
        require_both_classes(test_set.y)  # before any training, not after the first epoch
        require_defect_pixels(test_set)
    encoder, decoders = build_model(c)
    print(f'Model {c.model} on {c.device}: encoder {c.enc_arch} taps {encoder.tap_names} '
          f'(channels {encoder.pool_dims}), {len(train_set) if train_set else 0} train / '
          f'{count(len(test_set) if labelled else 0, "test image")}')
    test_loader = ReplayLoader(make_loader(c, test_set, train=False), c.test_cache_mb) if labelled else None
    optimizer, train_loader, threads, calibration_paths = None, None, None, None
    if c.action_type == 'norm-train' and c.calibration_path:
        from calibrate import calibration_images
        calibration_paths = calibration_images(c.calibration_path)  # a typo or bad image costs no training
    elif getattr(train_set, 'calibration_images', None):
        calibration_paths = train_set.calibration_images
    if c.action_type == 'norm-train':
        check_fiber_count(c, encoder, len(train_set))
        params = [p for decoder in decoders for p in decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=c.lr)
        train_loader = make_loader(c, train_set, train=True)
        threads = ThreadPolicy(c.threads)

    reserve_run(c)
    observers = {name: ScoreObserver(name) for name in METRIC_NAMES}
    history, checkpoints = [], []
    best_path = os.path.join(c.weights_dir, f'{c.model}_{c.run_date}.pt')
    maps = image_score = scores = None
    try:
        for epoch in range(c.meta_epochs):
            train_loss = None
            if optimizer is not None:
                print(f'Train meta epoch: {epoch}')
                try:
                    train_loss = train_meta_epoch(c, epoch, train_loader, encoder, decoders, optimizer,
                                                  threads=threads)
                finally:  # the test pass and whatever runs next in this process get the usual threads
                    threads.restore()
            if not labelled:
                history.append({'epoch': epoch, 'train_loss': train_loss})
                write_results(c, observers, history, checkpoints, status='running')
                continue
            scores = score_test_set(c, test_loader, encoder, decoders)
            print(f'Epoch: {epoch:d} \t test_loss: {scores.loss:.4f} and {scores.images_per_second:.2f} fps')
            maps, image_score, metrics = evaluate(c, scores)
            improved = {name: observers[name].update(value, epoch) for name, value in metrics.items()}
            if c.save_best and improved['SEG_AUROC'] and optimizer is not None:
                save_checkpoint(best_path, encoder, decoders)
                print(f'Saving weights to {best_path}')
                if best_path not in checkpoints:
                    checkpoints.append(best_path)
            history.append({'epoch': epoch, 'train_loss': train_loss, 'test_loss': scores.loss,
                            'test_fps': scores.images_per_second, **metrics})
            if c.calibration is not None:  # norm-test of a calibrated model
                history[-1]['calibrated'] = evaluate_calibrated(c, scores, c.calibration)
                print_calibrated(history[-1]['calibrated'])
            write_results(c, observers, history, checkpoints, status='running')
        if optimizer is not None:
            final_path = os.path.join(c.weights_dir, f'{c.model}_{c.run_date}_final.pt')
            save_checkpoint(final_path, encoder, decoders)  # the model first: calibration must not cost it
            checkpoints.append(final_path)
            print(f'Saving final weights to {final_path}')
            calibrate_final(c, encoder, decoders, train_set, calibration_paths, final_path, scores, history)
    except BaseException as exc:  # Ctrl-C or an error: keep what was done, marked as not complete
        status = 'interrupted' if isinstance(exc, KeyboardInterrupt) else 'failed'
        files = write_results(c, observers, history, checkpoints, status=status,
                              extra={'error': user_message(exc) if isinstance(exc, CflowError) else repr(exc)})
        kept = f'checkpoints {", ".join(checkpoints)}' if checkpoints else 'no checkpoint'
        print(f'Run {status} after {len(history)} of {c.meta_epochs} tested epochs: kept {files["json"]} '
              f'(status "{status}") and {kept}; no results .txt line (it is written for complete runs only)')
        raise
    files = write_results(c, observers, history, checkpoints)
    print_summary(c, observers, history)
    if c.viz and labelled:
        from utils.viz import save_visualizations
        if c.calibration is not None:  # the pictures predict draws: calibrated maps, stored thresholds
            viz_maps = calibrated_maps(scores.log_probs, c.crp_size, c.calibration)
            viz_scores = image_scores(viz_maps)
        else:
            viz_maps, viz_scores = maps, image_score
        files['viz'] = save_visualizations(c, test_set, viz_maps, viz_scores, scores.labels, scores.masks,
                                          epoch=history[-1]['epoch'], calibration=c.calibration)
        print(f'Visualizations in {files["viz"]}')
    print(f'Results in {", ".join(files[k] for k in ("text", "json") if k in files)}')
    return {'observers': observers, 'history': history, 'files': files, 'checkpoints': checkpoints,
            'maps': maps, 'scores': image_score, 'labels': scores.labels if scores else None}


def calibrate_final(c, encoder, decoders, train_set, calibration_paths, final_path: str, scores, history) -> None:
    """Calibrate the trained model and rewrite its final checkpoint with the calibration; if that
    fails, the uncalibrated checkpoint stays, and the command that calibrates it is printed."""
    from calibrate import calibrate_after_training, calibrate_command
    try:
        c.calibration = calibrate_after_training(c, encoder, decoders, train_set, calibration_paths)
    except CflowError as exc:
        history[-1]['calibration_error'] = user_message(exc)
        print(f'warning: calibration failed: {user_message(exc)}. The uncalibrated model is kept in {final_path}; '
              f'calibrate it with: {calibrate_command(c, final_path)}', file=sys.stderr)
        return
    save_checkpoint(final_path, encoder, decoders, extra={CALIBRATION_KEY: c.calibration})
    if scores is not None:  # a labelled test set: the calibrated maps' metrics and decisions
        history[-1]['calibrated'] = evaluate_calibrated(c, scores, c.calibration)
        print_calibrated(history[-1]['calibrated'])


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
