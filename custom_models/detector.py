"""A calibrated model in your own program: ``load_model(path).predict(inputs)``.

    from custom_models import load_model
    model = load_model('model_calibrated.pt')           # or .safetensors, or .onnx (onnxruntime / openvino)
    result = model.predict('part.png')                   # a path, a PIL image, an H x W x 3 uint8 array
    result.score, result.defective, result.mask          # or a 3 x H x W float tensor in [0, 1]
    results = model.predict([path, image, array], batch_size=8)

Every input is resized the published way (``utils.images.to_model_input``), scored by
the calibrated model (``custom_models.scoring.deployable``, or its ONNX export), and given back
at its own size: the anomaly map (bilinear from the model's inp x inp map), the decision
(score > t_I) and the mask (A > t_M at the model's resolution, nearest-resized; empty when
decided good). ``predict.py`` runs this same object, so the command line and Python agree. A tiled
model (``utils/tiling.py``, stated by its file) cuts each input into tiles, scores them a few at a time
and stitches their maps: its "model's map" is the stitched canvas.

Thresholds (``Thresholds``): the stored ones, or moved by one sensitivity S, or set absolutely:

    t(S) = t_stored / S     for t_I and t_P;   S = 1: stored, S = 2: twice as sensitive (half the
                            anomaly flags an image; larger masks), S = 0.5: half as sensitive

Anomaly values are 0 at the most normal calibration pixel and grow with the anomaly, so a
ratio of thresholds means the same at any scale. The stored calibration never changes here.
"""
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from utils.images import read_rgb, resize_mask, to_model_input, to_rgb
from custom_models.scoring import deployable
from utils.calibration import MASK_PEAK_SHARE, decide_then_mask, mask_threshold
from utils.errors import CflowError
from utils.threshold_options import check_threshold_options
from utils.export_onnx import OnnxModel, OpenVinoModel
from utils.pipeline import ordered_map, read_ahead
from utils.tiling import TiledBatch, TileInputs, collate_inputs, tiled_map_scores, tiling_of
from utils.model_kinds import precision_of
from custom_models.model_file import read_model

RUNTIMES = ('torch', 'onnxruntime', 'openvino')


@dataclass(frozen=True)
class Thresholds:
    """The thresholds one prediction uses: t_I decides, t_M = max(t_P, t_I + share (score - t_I)) masks."""
    image: float          # t_I
    pixel: float          # t_P
    mask_peak_share: float
    source: str           # 'stored', 'sensitivity 2', 'set: --image-threshold ...'

    def mask(self, score: float) -> float:
        return mask_threshold(score, self.as_dict())

    def with_sensitivity(self, sensitivity: float) -> 'Thresholds':
        """These thresholds moved by a sensitivity S: t_I / S and t_P / S (module docstring)."""
        source = f'sensitivity {sensitivity:g}' if self.source == 'stored' else f'{self.source}; sensitivity {sensitivity:g}'
        return Thresholds(self.image / sensitivity, self.pixel / sensitivity, self.mask_peak_share, source)

    def as_dict(self) -> dict:
        return {'image_threshold': self.image, 'pixel_threshold': self.pixel,
                'mask_peak_share': self.mask_peak_share, 'thresholds': self.source}


def choose_thresholds(calibration: dict, image_threshold: Optional[float] = None,
                      pixel_threshold: Optional[float] = None, sensitivity: Optional[float] = None) -> Thresholds:
    """The stored thresholds, moved by ``sensitivity`` S (t / S), or set absolutely; never both."""
    check_threshold_options(image_threshold, pixel_threshold, sensitivity)
    share = calibration.get('mask_peak_share', MASK_PEAK_SHARE)
    t_image, t_pixel = calibration['image_threshold'], calibration['pixel_threshold']
    if sensitivity is not None:
        return Thresholds(t_image, t_pixel, share, 'stored').with_sensitivity(sensitivity)
    if image_threshold is None and pixel_threshold is None:
        return Thresholds(t_image, t_pixel, share, 'stored')
    chosen = [f'{flag} {value:g}' for flag, value in (('--image-threshold', image_threshold),
                                                      ('--pixel-threshold', pixel_threshold)) if value is not None]
    return Thresholds(t_image if image_threshold is None else float(image_threshold),
                      t_pixel if pixel_threshold is None else float(pixel_threshold), share,
                      'set: ' + ', '.join(chosen))


@dataclass
class Prediction:
    """One input's result; ``anomaly_map`` and ``mask`` are at the input's own size (height x width)."""
    score: float
    defective: bool
    mask: np.ndarray          # bool, H x W (empty when decided good)
    thresholds: dict          # t_I, t_P, the mask share, this image's t_M, and where they come from
    model_map: np.ndarray     # float32, inp x inp (a tiled model: its stitched canvas): the map as the model
                              # made it (overlays draw it)
    size: Tuple[int, int]     # (width, height) of the input

    @property
    def anomaly_map(self) -> np.ndarray:
        """float32 H x W: the model's map resized bilinearly to the input's size (made when asked for)."""
        return np.asarray(Image.fromarray(self.model_map.astype(np.float32)).resize(self.size, Image.BILINEAR))


def as_image(item) -> Image.Image:
    """A path, a PIL image, an H x W (x 3) uint8 array or a (3 x) H x W float tensor in [0, 1], as RGB."""
    if isinstance(item, (str, os.PathLike)):
        return read_rgb(os.fspath(item))
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        if item.dim() == 3 and item.shape[0] in (1, 3):
            item = item.permute(1, 2, 0)
        if not item.is_floating_point():
            raise CflowError(f'a tensor input must be float in [0, 1] (3 x H x W), got {item.dtype}: '
                             f'divide by 255, or pass the uint8 array as a numpy array')
        if item.numel() and (item.min() < 0 or item.max() > 1):
            raise CflowError(f'a tensor input must be in [0, 1], got values in [{float(item.min()):.3g}, '
                             f'{float(item.max()):.3g}]: pass the image before normalisation')
        item = (item.numpy() * 255.0).round().astype(np.uint8)  # the published path reads 8-bit images
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise CflowError(f'an array input must be uint8 (H x W x 3, 0-255), got {item.dtype}: pass a float '
                             f'tensor in [0, 1] instead')
        if item.ndim == 3 and item.shape[2] == 1:
            item = item[:, :, 0]
        if not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 3)):
            raise CflowError(f'an array input must be H x W x 3 (or H x W grey), got shape {item.shape}')
        return to_rgb(Image.fromarray(item))
    raise CflowError(f'cannot score a {type(item).__name__}: pass a path, a PIL image, an H x W x 3 uint8 array '
                     f'or a 3 x H x W float tensor in [0, 1]')


class Detector:
    """A calibrated model with its thresholds: ``score_images`` on model-size tensors, ``result`` per
    image, ``predict`` on any inputs. Made by ``load_model``."""

    def __init__(self, run: Callable[[torch.Tensor], Tuple[np.ndarray, np.ndarray]], settings: dict,
                 calibration: dict, runtime: str, source: str, thresholds: Optional[Thresholds] = None):
        self.run, self.settings, self.calibration, self.runtime = run, settings, calibration, runtime
        self.source = source  # the model file
        self.input_size = int(settings['input_size'])
        self.tiling = tiling_of(settings)  # utils/tiling.py: tiles at the image's own resolution, stitched
        # image -> model input, picklable (predict's loader workers run it): the published resize, or the tiles
        self.input_transform = (TileInputs(self.tiling, self.input_size) if self.tiling else
                                partial(to_model_input, input_size=self.input_size))
        self.tile_batch = 8  # tiles scored at once (``prepare`` sets it to the caller's batch size)
        self.thresholds = thresholds or choose_thresholds(calibration)
        self.streams = getattr(run, 'streams', 1)  # images the runtime scores at once (threads shared)
        self.precision = precision_of(calibration)  # 'fp32', or 'int8 (encoder)' for a quantized export

    def mask_rule(self) -> str:
        return 'A > max(t_P, t_I + %g (score - t_I))' % self.thresholds.mask_peak_share

    def prepare(self, batch_size: int) -> None:
        """Compile for ``batch_size`` now (OpenVINO), not at the first image: predict does it while its
        loader workers start and read the first images."""
        self.tile_batch = max(1, int(batch_size))
        if hasattr(self.run, 'prepare'):
            self.run.prepare(batch_size)

    def model_input(self, image: Image.Image):
        """3 x inp x inp in [0, 1], or a tiled model's ``TiledInput``; ``collate`` batches them."""
        return self.input_transform(image)

    def warm_image(self) -> Image.Image:
        """An image this model scores (a service warms on it)."""
        if self.tiling:
            return self.input_transform.warm_image()
        return Image.new('RGB', (self.input_size, self.input_size))

    @staticmethod
    def collate(inputs):
        return collate_inputs(inputs)

    def score_images(self, images) -> Tuple[np.ndarray, np.ndarray]:
        """(B x inp x inp maps, B scores) as float32 numpy, of B x 3 x inp x inp images in [0, 1]; of a tiled
        model's ``TiledBatch``, (B stitched canvases, B scores), ``tile_batch`` tiles scored at a time."""
        if isinstance(images, TiledBatch):
            return tiled_map_scores(self.run, images, self.tile_batch)
        return self.run(images)

    def score_batches(self, batches: Iterable[Tuple[torch.Tensor, object]]) -> Iterator[tuple]:
        """(payload, maps, scores) for every (images, payload) of ``batches``, in order, with
        ``streams`` batches scored at once (``utils.pipeline.ordered_map``); the maps are the same
        bytes as ``score_images`` one batch at a time."""
        for (images, payload), (maps, scores) in ordered_map(lambda batch: self.score_images(batch[0]), batches,
                                                              self.streams):
            yield payload, maps, scores

    def result(self, model_map: np.ndarray, score: float, size: Tuple[int, int],
               thresholds: Optional[Thresholds] = None) -> Prediction:
        """One image's prediction at its own ``size`` = (width, height), at the detector's thresholds or at
        ``thresholds`` (e.g. another sensitivity for this one image)."""
        t = thresholds or self.thresholds
        t_mask = t.mask(score)
        defective, mask = decide_then_mask(model_map, score, t.image, t_mask)
        return Prediction(float(score), defective, full_size_mask(model_map, mask, size),
                          {**t.as_dict(), 'mask_threshold': t_mask}, model_map, tuple(size))

    def predict(self, inputs, batch_size: int = 8) -> Union[Prediction, List[Prediction]]:
        """One input -> one Prediction; a list (or tuple) -> a list, scored ``batch_size`` at a time
        (results do not depend on it: every image is scored on its own)."""
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        if batch_size < 1:
            raise CflowError(f'batch_size must be at least 1, got {batch_size}')
        def batches():  # read on a thread, ahead of the scoring (utils.pipeline.read_ahead)
            for start in range(0, len(items), batch_size):
                images = [as_image(item) for item in items[start:start + batch_size]]
                yield self.collate([self.model_input(image) for image in images]), images
        results = []
        for images, maps, scores in self.score_batches(read_ahead(batches(), depth=self.streams + 1)):
            results += [self.result(maps[j], scores[j], image.size) for j, image in enumerate(images)]
        return results[0] if single else results


def full_size_mask(model_map: np.ndarray, model_mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """The defect mask at the image's own size: ``model_mask`` (``decide_then_mask`` at the model's
    resolution) resized with nearest neighbours (a bilinear resize of the map could empty the mask of an
    image decided defective). A non-empty mask stays non-empty: the map's peak pixel is kept."""
    if not model_mask.any():
        return np.zeros((size[1], size[0]), dtype=bool)
    mask = resize_mask(model_mask, size)
    if not mask.any():  # a peak thinner than one output pixel (an image smaller than the model's input)
        row, col = np.unravel_index(int(np.argmax(model_map)), model_map.shape)
        mask = mask.copy()
        mask[min(size[1] - 1, row * size[1] // model_map.shape[0]),
             min(size[0] - 1, col * size[0] // model_map.shape[1])] = True
    return mask


def uncalibrated(path: str) -> CflowError:
    return CflowError(f'{path} has no calibration: pass --calibration-path DIR (defect-free images not used for '
                      f'training), or calibrate it first with --action-type calibrate --checkpoint {path} '
                      f'--calibration-path DIR')


def torch_runner(module: torch.nn.Module, device: str) -> Callable:
    module = module.to(device).eval()

    def run(images: torch.Tensor):
        with torch.inference_mode():
            maps, scores = module(images.to(device, non_blocking=True))
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()
    return run


def detector_from_model(loaded, calibration: Optional[dict], device: str, source: str,
                        thresholds: Optional[Thresholds] = None) -> Detector:
    """A Detector of a model read into memory (``custom_models.model_file.LoadedModel``) on ``device``."""
    if calibration is None:
        raise uncalibrated(source)
    module = deployable(loaded.encoder, loaded.decoders, loaded.settings, calibration)
    return Detector(torch_runner(module, device), loaded.settings, calibration, 'torch', source, thresholds)


def load_model(path: str, device: str = 'cpu', runtime: Optional[str] = None, threads: int = 0,
               streams: int = 1, cache_dir: Optional[str] = None, image_threshold: Optional[float] = None,
               pixel_threshold: Optional[float] = None,
               sensitivity: Optional[float] = None) -> Detector:
    """Open a calibrated ``.pt``, a compact ``.safetensors``, an exported ``.onnx`` or an INT8 export's
    OpenVINO ``.xml``.

    ``runtime``: ``torch`` (default for .pt/.safetensors, on ``device``), ``onnxruntime`` (default
    for .onnx) or ``openvino`` (.onnx in fp32, or .xml: the only runtime of an IR). The file's own settings (input size,
    normalisation) are used; an uncalibrated model is refused with the command that calibrates it.
    ``threads``: CPU threads of onnxruntime/OpenVINO (0 = their default). ``streams`` (onnxruntime,
    OpenVINO): images scored at once by ``predict`` on a list, each on threads / streams threads:
    more images per second on a folder (2 on 2 cores: 1.2x), a slower single image; the same maps.
    ``cache_dir`` (OpenVINO): its compiled-model cache (``utils.export_onnx.OpenVinoModel``). ``image_threshold``,
    ``pixel_threshold``, ``sensitivity``: see ``Thresholds`` (the file is not changed).
    """
    path = os.fspath(path)
    is_onnx, is_ir = path.endswith('.onnx'), path.endswith('.xml')
    runtime = runtime or ('onnxruntime' if is_onnx else 'openvino' if is_ir else 'torch')
    if runtime not in RUNTIMES:
        raise CflowError(f'unknown runtime {runtime!r}: choose one of {", ".join(RUNTIMES)}')
    if is_ir and runtime != 'openvino':
        raise CflowError(f'{os.path.basename(path)} is an OpenVINO model (the INT8 export): run it with --runtime '
                         f'openvino (or leave --runtime out)')
    if is_onnx and runtime == 'torch':
        raise CflowError(f'runtime torch runs .pt and .safetensors files, not {os.path.basename(path)}: '
                         f'pick --runtime onnxruntime or openvino')
    if not (is_onnx or is_ir) and runtime != 'torch':
        raise CflowError(f'runtime {runtime} runs .onnx files, not {os.path.basename(path)}: export it first '
                         f'(--action-type export --checkpoint {path} --output model.onnx)')
    options = dict(image_threshold=image_threshold, pixel_threshold=pixel_threshold, sensitivity=sensitivity)
    if is_onnx or is_ir:
        model = (OnnxModel(path, threads=threads, streams=streams) if runtime == 'onnxruntime' else
                 OpenVinoModel(path, threads=threads, streams=streams, cache_dir=cache_dir))
        return Detector(model, model.settings, model.calibration, runtime, path,
                        choose_thresholds(model.calibration, **options))
    loaded = read_model(path, {})  # a calibrated file states every setting
    if loaded.calibration is None:
        raise uncalibrated(path)
    return detector_from_model(loaded, loaded.calibration, device, path, choose_thresholds(loaded.calibration, **options))
