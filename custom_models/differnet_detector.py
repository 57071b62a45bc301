"""DifferNet in ``load_model``, predict and the service: a calibrated DifferNet file as a ``Detector``.

Each image is scored over its fixed views (i * 360 / V: deterministic, the authors' localization views), and its
map is the authors' gradient map (custom_models/differnet.py) divided by its own maximum: DifferNet's map has a
shape but no calibrated scale. The stored image threshold t_I decides (a sensitivity S divides it); the mask of
an image decided defective is where its map reaches ``MASK_SHARE`` of its peak.

A calibrated DifferNet file is the authors' ``save_weights`` state dict with one more key, ``calibration``
(``utils.calibration.score_calibration``); their strict loader reads the uncalibrated file only.
"""
import os
from typing import Optional, Tuple

import numpy as np
import torch

from custom_models.detector import Detector, Prediction, Thresholds, full_size_mask
from custom_models.differnet import DifferNet, gradient_maps, image_scores, load_differnet, read_differnet_file
from utils.errors import CflowError
from utils.images import IMAGENET_MEAN, IMAGENET_STD
from utils.threshold_options import check_threshold_options
from utils.views import FixedViews, fixed_angles

MASK_SHARE = 0.5


def is_differnet_file(path: str) -> bool:
    """A torch file holding DifferNet's flow (``nf.module_list.*``), read without its tensors."""
    if not path.endswith(('.pt', '.pth')):
        return False
    try:
        state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(state, dict) and any(isinstance(k, str) and k.startswith('nf.module_list.') for k in state)


def is_differnet_export(path: str) -> bool:
    """An .onnx exported from a calibrated DifferNet (its metadata says so)."""
    if not path.endswith('.onnx') or not os.path.isfile(path):
        return False
    from utils.export_onnx import metadata_props
    try:
        meta = metadata_props(path) or {}
    except (OSError, ValueError):
        return False
    return '"model": "differnet"' in meta.get('cflow_calibration', '')


class DifferNetRunner:
    """B x V x 3 x S x S views -> (B x S x S maps, each divided by its max (zeros without ``maps``), B scores)."""

    def __init__(self, model: DifferNet, device: str, views: int, maps: bool = True):
        self.model, self.device, self.angles, self.maps = model.to(device).eval(), device, fixed_angles(views), maps

    def __call__(self, images: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        batch, views = images.shape[:2]
        flat = images.reshape(batch * views, *images.shape[2:]).to(self.device)
        with torch.inference_mode():
            z, _ = self.model(flat)
        scores = image_scores(z, views).float().cpu().numpy()
        maps = np.zeros((batch, *images.shape[-2:]), dtype=np.float32)
        if self.maps:
            for i in range(batch):
                grad = gradient_maps(self.model, images[i].to(self.device), self.angles).numpy()
                maps[i] = grad / max(float(grad.max()), 1e-30)
        return maps, scores


class DifferNetDetector(Detector):
    warm_batches = (1,)  # the service warms one image: a gradient map costs seconds

    def mask_rule(self) -> str:
        return f'map / its peak >= {MASK_SHARE}, the map being the gradient map (DifferNet)'
    def result(self, model_map: np.ndarray, score: float, size: Tuple[int, int],
               thresholds: Optional[Thresholds] = None) -> Prediction:
        t = thresholds or self.thresholds
        defective = bool(score > t.image)
        mask = model_map >= MASK_SHARE if defective else np.zeros(model_map.shape, bool)
        return Prediction(float(score), defective, full_size_mask(model_map, mask, size),
                          {**t.as_dict(), 'mask_threshold': MASK_SHARE, 'map_scale': 'relative'},
                          model_map, tuple(size))


def detector_of(run, calibration: dict, runtime: str, path: str, image_threshold: Optional[float],
                sensitivity: Optional[float]) -> DifferNetDetector:
    """The detector of a calibrated DifferNet run by ``run`` (views -> maps, scores), at the stored image
    threshold, or the one set, moved by ``sensitivity``."""
    check_threshold_options(image_threshold, None, sensitivity)
    settings = calibration['settings']
    t_image = calibration['image_threshold'] if image_threshold is None else float(image_threshold)
    thresholds = Thresholds(t_image, 0.0, 0.0, 'stored' if image_threshold is None else
                            f'set: --image-threshold {image_threshold:g}')
    if sensitivity is not None:
        thresholds = thresholds.with_sensitivity(sensitivity)
    detector = DifferNetDetector(run, settings, calibration, runtime, path, thresholds)
    detector.input_transform = FixedViews(settings['input_size'], settings['test_transforms'],
                                          settings.get('norm_mean', IMAGENET_MEAN), settings.get('norm_std', IMAGENET_STD))
    return detector


def differnet_detector(path: str, device: str = 'cpu', image_threshold: Optional[float] = None,
                       sensitivity: Optional[float] = None, runtime: Optional[str] = None) -> DifferNetDetector:
    """A calibrated DifferNet file on PyTorch (its gradient maps included)."""
    if runtime not in (None, 'torch'):
        raise CflowError(f'{path} is a DifferNet model file: it runs on PyTorch (export it for onnxruntime: '
                         f'--action-type export --checkpoint {path} --output model.onnx; scores only)')
    state, calibration = read_differnet_file(path)
    if calibration is None:
        raise CflowError(f'{path} has no calibration: calibrate it first with --action-type calibrate --model '
                         f'differnet --checkpoint {path} --calibration-path DIR')
    runner = DifferNetRunner(load_differnet(path, state=state), device, calibration['settings']['test_transforms'])
    return detector_of(runner, calibration, 'torch', path, image_threshold, sensitivity)


def differnet_onnx_detector(path: str, threads: int = 0, image_threshold: Optional[float] = None,
                            sensitivity: Optional[float] = None, runtime: Optional[str] = None) -> DifferNetDetector:
    """An exported DifferNet (scores and decisions; no gradient map, so no mask) on onnxruntime."""
    from utils.export_onnx import OnnxModel
    if runtime not in (None, 'onnxruntime'):
        raise CflowError(f'{path} is an exported DifferNet: it runs on onnxruntime (--runtime onnxruntime)')
    model = OnnxModel(path, threads=threads)
    return detector_of(model, model.calibration, 'onnxruntime', path, image_threshold, sensitivity)
