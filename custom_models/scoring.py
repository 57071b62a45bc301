"""Scoring images with a model: the one piece the test pass, calibration, predict and export use.

Per image batch: ``encoder`` taps, then per pool layer l the log-likelihood of every position
(all fibers of a batch at once, no 256-fiber loop), divided by the fiber's channel count C:

    log p_l = (C log(1/sqrt(2 pi)) - |z|^2 / 2 + log|det J|) / C,   z = flow_l(fiber | position)

``score_loader`` keeps them for a whole set (the published maps are normalised over it);
``calibrate_images`` turns those of defect-free images into the calibration record
(``utils/calibration.py``); ``deployable`` wraps a calibrated model as one module that returns
each image's map and score (``AnomalyModel``, which predict runs and export traces).
"""
import functools
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from custom_datasets.common import LabelledImages, calibration_images
from custom_datasets.loaders import make_loader
from custom_models.anomaly_model import AnomalyModel
from custom_models.fast_flow import FastFlowScorer, coupling_log_likelihood
from custom_models.fibers import score_feature_map
from custom_models.flows import nll_loss
from utils.calibration import calibrate_from_log_probs
from utils.errors import CflowError
from custom_models.model_file import model_settings
from utils.progress import count, progress


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


def score_loader(c, loader: DataLoader, encoder, decoders) -> TestScores:
    """Per-layer log-likelihood of every position of every image the loader gives."""
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


def calibrate_images(c, encoder, decoders, paths: Sequence[str], source: str) -> dict:
    """Score ``paths`` (defect-free images, read the way test images are) and return the calibration
    record of this model: its constants and thresholds (``utils/calibration.py``)."""
    paths = list(paths)
    dataset = LabelledImages(paths, [0] * len(paths), [None] * len(paths), c.input_size, train=False,
                             mean=c.norm_mean, std=c.norm_std)
    scores = score_loader(c, make_loader(c, dataset, train=False), encoder, decoders)
    grids = [grid.as_list() for grid in encoder.cell_grids(c.input_size)]  # maps centred on the receptive fields
    calibration = calibrate_from_log_probs(scores.log_probs, c.crp_size, source, model_settings(c), grids=grids)
    print(f'Calibrated on {count(len(paths), "image")} ({source}): image threshold '
          f'{calibration["image_threshold"]:.4g}, pixel threshold {calibration["pixel_threshold"]:.4g}')
    return calibration


def calibrate_on_folder(c, encoder, decoders, paths: Optional[Sequence[str]] = None) -> dict:
    """Calibrate on the good images under ``--calibration-path`` (``paths``: that folder's images when
    they were listed and checked already, before any long work)."""
    return calibrate_images(c, encoder, decoders, paths or calibration_images(c.calibration_path),
                            f'images under {c.calibration_path}')


def deployable(encoder, decoders, settings: dict, calibration: dict) -> AnomalyModel:
    """The calibrated model as one module: images in [0, 1] -> (maps, scores)."""
    return AnomalyModel(encoder, decoders, settings['input_size'], settings['norm_mean'], settings['norm_std'],
                        calibration)
