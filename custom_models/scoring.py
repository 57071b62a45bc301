"""Scoring images with a model: the one piece the test pass, calibration, predict and export use.

Per image batch: ``encoder`` taps, then per pool layer l the log-likelihood of every position
(all fibers of a batch at once, no 256-fiber loop), divided by the fiber's channel count C:

    log p_l = (C log(1/sqrt(2 pi)) - |z|^2 / 2 + log|det J|) / C,   z = flow_l(fiber | position)

``score_loader`` keeps them for a whole set of batches (the published maps are normalised over it);
``calibration_of`` turns those of defect-free images into the calibration record
(``utils/calibration.py``); ``deployable`` wraps a calibrated model as one module that returns
each image's map and score (``AnomalyModel``, which predict runs and export traces). The batches
come from the caller (a DataLoader, a list): this module builds no data pipeline.
"""
import functools
import time
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

import numpy as np
import torch

from custom_models.anomaly_model import AnomalyModel
from custom_models.fast_flow import FastFlowScorer, coupling_log_likelihood
from custom_models.fibers import score_feature_map
from custom_models.flows import CONDITION_VEC, nll_loss
from utils.calibration import calibrate_from_log_probs
from utils.errors import CflowError
from utils.progress import progress


@dataclass(frozen=True)
class ScoreOptions:
    """How a test pass runs (``--scorer``, ``--compile``, ``--fiber-chunk``, ``--bf16``, the device): every
    choice but ``bf16`` gives the same log-likelihoods to float32 round-off."""
    device: str = 'cpu'
    scorer: str = 'fused'           # 'fused' (precomputed condition terms) or 'freia' (the FrEIA modules)
    compile: bool = False
    fiber_chunk: int = 65536        # fibers per decoder call: memory only
    bf16: bool = False              # bfloat16 autocast of the encoder (changes results slightly)
    condition_vec: int = CONDITION_VEC


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
    masks: np.ndarray              # N x inp x inp, bool (tiled: N x canvas height x width)
    loss: float
    images_per_second: float
    layouts: Optional[list] = None  # a tiled pass: per image its ``utils.tiling.TileLayout`` (log_probs per tile)


def make_scorers(options: ScoreOptions, decoders) -> List[Callable[[torch.Tensor], torch.Tensor]]:
    """Per decoder, a function from a B x C x H x W map to B x H x W log-likelihoods.

    ``fused`` (default) precomputes the positional-condition terms and folds the global
    affine into the permutation (``custom_models/fast_flow.py``); ``freia`` calls the
    FrEIA modules. Both score all fibers of a batch at once and agree to round-off.
    """
    for decoder in decoders:
        decoder.eval()
    if options.scorer == 'freia':
        return [functools.partial(score_feature_map, torch.compile(d) if options.compile else d,
                                  condition_vec=options.condition_vec, chunk=options.fiber_chunk) for d in decoders]
    scorers = [FastFlowScorer(d, options.condition_vec).to(options.device) for d in decoders]
    if options.compile:  # only the arithmetic: the cached condition terms stay outside the graph
        compiled = torch.compile(coupling_log_likelihood)
        for scorer in scorers:
            scorer.score_fibers = compiled
    return [functools.partial(scorer, chunk=options.fiber_chunk) for scorer in scorers]


def score_batch(options: ScoreOptions, encoder, scorers, images: torch.Tensor) -> List[torch.Tensor]:
    """Per pool layer, B x H_l x W_l log-likelihoods of a batch of normalised images."""
    autocast = torch.autocast(device_type=options.device.split(':')[0], dtype=torch.bfloat16, enabled=options.bf16)
    with autocast:
        taps = encoder(images.to(options.device, non_blocking=True))
    return [scorer(feature_map.float()) for feature_map, scorer in zip(taps, scorers)]


def score_loader(options: ScoreOptions, batches: Iterable, encoder, decoders) -> TestScores:
    """Per-layer log-likelihood of every position of every image of ``batches`` ((images, labels, masks)
    each: a DataLoader over a ``LabelledImages``, or a list)."""
    per_layer = [[] for _ in decoders]
    labels, masks = [], []
    start = time.time()
    with torch.inference_mode():
        scorers = make_scorers(options, decoders)
        for image, label, mask in progress(batches, total=len(batches) if hasattr(batches, '__len__') else None,
                                           desc='test'):
            labels.append(np.asarray(label))
            masks.append(mask[:, 0].numpy() != 0)
            for l, log_prob in enumerate(score_batch(options, encoder, scorers, image)):
                per_layer[l].append(log_prob)
    return finished_scores(per_layer, np.concatenate(labels), np.concatenate(masks), start)


def finished_scores(per_layer: List[List[torch.Tensor]], labels: np.ndarray, masks, start: float,
                    layouts: Optional[list] = None) -> TestScores:
    """The pass's ``TestScores``: per layer its batches concatenated, checked finite, the test loss, the rate."""
    log_probs = [torch.cat(chunks).cpu() for chunks in per_layer]
    seconds = time.time() - start
    check_finite_scores(log_probs)
    loss = torch.cat([nll_loss(lp.flatten().double()) for lp in log_probs]).mean().item()
    return TestScores(log_probs, labels, masks, loss, len(labels) / max(seconds, 1e-9), layouts)


def score_tiled(options: ScoreOptions, images: Iterable, encoder, decoders, tile_batch: int) -> TestScores:
    """``score_loader`` for a tiled model: ``images`` gives (tiles, label, mask, layout) per image
    (``custom_datasets.tiles.TiledTestImages``); its tiles go through the model ``tile_batch`` at a time, so a
    few tiles' activations exist at once whatever the image's size. Log-likelihoods per tile, in order."""
    per_layer = [[] for _ in decoders]
    labels, masks, layouts = [], [], []
    start = time.time()
    with torch.inference_mode():
        scorers = make_scorers(options, decoders)
        for tiles, label, mask, layout in progress(images, total=len(images) if hasattr(images, '__len__') else None,
                                                   desc='test'):
            labels.append(int(label))
            masks.append(np.asarray(mask, dtype=bool))
            layouts.append(layout)
            for first in range(0, tiles.shape[0], tile_batch):
                for l, log_prob in enumerate(score_batch(options, encoder, scorers, tiles[first:first + tile_batch])):
                    per_layer[l].append(log_prob)
    masks = np.stack(masks) if len({m.shape for m in masks}) == 1 else masks  # a list: images of several sizes
    return finished_scores(per_layer, np.array(labels), masks, start, layouts)


def calibration_of(log_probs: List[torch.Tensor], encoder, settings: dict, source: str,
                   layouts: Optional[list] = None) -> dict:
    """The calibration record (``utils/calibration.py``) of a model from the per-layer log-likelihoods of
    defect-free images, its maps centred on the encoder's receptive fields (``custom_models/receptive_field.py``);
    ``layouts``: a tiled model's, its constants and thresholds measured on the stitched maps."""
    size = int(settings['input_size'])
    grids = [grid.as_list() for grid in encoder.cell_grids(size)]
    return calibrate_from_log_probs(log_probs, (size, size), source, settings, grids=grids, layouts=layouts)


def deployable(encoder, decoders, settings: dict, calibration: dict) -> AnomalyModel:
    """The calibrated model as one module: images in [0, 1] -> (maps, scores)."""
    return AnomalyModel(encoder, decoders, settings['input_size'], settings['norm_mean'], settings['norm_std'],
                        calibration)
