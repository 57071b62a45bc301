"""What the actions share: the command line's settings translated into each package's options, and the
calibration pass (a folder of good images through the model) that norm-train, calibrate, export and
predict all run. The packages take these options and never the settings namespace itself."""
from typing import Optional, Sequence

import numpy as np

from custom_datasets import DataOptions
from custom_datasets.common import LabelledImages, calibration_images
from custom_datasets.loaders import LoaderOptions, make_loader
from config import checked_flags, derive, model_file_request
from custom_models.model_file import SETTING_KEYS, stated_settings
from custom_models.scoring import ScoreOptions, calibration_of, score_loader, score_tiled
from custom_models.training import TrainOptions
from utils.images import read_mask
from utils.errors import CflowError, user_message
from utils.progress import count, progress
from utils.results import write_results
from utils.segmentation_benchmark import BENCHMARK_PRO_LIMITS, SegmentationBenchmark
from utils.tiling import Tiling, tiling_of
from utils.submission_files import as_float16, finished, output_paths, read_pair, write_pair


def model_settings(c) -> dict:
    """The settings a model file records (``SETTING_KEYS``: architecture, input size, normalisation), and a
    tiled model's tiling (``utils/tiling.py``; an untiled model's settings are as before tiling existed)."""
    settings = {k: (list(getattr(c, k)) if isinstance(getattr(c, k), tuple) else getattr(c, k)) for k in SETTING_KEYS}
    return {**settings, **(tiling_settings(c) or {})}


def tiling_settings(c) -> Optional[dict]:
    """--tile, --tile-overlap, --image-size as a model file records them, or None when untiled."""
    if getattr(c, 'tile', None) is None:
        return None
    return Tiling(c.tile, c.tile_overlap, c.image_size).as_settings()


def score_options(c) -> ScoreOptions:
    return ScoreOptions(device=c.device, scorer=c.scorer, compile=c.compile, fiber_chunk=c.fiber_chunk,
                        bf16=c.bf16, condition_vec=c.condition_vec)


def train_options(c) -> TrainOptions:
    return TrainOptions(lr=c.lr, meta_epochs=c.meta_epochs, sub_epochs=c.sub_epochs, fiber_batch=c.fiber_batch,
                        adam=c.adam, device=c.device, condition_vec=c.condition_vec)


def loader_options(c) -> LoaderOptions:
    return LoaderOptions(batch_size=c.batch_size, workers=c.workers, seed=c.seed,
                         pin_memory=c.device.startswith('cuda'))


def data_options(c) -> DataOptions:
    return DataOptions(dataset=c.dataset, data_path=c.data_path, class_name=c.class_name, input_size=c.input_size,
                       mean=tuple(c.norm_mean), std=tuple(c.norm_std), need_train=c.action_type == 'norm-train',
                       seed=c.seed, calibration_path=c.calibration_path, action=c.action_type)


def calibration_on_images(encoder, decoders, settings: dict, paths: Sequence[str], source: str,
                          score: ScoreOptions, loader: LoaderOptions) -> dict:
    """The calibration record (``utils/calibration.py``) of a model (``settings``: its ``SETTING_KEYS``) from
    ``paths``, defect-free images read the way test images are: the pass every action and the bench run."""
    paths = list(paths)
    tiling = tiling_of(settings)
    if tiling is not None:  # the constants and thresholds of the stitched maps (utils/tiling.py)
        from custom_datasets.tiles import TiledTestImages, tiled_loader
        dataset = TiledTestImages(paths, [0] * len(paths), [None] * len(paths), tiling, settings['input_size'],
                                  settings['norm_mean'], settings['norm_std'])
        scores = score_tiled(score, tiled_loader(dataset, loader.workers), encoder, decoders, loader.batch_size)
        return calibration_of(scores.log_probs, encoder, settings, source, scores.layouts)
    dataset = LabelledImages(paths, [0] * len(paths), [None] * len(paths), settings['input_size'], train=False,
                             mean=settings['norm_mean'], std=settings['norm_std'])
    scores = score_loader(score, make_loader(dataset, False, loader), encoder, decoders)
    return calibration_of(scores.log_probs, encoder, settings, source)


def calibrate_images(c, encoder, decoders, paths: Sequence[str], source: str) -> dict:
    """Score ``paths`` (defect-free images, read the way test images are) and return the calibration
    record of this model: its constants and thresholds (``utils/calibration.py``)."""
    paths = list(paths)
    calibration = calibration_on_images(encoder, decoders, model_settings(c), paths, source, score_options(c),
                                        loader_options(c))
    print(f'Calibrated on {count(len(paths), "image")} ({source}): image threshold '
          f'{calibration["image_threshold"]:.4g}, pixel threshold {calibration["pixel_threshold"]:.4g}')
    return calibration


def calibrate_on_folder(c, encoder, decoders, paths: Optional[Sequence[str]] = None) -> dict:
    """Calibrate on the good images under ``--calibration-path`` (``paths``: that folder's images when
    they were listed and checked already, before any long work)."""
    return calibrate_images(c, encoder, decoders, paths or calibration_images(c.calibration_path),
                            f'images under {c.calibration_path}')


def model_file_statement(c) -> tuple:
    """(settings, calibration or None) that the model file of the checked flags ``c`` states, read once,
    without building the model (``custom_models.model_file.stated_settings``); ({}, None) when the action
    reads none. ``config.derive`` applies it over its defaults."""
    request = model_file_request(c)
    return stated_settings(*request) if request is not None else ({}, None)


def read_settings(argv=None):
    """The settings of a command line: its flags, and what its model file states (read once, here)."""
    c = checked_flags(argv)
    return derive(c, model_file_statement(c))


def benchmark_pass(detector, data_root: str, paths: Sequence[str], labels: Optional[Sequence[int]] = None,
                   masks: Optional[Sequence[Optional[str]]] = None, out_dir: Optional[str] = None,
                   batch_size: int = 8, limits: Sequence[float] = BENCHMARK_PRO_LIMITS) -> Optional[dict]:
    """Score ``paths`` with a calibrated ``detector`` at each image's own resolution, a batch at a time: with
    ``out_dir``, the files MVTec AD 2's server takes (``utils/submission_files.py``; finished ones are read back,
    not scored again); with ``labels`` and ``masks``, the benchmark's metrics of the float16 maps as written
    (``utils/segmentation_benchmark.py``). Returns the metrics, or None without labels."""
    paths = list(paths)
    benchmark = SegmentationBenchmark(limits) if labels is not None else None
    for start in progress(range(0, len(paths), batch_size), desc='benchmark', total=-(-len(paths) // batch_size)):
        chunk = paths[start:start + batch_size]
        files = [output_paths(out_dir, data_root, p) if out_dir else None for p in chunk]
        todo = [p for p, f in zip(chunk, files) if f is None or not finished(f)]
        scored = dict(zip(todo, detector.predict(todo, batch_size))) if todo else {}
        for k, (path, pair) in enumerate(zip(chunk, files)):
            if path in scored:
                map16, mask = as_float16(scored[path].anomaly_map), scored[path].mask
                if pair is not None:
                    write_pair(pair, map16, mask)
            else:
                map16, mask = read_pair(pair)
            if benchmark is not None:
                truth = masks[start + k]
                benchmark.add(map16, mask, labels[start + k], np.asarray(read_mask(truth)) > 0 if truth else None)
    return benchmark.metrics() if benchmark is not None else None


def record_stop(c, exc: BaseException, run_files, observers, history, checkpoints) -> None:
    """A run stopped by Ctrl-C or an error: its results file marked as not complete, and what was kept."""
    status = 'interrupted' if isinstance(exc, KeyboardInterrupt) else 'failed'
    files = write_results(c.items(), run_files, observers, history, checkpoints, status=status,
                          extra={'error': user_message(exc) if isinstance(exc, CflowError) else repr(exc)})
    kept = f'checkpoints {", ".join(checkpoints)}' if checkpoints else 'no checkpoint'
    print(f'Run {status} after {len(history)} of {c.meta_epochs} tested epochs: kept {files["json"]} '
          f'(status "{status}") and {kept}; no results .txt line (it is written for complete runs only)')
