"""The deployable model: image in [0, 1] -> calibrated anomaly map and image score, in one module.

    x      = (image - mean) / std                                   (the encoder's: custom_models/preprocessing.py)
    taps   = encoder(x)                                             (shallow to deep)
    log p_l = fused decoder l (custom_models/fast_flow.py), B x h_l x w_l
    S      = sum_l upsample_bilinear(exp(log p_l - m_l))                  (utils/anomaly_map.py: centred on
                                                                            the cells' grids, or the published stretch)
    A      = S_ref - S,   score = max over the image of A          (utils/calibration.py)

Every image stands alone (no statistic of the batch), the batch axis is free, and there
is no fiber loop, so the same module runs ``predict`` and exports to one ONNX graph. It
computes in float32 with the map assembly every path uses (``utils.anomaly_map``).
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from custom_models.fast_flow import FastFlowScorer
from custom_models.flows import CONDITION_VEC
from custom_models.encoders import tap_shapes
from utils.anomaly_map import grid_matrices, summed_probabilities


class AnomalyModel(nn.Module):
    def __init__(self, encoder: nn.Module, decoders: List[nn.Module], input_size: int,
                 mean: Sequence[float], std: Sequence[float], calibration: dict):
        super().__init__()
        self.encoder = encoder.eval()
        # a ModuleList: state_dict(), .to(), .cuda(), .half() reach the flows too
        self.scorers = nn.ModuleList(FastFlowScorer(d.eval(), CONDITION_VEC) for d in decoders)
        self.input_size = int(input_size)
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.log_p_max = [float(m) for m in calibration['log_p_max']]
        self.sum_max = float(calibration['sum_max'])
        self.calibration = calibration
        self.centred = calibration.get('cell_grids') is not None  # else the published stretch (files calibrated before)
        if self.centred:  # constants of the graph, not state: non-persistent buffers (moved by .to, not saved)
            size = (self.input_size, self.input_size)
            cells = [shape[1:] for shape in tap_shapes(encoder.arch, encoder.pool_layers, self.input_size)]
            for l, (rows, cols_t) in enumerate(grid_matrices(cells, size, calibration['cell_grids'], torch.float32)):
                self.register_buffer(f'rows_{l}', rows, persistent=False)
                self.register_buffer(f'cols_t_{l}', cols_t, persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """x = (image - mean) / std: what the encoder is fed (``custom_models.preprocessing``)."""
        return (images - self.mean) / self.std

    def log_probs(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Per pool layer, B x h_l x w_l log p / C of images in [0, 1]."""
        taps = self.encoder(self.normalise(images))
        return [scorer.score_map(tap) for tap, scorer in zip(taps, self.scorers)]

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B x H x W anomaly maps, B image scores) of B x 3 x H x W images in [0, 1] at the input size."""
        size = (self.input_size, self.input_size)
        matrices = [(getattr(self, f'rows_{l}'), getattr(self, f'cols_t_{l}'))
                    for l in range(len(self.scorers))] if self.centred else None
        maps = self.sum_max - summed_probabilities(self.log_probs(images), size, self.log_p_max, matrices=matrices)
        return maps, maps.amax(dim=(1, 2))
