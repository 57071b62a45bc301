"""Anomaly maps and image scores from per-layer log-likelihoods: the one map assembly.

    S = sum_l upsample_bilinear(exp(min(log p_l - shift_l, 80)), align_corners=True)
    A = offset - S,   image score = max over the image of A

Upsampling: the published one stretches each layer's h x w cells over the H x W pixels
(``align_corners=True``). Given each layer's cell grid (cell i centred on pixel o + s i,
``custom_models/receptive_field.py``), pixel j is instead sampled at its own cell coordinate
u = (j - o) / s, bilinearly, clamped to the first and last cell (a calibration records the
grids; maps of files calibrated before, and the published test metrics, keep the stretch).

Published (test-set normalisation): shift_l = max of log p_l over the WHOLE test set and
offset = max of S over it, in float64 as the published code computes, so a map depends on
which images were tested together. Calibrated (``utils/calibration.py``): shift_l and offset
are constants measured once on defect-free images, so every image's map stands alone; the
deployable model (``custom_models/anomaly_model.py``) runs the same function in float32.
"""
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import CflowError
from utils.tiling import stitch

# exp(80) ~ 5.5e34: above it float32 overflows to inf, and the upsampling's zero weights would turn
# inf into NaN. Only fibers far likelier than any calibration fiber reach it (never with shift = max).
EXP_LIMIT = 80.0


def cell_interpolation(cells: int, pixels: int, stride: float, offset: float, dtype=torch.float64) -> torch.Tensor:
    """pixels x cells matrix M of bilinear weights: (M p)[j] = p at u_j = clamp((j - offset) / stride, 0, cells - 1)."""
    u = ((torch.arange(pixels, dtype=torch.float64) - offset) / stride).clamp(0, cells - 1)
    low = u.floor().long()
    high = (low + 1).clamp(max=cells - 1)
    weight = u - low
    matrix = torch.zeros(pixels, cells, dtype=torch.float64)
    rows = torch.arange(pixels)
    matrix.index_put_((rows, low), 1 - weight, accumulate=True)
    matrix.index_put_((rows, high), weight, accumulate=True)
    return matrix.to(dtype)


Matrices = Tuple[torch.Tensor, torch.Tensor]  # (H x h rows, w x W cols^T) of one layer


def grid_matrices(cells: Sequence[Tuple[int, int]], size: Tuple[int, int], grids: Sequence,
                  dtype=torch.float64) -> List[Matrices]:
    """Per layer of h x w ``cells``, the matrices that centre it on its grid [stride, offset] at ``size``."""
    return [(cell_interpolation(h, size[0], stride, offset, dtype),
             cell_interpolation(w, size[1], stride, offset, dtype).t().contiguous())
            for (h, w), (stride, offset) in zip(cells, grids)]


def upsample(prob: torch.Tensor, size: Tuple[int, int], matrices: Optional[Matrices] = None) -> torch.Tensor:
    """B x h x w -> B x H x W: the published stretch (``matrices`` None) or centred on the cell grid."""
    if matrices is None:
        return F.interpolate(prob.unsqueeze(1), size=size, mode='bilinear', align_corners=True)[:, 0]
    rows, cols_t = matrices
    return rows @ prob @ cols_t  # separable bilinear: M_rows P M_cols^T


def summed_probabilities(log_probs: Sequence[torch.Tensor], size: Tuple[int, int], shifts: Sequence,
                         matrices: Optional[List[Matrices]] = None) -> torch.Tensor:
    """S of one batch, B x H x W in the log-likelihoods' dtype: the map assembly every path uses.
    ``matrices``: per layer the ``grid_matrices`` that centre its cells on their grid (module docstring),
    made once beforehand; None: the published stretch."""
    total = None
    for l, (log_p, shift) in enumerate(zip(log_probs, shifts)):
        prob = torch.exp(torch.clamp(log_p - shift, max=EXP_LIMIT))
        prob = upsample(prob, size, None if matrices is None else matrices[l])
        total = prob if total is None else total + prob
    return total


def in_float64(log_probs: List[torch.Tensor], size: Tuple[int, int],
               grids: Optional[Sequence]) -> Tuple[List[torch.Tensor], Optional[List[Matrices]]]:
    """The log-likelihoods in float64 on the CPU, and per layer the ``grid_matrices`` at ``size`` (None: published)."""
    log_probs = [lp.detach().to('cpu', torch.float64) for lp in log_probs]
    return log_probs, None if grids is None else grid_matrices([lp.shape[-2:] for lp in log_probs], size, grids)


def summed_in_float64(log_probs: List[torch.Tensor], size: Tuple[int, int], shifts: Optional[Sequence] = None,
                      chunk: int = 64, grids: Optional[Sequence] = None):
    """(start, S of images start .. start + chunk) in float64 on the CPU, a chunk at a time (one layer's
    full-size maps never all exist); shift_l = max(log p_l) over all images by default; ``grids``: per layer
    [stride, offset] to centre the cells on (the matrices made once), or None (published)."""
    log_probs, matrices = in_float64(log_probs, size, grids)
    shifts = [lp.max() for lp in log_probs] if shifts is None else shifts
    for start in range(0, log_probs[0].shape[0], chunk):
        yield start, summed_probabilities([lp[start:start + chunk] for lp in log_probs], size, shifts, matrices)


def anomaly_maps(log_probs: List[torch.Tensor], input_size: Tuple[int, int], chunk: int = 64) -> np.ndarray:
    """N x H x W float64 anomaly maps, normalised over the whole set (the published rule)."""
    total = torch.empty((log_probs[0].shape[0], *input_size), dtype=torch.float64)
    for start, part in summed_in_float64(log_probs, input_size, chunk=chunk):
        total[start:start + part.shape[0]] = part
    return (total.max() - total).numpy()


def calibrated_maps(log_probs: List[torch.Tensor], input_size: Tuple[int, int], calibration: dict) -> np.ndarray:
    """N x H x W float64 anomaly maps with the calibration's constants: A = S_ref - S."""
    maps = np.empty((log_probs[0].shape[0], *input_size), dtype=np.float64)
    for start, part in summed_in_float64(log_probs, input_size, calibration['log_p_max'],
                                         grids=calibration.get('cell_grids')):
        maps[start:start + part.shape[0]] = (calibration['sum_max'] - part).numpy()
    return maps


def stitched_sums(log_probs: List[torch.Tensor], layouts: Sequence, input_size: int, shifts: Sequence,
                  grids: Optional[Sequence] = None) -> Iterator[np.ndarray]:
    """Per image of a tiled model, its S canvas in float64: S of each tile (inp x inp, as above) stitched with
    overlaps averaged (``utils/tiling.py``). ``log_probs``: per layer one row per tile, images in order."""
    log_probs, matrices = in_float64(log_probs, (input_size, input_size), grids)
    first = 0
    for layout in layouts:
        tiles = summed_probabilities([lp[first:first + len(layout)] for lp in log_probs], (input_size, input_size),
                                     shifts, matrices)
        yield stitch(tiles.numpy(), layout, np.float64)
        first += len(layout)


def stitched_maps(log_probs: List[torch.Tensor], layouts: Sequence, input_size: int,
                  calibration: Optional[dict] = None) -> np.ndarray:
    """N x h x w float64 anomaly maps of a tiled model's test set, A = offset - S on the stitched canvases:
    the published normalisation (shift_l and offset the maxima over all tiles of the set) or the calibration's
    constants. One canvas size is needed to stack them (one line otherwise)."""
    if len({layout.canvas for layout in layouts}) > 1:
        raise CflowError(f'the tiled test images give maps of {len({layout.canvas for layout in layouts})} sizes; '
                         f'the metrics need one: pass --image-size S (every image\'s longer side scaled to S)')
    if calibration is None:
        sums = np.stack(list(stitched_sums(log_probs, layouts, input_size, [lp.double().max() for lp in log_probs])))
        return sums.max() - sums
    sums = stitched_sums(log_probs, layouts, input_size, calibration['log_p_max'], calibration.get('cell_grids'))
    return calibration['sum_max'] - np.stack(list(sums))


def image_scores(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(maps.shape[0], -1).max(axis=1)
