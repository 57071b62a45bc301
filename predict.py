"""``--action-type predict``: score new images with a calibrated model; no ground truth needed.

    python main.py --action-type predict --checkpoint FILE --input PATH --output-dir DIR

``--checkpoint``: a calibrated ``.pt`` (authors' format + calibration), a compact
``.safetensors`` or an exported ``.onnx`` (onnxruntime, or ``--runtime openvino``). ``--input``:
an image, a folder (recursively, any supported format) or a video (decoded frame by frame with
PyAV). Scoring is ``custom_models.load_model``'s detector, the same as from Python; thresholds
are the stored ones unless ``--sensitivity`` or ``--image-threshold``/``--pixel-threshold``.
Writes under DIR (default: ``predictions/<input name>``), each file atomically:

    overlays/<path>.png       the image with its anomaly map (fixed colour scale 0 .. 2 x threshold);
                              <path> is the input's path below the input folder, extension kept
                              (a/b.jpg -> overlays/a/b.jpg.png; a video's frames -> <video>/000123.png),
                              so two inputs never share an output; --overlay-format jpg: .jpg instead
    masks/<path>.png          the defect mask at the image's own size (0/255; empty when decided good)
    predictions.csv           source, frame, score, decision, defect area: appended after every batch,
                              so a crash or an undecodable frame keeps every row scored before it
    predictions.json          thresholds, settings, a summary (status complete or failed) and the rows
    <video>_annotated.mp4     for a video: every frame with its overlay and decision
    index.html                a static page: every input's overlay, score and decision, defective first

Unreadable images are skipped with a warning and counted in the summary; a run where none could be
read exits with an error, and so does any skip with ``--fail-on-skip``. Files under DIR
are never taken as inputs (DIR may sit inside the input folder).
"""
import json
import os
import time
from typing import Optional

import numpy as np
from PIL import Image

from custom_datasets.inputs import image_batches, resolve_input, unreadable, video_batches, video_info
from custom_models import load_model
from custom_models.detector import Detector, choose_thresholds, detector_from_model
from utils.atomic import atomic_path, atomic_write, atomic_write_text
from utils.errors import CflowError
from utils.model_kinds import is_exported
from custom_models.differnet_detector import is_differnet_file
from custom_models.model_file import read_model
from actions import calibrate_on_folder, model_settings
from utils.progress import count, progress
from utils.pipeline import automatic_streams
from utils.prediction_files import BackgroundWriter, PredictionTable, save_overlay, save_png
from utils.viz import index_html, prediction_picture

# ----------------------------------------------------------------------------------
# The model: the same Detector as ``custom_models.load_model`` (custom_models/detector.py)


def open_detector(c, streams: int = 1) -> Detector:
    """The calibrated model of ``--checkpoint`` with the thresholds the flags choose; an uncalibrated
    .pt or .safetensors is calibrated on ``--calibration-path`` first (the file is not changed)."""
    options = dict(image_threshold=c.image_threshold, pixel_threshold=c.pixel_threshold, sensitivity=c.sensitivity)
    if c.calibration_path and is_differnet_file(c.checkpoint):
        raise CflowError(f'{c.checkpoint} is a DifferNet model: calibrate it first (--action-type calibrate --model '
                         f'differnet --checkpoint {c.checkpoint} --calibration-path {c.calibration_path}), then predict '
                         f'with the calibrated file')
    if is_exported(c.checkpoint) or not c.calibration_path or c.runtime not in (None, 'torch'):
        return load_model(c.checkpoint, device=c.device, runtime=c.runtime, threads=c.threads or 0, streams=streams,
                          cache_dir=openvino_cache(c), **options)
    loaded = read_model(c.checkpoint, model_settings(c)).to(c.device)
    calibration = calibrate_on_folder(c, loaded.encoder, loaded.decoders)
    return detector_from_model(loaded, calibration, c.device, c.checkpoint, choose_thresholds(calibration, **options))


def prediction_streams(c, kind: str, total: int) -> int:
    """--streams, else ``utils.pipeline.automatic_streams`` (a video of unknown length: more than one batch)."""
    if c.streams is not None:
        return c.streams
    return automatic_streams(total > c.batch_size or (kind == 'video' and not total), c.device.startswith('cuda'))


def openvino_cache(c):
    """OpenVINO's compiled-model cache folder for --runtime openvino: --openvino-cache, else
    $CFLOW_CACHE_DIR/openvino, else ($XDG_CACHE_HOME or ~/.cache)/cflow-ad/openvino; None for
    'none', another runtime, or a default folder that cannot be written (then a warning)."""
    openvino = c.runtime == 'openvino' or (c.runtime is None and c.checkpoint.endswith('.xml'))
    if not openvino or (c.openvino_cache or '').lower() == 'none':
        return None
    folder = c.openvino_cache or os.path.join(
        os.environ.get('CFLOW_CACHE_DIR') or os.path.join(
            os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'cflow-ad'),
        'openvino')
    try:
        writable_output_dir(folder)
    except CflowError as exc:
        if c.openvino_cache:
            raise CflowError(str(exc).replace('--output-dir', '--openvino-cache')) from None
        print(f'Warning: no OpenVINO model cache ({folder} is not writable): every run compiles the model')
        return None
    return folder


# ----------------------------------------------------------------------------------
# Outputs


def output_name(source: str, frame, root: str) -> str:
    """The input's path below the input folder (or its file name), extension kept, + '.png'; a video
    frame: <video file name>/<frame>.png. Distinct inputs get distinct names (x.png / x.jpg, a/b.png /
    a__b.png), and only characters that are unsafe in a file name on some platform are replaced."""
    relative = os.path.relpath(source, root) if os.path.isdir(root) else os.path.basename(source)
    relative = relative.replace(':', '-')
    return os.path.join(relative, f'{frame:06d}.png') if frame is not None else f'{relative}.png'


class VideoWriter:
    """The annotated video, written to a temporary file and moved into place when complete."""

    def __init__(self, path: str, fps: float = 10):
        from custom_datasets.stc import import_av
        self.av = import_av()
        self.path, self.fps = path, fps
        self._context = atomic_path(path)
        self.tmp = self._context.__enter__()
        self.container = self.av.open(self.tmp, mode='w', format='mp4')
        self.stream = None

    def write(self, image: Image.Image) -> None:
        if self.stream is None:
            self.stream = self.container.add_stream('mpeg4', rate=int(round(self.fps)))
            self.stream.width, self.stream.height = image.width - image.width % 2, image.height - image.height % 2
            self.stream.pix_fmt = 'yuv420p'
        frame = self.av.VideoFrame.from_image(image.crop((0, 0, self.stream.width, self.stream.height)))
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self, ok: bool) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()
        if ok:
            self._context.__exit__(None, None, None)
        else:
            self._context.__exit__(RuntimeError, RuntimeError('aborted'), None)


def writable_output_dir(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, '.write-test')
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as exc:
        raise CflowError(f'cannot write into --output-dir {folder} ({exc.strerror}): pass a writable folder') from None


# ----------------------------------------------------------------------------------


def write_pictures(display: Image.Image, result, t, overlay_path: str, mask_path: str,
                   precision: str = 'fp32') -> Image.Image:
    """One image's overlay (composed here: on the writer thread it overlaps the next images' scoring) and
    its mask, each written atomically; returns the overlay. A quantized model is named on it."""
    overlay = prediction_picture(display, result, t, precision)
    save_overlay(overlay_path, overlay)
    save_png(mask_path, Image.fromarray((result.mask * 255).astype(np.uint8)))
    return overlay


def overlay_name(name: str, overlay_format: str) -> str:
    """``name`` (…png) with the overlay's extension: a/b.jpg.png, or a/b.jpg.jpg for JPEG overlays."""
    return name if overlay_format == 'png' else name[:-len('png')] + overlay_format


def readable_batches(batches, n_batches: Optional[int], skipped: list):
    """(images, items) of ``batches`` without the unreadable images, each reported with a warning and
    appended to ``skipped``."""
    for images, items in progress(batches, total=n_batches, desc='predict'):
        for item in items:
            if unreadable(item):
                print(f'Warning: skipped {item[0]}: {item[3]}')
                skipped.append({'source': item[0], 'error': item[3]})
        keep = [i for i, item in enumerate(items) if not unreadable(item)]
        if len(keep) == len(items):
            yield images, items
        elif keep:
            yield images[keep], [items[i] for i in keep]


def run_predict(c) -> dict:
    kind, source = resolve_input(c.input, c.output_dir)
    writable_output_dir(c.output_dir)
    total, fps = (len(source), None) if kind == 'images' else video_info(source)
    detector = open_detector(c, prediction_streams(c, kind, total))
    if c.scores_only and hasattr(detector.run, 'maps'):
        detector.run.maps = False  # DifferNet: no gradient maps to draw
    t = detector.thresholds
    mask_dir = os.path.join(c.output_dir, 'masks')
    video = None
    if kind == 'images':  # the loader's workers start here and read while the model compiles
        batches = image_batches(source, detector.input_size, c.batch_size, c.workers, c.device.startswith('cuda'),
                                display=not c.scores_only, transform=detector.input_transform)
    else:
        batches = video_batches(source, detector.input_size, c.batch_size, detector.input_transform)
        if not c.scores_only:
            video = VideoWriter(os.path.join(c.output_dir, f'{os.path.splitext(os.path.basename(source))[0]}'
                                                           f'_annotated.mp4'), fps)
    detector.prepare(min(c.batch_size, total or c.batch_size))
    table = PredictionTable(os.path.join(c.output_dir, 'predictions.csv'))
    skipped, counts = [], {'scored': 0, 'defective': 0}
    start = time.time()
    status, error = 'failed', None
    writer = BackgroundWriter()
    try:
        readable = readable_batches(batches, -(-total // c.batch_size) if total else None, skipped)
        for kept, maps, scores in detector.score_batches(readable):
            rows = []
            for j, (src, frame, display, size) in enumerate(kept):
                result = detector.result(maps[j], scores[j], size)
                name = output_name(src, frame, c.input)
                overlay = os.path.join('overlays', overlay_name(name, c.overlay_format))
                row = {'source': src, 'frame': '' if frame is None else frame, 'score': result.score,
                       'decision': 'defective' if result.defective else 'good',
                       'defect_pixels': int(result.mask.sum()), 'defect_fraction': float(result.mask.mean()),
                       'overlay': '', 'mask': ''}
                if not c.scores_only:
                    paths = os.path.join(c.output_dir, overlay), os.path.join(mask_dir, name)
                    if video is not None:  # the video needs each overlay now, in frame order
                        video.write(write_pictures(display, result, t, *paths, detector.precision))
                    else:  # composed and written beside the next images' scoring
                        writer.submit(write_pictures, display, result, t, *paths, detector.precision)
                    row.update(overlay=overlay, mask=os.path.join('masks', name))
                rows.append(row)
            table.append(rows)
            counts['scored'] += len(rows)
            counts['defective'] += sum(row['decision'] == 'defective' for row in rows)
        writer.close()
        status = 'complete'
    except KeyboardInterrupt:
        status = 'interrupted'
        raise
    except CflowError as exc:
        error = str(exc)
        raise
    finally:
        if status != 'complete':
            writer.abort()
        if video is not None:
            video.close(status == 'complete')
        seconds = time.time() - start
        summary = {'status': status, **counts, 'skipped': len(skipped), 'seconds': seconds,
                   'images_per_second': counts['scored'] / max(seconds, 1e-9), **({'error': error} if error else {})}
        write_predictions(c, table, skipped, summary, detector, video.path if video and status == 'complete'
                          else None)
        if not c.scores_only and counts['scored']:
            atomic_write_text(os.path.join(c.output_dir, 'index.html'),
                              index_html(table.read(), f'CFLOW-AD predictions: {c.input}'
                                         + ('' if detector.precision == 'fp32' else f' ({detector.precision} model)'),
                                         t.image))
        if status != 'complete':
            print(f'Predict stopped after {counts["scored"]} scored inputs; their rows are kept in {table.path}')
    print(f'Predicted {count(summary["scored"], "frame" if kind == "video" else "image")}: {summary["defective"]} '
          f'defective, {summary["skipped"]} skipped (unreadable), {summary["images_per_second"]:.1f} img/s; '
          f'results in {table.path}' + ('' if detector.precision == 'fp32' else f' ({detector.precision} model)'))
    check_skipped(skipped, counts['scored'], c.fail_on_skip)
    return {'rows': list(table.read()), 'skipped': skipped, 'summary': summary, 'output_dir': c.output_dir}


def check_skipped(skipped: list, scored: int, fail_on_skip: bool) -> None:
    """A run that scored nothing failed (a script or scheduler must see it); with --fail-on-skip, so does any
    skipped input. The table and predictions.json are written before, with every skipped file named."""
    if skipped and not scored:
        raise CflowError(f'no input could be scored: all {len(skipped)} were unreadable (first: {skipped[0]["source"]}: '
                         f'{skipped[0]["error"]}): replace them or point --input at readable images')
    if skipped and fail_on_skip:
        raise CflowError(f'{len(skipped)} input(s) could not be read and were skipped (first: {skipped[0]["source"]}), '
                         f'and --fail-on-skip was given: replace or remove them (predictions.json lists each)')


def write_predictions(c, table: PredictionTable, skipped, summary, detector: Detector, video_path) -> None:
    """predictions.json: the header fields, then the rows streamed from the table (memory stays flat)."""
    calibration, t = detector.calibration, detector.thresholds
    header = {'checkpoint': c.checkpoint, 'input': c.input, 'runtime': detector.runtime, 'precision': detector.precision,
              'settings': calibration['settings'], **t.as_dict(),
              'stored_thresholds': {'image_threshold': calibration['image_threshold'],
                                    'pixel_threshold': calibration.get('pixel_threshold')},
              'mask_rule': detector.mask_rule(),
              'calibration_source': calibration['source'], 'summary': summary, 'skipped': skipped,
              'annotated_video': video_path}

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(json.dumps(header, indent=1)[:-2] + ',\n "predictions": [')
            for k, row in enumerate(table.read()):
                row = {**row, 'frame': int(row['frame']) if row['frame'] else '', 'score': float(row['score']),
                       'defect_pixels': int(row['defect_pixels']), 'defect_fraction': float(row['defect_fraction'])}
                f.write((',' if k else '') + '\n  ' + json.dumps(row))
            f.write('\n ]\n}\n')
    atomic_write(os.path.join(c.output_dir, 'predictions.json'), write)
