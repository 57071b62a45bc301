"""``--action-type predict``: score new images with a calibrated model; no ground truth needed.

    python main.py --action-type predict --checkpoint FILE --input PATH --output-dir DIR

``--checkpoint``: a calibrated ``.pt`` (authors' format + calibration), a compact
``.safetensors`` or an exported ``.onnx`` (run with onnxruntime). ``--input``: an image, a
folder (recursively, any supported format) or a video (decoded frame by frame with PyAV).
Writes under DIR (default: ``predictions/<input name>``), each file atomically:

    overlays/<path>.png       the image with its anomaly map (fixed colour scale 0 .. 2 x threshold);
                              <path> is the input's path below the input folder, extension kept
                              (a/b.jpg -> overlays/a/b.jpg.png; a video's frames -> <video>/000123.png),
                              so two inputs never share an output
    masks/<path>.png          the defect mask at the image's own size (0/255; empty when decided good)
    predictions.csv           source, frame, score, decision, defect area: appended after every batch,
                              so a crash or an undecodable frame keeps every row scored before it
    predictions.json          thresholds, settings, a summary (status complete or failed) and the rows
    <video>_annotated.mp4     for a video: every frame with its overlay and decision
    index.html                a static page: every input's overlay, score and decision, defective first

Unreadable images are skipped with a warning and counted in the summary. Files under DIR
are never taken as inputs (DIR may sit inside the input folder).
"""
import csv
import io
import json
import os
import time
from typing import Iterator, List, Tuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from custom_datasets.common import IMAGE_EXTENSIONS, list_images_recursive, read_rgb
from utils.atomic import atomic_path, atomic_write, atomic_write_text
from utils.calibration import MASK_PEAK_SHARE, decisions, mask_threshold
from utils.errors import CflowError
from utils.progress import count, progress
from utils.viz import display_copy, index_html, overlay_picture

VIDEO_EXTENSIONS = ('.avi', '.mp4', '.mov', '.mkv', '.webm', '.mpg', '.mpeg', '.m4v', '.wmv')


# ----------------------------------------------------------------------------------
# The model


def open_model(c):
    """(model, calibration): ``model(images in [0, 1], B x 3 x inp x inp) -> (maps, scores)`` as numpy."""
    if c.checkpoint.endswith('.onnx'):
        from utils.export_onnx import OnnxModel
        model = OnnxModel(c.checkpoint)
        if 'input_size' in c.given and c.input_size != model.input_size:
            raise CflowError(f'{c.checkpoint} takes {model.input_size}x{model.input_size} images but -inp is '
                             f'{c.input_size}: drop -inp (images are resized to the model\'s size), or export '
                             f'again at -inp {c.input_size}')
        c.input_size = model.input_size
        return model, model.calibration
    from calibrate import load_for_inference
    from export import deployable, require_calibration
    loaded = load_for_inference(c)
    require_calibration(c, loaded)
    module = deployable(c, loaded).to(c.device).eval()

    def run(images: torch.Tensor):
        with torch.inference_mode():
            maps, scores = module(images.to(c.device, non_blocking=True))
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()
    return run, loaded.calibration


# ----------------------------------------------------------------------------------
# Inputs: (tensors, items) batches; an item is (source, frame or None, display image or error)


class ImageFiles(Dataset):
    """Model input, a display copy and the original size of each image; an error text instead of failing."""

    def __init__(self, paths: List[str], input_size: int):
        self.paths, self.input_size = paths, input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            image = read_rgb(self.paths[i])
        except CflowError as exc:
            return torch.zeros(3, self.input_size, self.input_size), (self.paths[i], None, None, str(exc))
        return to_model_input(image, self.input_size), (self.paths[i], None, display_copy(image, minimum=256), image.size)


def to_model_input(image: Image.Image, input_size: int) -> torch.Tensor:
    """The published test transform without normalisation (it is inside the model): resize both sides, [0, 1]."""
    return TF.to_tensor(image.resize((input_size, input_size), Image.LANCZOS))


def collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def image_batches(c, paths: List[str]) -> Iterator[Tuple[torch.Tensor, list]]:
    loader = DataLoader(ImageFiles(paths, c.input_size), batch_size=c.batch_size, num_workers=c.workers,
                        collate_fn=collate, pin_memory=c.device.startswith('cuda'))
    yield from loader


def video_batches(c, path: str) -> Iterator[Tuple[torch.Tensor, list]]:
    """Frames decoded one at a time with PyAV (never the whole video in memory), in batches."""
    from custom_datasets.stc import _import_av
    av = _import_av()
    tensors, items = [], []
    try:
        with av.open(path) as container:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                image = frame.to_image()
                tensors.append(to_model_input(image, c.input_size))
                items.append((path, index, image, image.size))
                if len(items) == c.batch_size:
                    yield torch.stack(tensors), items
                    tensors, items = [], []
    except (av.error.FFmpegError, IndexError) as exc:
        raise CflowError(f'cannot decode video {path} ({exc}): check the file') from None
    if items:
        yield torch.stack(tensors), items


def video_info(path: str) -> Tuple[int, float]:
    """(frame count or 0 where the container does not say, frames per second) of a video."""
    from custom_datasets.stc import _import_av
    av = _import_av()
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            return stream.frames or 0, float(stream.average_rate or 10)
    except (av.error.FFmpegError, IndexError) as exc:
        raise CflowError(f'cannot decode video {path} ({exc}): check the file') from None


def resolve_input(path: str, output_dir: str):
    """('images', paths) or ('video', path), or a one-line error. Nothing under ``output_dir`` is an input."""
    if os.path.isdir(path):
        output = os.path.abspath(output_dir) + os.sep
        paths = [p for p in list_images_recursive(path) if not os.path.abspath(p).startswith(output)]
        if not paths:
            raise CflowError(f'--input {path} holds no images ({"/".join(IMAGE_EXTENSIONS)})')
        return 'images', paths
    if not os.path.exists(path):
        raise CflowError(f'--input {path} does not exist: pass an image, a folder of images or a video')
    if path.lower().endswith(VIDEO_EXTENSIONS):
        return 'video', path
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return 'images', [path]
    raise CflowError(f'--input {path} is neither an image ({"/".join(IMAGE_EXTENSIONS)}) nor a video '
                     f'({"/".join(VIDEO_EXTENSIONS)}) nor a folder')


# ----------------------------------------------------------------------------------
# Outputs


def output_name(source: str, frame, root: str) -> str:
    """The input's path below the input folder (or its file name), extension kept, + '.png'; a video
    frame: <video file name>/<frame>.png. Distinct inputs get distinct names (x.png / x.jpg, a/b.png /
    a__b.png), and only characters that are unsafe in a file name on some platform are replaced."""
    relative = os.path.relpath(source, root) if os.path.isdir(root) else os.path.basename(source)
    relative = relative.replace(':', '-')
    return os.path.join(relative, f'{frame:06d}.png') if frame is not None else f'{relative}.png'


def default_output_dir(input_path: str) -> str:
    """predict's own folder when --output-dir is left out: predictions/<input name>."""
    name = os.path.basename(os.path.normpath(os.path.abspath(input_path))) or 'input'
    return os.path.join('predictions', name)


class PredictionTable:
    """predictions.csv, appended one batch at a time (one write, flushed to disk), so every scored row
    survives a crash or a later failure; the header is written once, at the start."""

    FIELDS = ['source', 'frame', 'score', 'decision', 'defect_pixels', 'defect_fraction', 'overlay', 'mask']

    def __init__(self, path: str):
        self.path, self.rows = path, 0
        atomic_write_text(path, ','.join(self.FIELDS) + '\n')

    def append(self, rows: List[dict]) -> None:
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=self.FIELDS).writerows(rows)
        try:
            with open(self.path, 'a', newline='') as f:
                f.write(buffer.getvalue())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise CflowError(f'cannot append to {self.path} ({exc.strerror}): free some disk space (the rows '
                             f'written so far are kept)') from None
        self.rows += len(rows)

    def read(self) -> Iterator[dict]:
        with open(self.path, newline='') as f:
            yield from csv.DictReader(f)


def save_png(path: str, image: Image.Image) -> None:
    # zlib's fastest level: PNG encoding at the default level cost more than scoring the image
    atomic_write(path, lambda tmp: image.save(tmp, format='PNG', compress_level=1))


class BackgroundWriter:
    """Encodes and writes PNGs on a thread (Pillow releases the GIL while encoding), so writing
    overlaps the next batch's scoring; at most ``pending`` writes wait, and any error surfaces."""

    def __init__(self, pending: int = 64):
        from concurrent.futures import ThreadPoolExecutor
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.futures, self.pending = [], pending

    def submit(self, fn, *args) -> None:
        self.futures.append(self.pool.submit(fn, *args))
        while len(self.futures) > self.pending:
            self.futures.pop(0).result()

    def close(self) -> None:
        """Wait for every write; re-raise the first error."""
        try:
            for future in self.futures:
                future.result()
        finally:
            self.pool.shutdown(wait=True)

    def abort(self) -> None:
        """After an error elsewhere: drop what has not started, wait for the rest, raise nothing."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def full_size_mask(anomaly_map: np.ndarray, size: Tuple[int, int], threshold: float, defective: bool) -> np.ndarray:
    """The defect mask at the image's own size: A > t_P at the model's resolution, resized with
    nearest neighbours (a bilinear resize of the map could empty the mask of an image decided
    defective). A defective image's mask is never empty: its peak pixel is kept."""
    if not defective:
        return np.zeros((size[1], size[0]), dtype=bool)
    mask = Image.fromarray(((anomaly_map > threshold) * 255).astype(np.uint8)).resize(size, Image.NEAREST)
    mask = np.asarray(mask) > 0
    if not mask.any():  # a peak thinner than one output pixel (an image smaller than the model's input)
        row, col = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
        mask = mask.copy()
        mask[min(size[1] - 1, row * size[1] // anomaly_map.shape[0]), min(size[0] - 1, col * size[0] // anomaly_map.shape[1])] = True
    return mask


class VideoWriter:
    """The annotated video, written to a temporary file and moved into place when complete."""

    def __init__(self, path: str, fps: float = 10):
        from custom_datasets.stc import _import_av
        self.av = _import_av()
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


def run_predict(c) -> dict:
    if 'output_dir' not in c.given:
        c.output_dir = default_output_dir(c.input)
    kind, source = resolve_input(c.input, c.output_dir)
    writable_output_dir(c.output_dir)
    model, calibration = open_model(c)
    t_image = calibration['image_threshold']
    overlay_dir, mask_dir = os.path.join(c.output_dir, 'overlays'), os.path.join(c.output_dir, 'masks')
    video = None
    if kind == 'images':
        batches, total = image_batches(c, source), len(source)
    else:
        total, fps = video_info(source)
        batches = video_batches(c, source)
        if not c.scores_only:
            video = VideoWriter(os.path.join(c.output_dir, f'{os.path.splitext(os.path.basename(source))[0]}'
                                                           f'_annotated.mp4'), fps)
    table = PredictionTable(os.path.join(c.output_dir, 'predictions.csv'))
    skipped, counts = [], {'scored': 0, 'defective': 0}
    start = time.time()
    status, error = 'failed', None
    writer = BackgroundWriter()
    try:
        for images, items in progress(batches, total=-(-total // c.batch_size) if total else None, desc='predict'):
            keep = [i for i, item in enumerate(items) if item[2] is not None]
            for item in items:
                if item[2] is None:
                    print(f'Warning: skipped {item[0]}: {item[3]}')
                    skipped.append({'source': item[0], 'error': item[3]})
            if not keep:
                continue
            maps, scores = model(images[keep])
            defective = decisions(scores, calibration)
            rows = []
            for j, i in enumerate(keep):
                src, frame, display, size = items[i]
                name = output_name(src, frame, c.input)
                mask = full_size_mask(maps[j], size, mask_threshold(scores[j], calibration), bool(defective[j]))
                row = {'source': src, 'frame': '' if frame is None else frame, 'score': float(scores[j]),
                       'decision': 'defective' if defective[j] else 'good', 'defect_pixels': int(mask.sum()),
                       'defect_fraction': float(mask.mean()), 'overlay': '', 'mask': ''}
                if not c.scores_only:
                    t_mask = mask_threshold(scores[j], calibration)
                    marks = [(t_image, 't_I'), (scores[j], 'score')] + ([(t_mask, 't_M')] if defective[j] else [])
                    overlay = overlay_picture(
                        display, maps[j], mask, 2 * t_image, marks,
                        f'{"DEFECTIVE" if defective[j] else "good"}: score {scores[j]:.3g}, stored image threshold '
                        f't_I {t_image:.3g}' + (f'; mask: A > t_M {t_mask:.3g}' if defective[j] else ''),
                        bool(defective[j]))
                    writer.submit(save_png, os.path.join(overlay_dir, name), overlay)
                    writer.submit(save_png, os.path.join(mask_dir, name),
                                  Image.fromarray((mask * 255).astype(np.uint8)))
                    if video is not None:
                        video.write(overlay)
                    row.update(overlay=os.path.join('overlays', name), mask=os.path.join('masks', name))
                rows.append(row)
            table.append(rows)
            counts['scored'] += len(rows)
            counts['defective'] += int(np.sum(defective))
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
        write_predictions(c, table, skipped, summary, calibration, video.path if video and status == 'complete'
                          else None)
        if not c.scores_only and counts['scored']:
            atomic_write_text(os.path.join(c.output_dir, 'index.html'),
                              index_html(table.read(), f'CFLOW-AD predictions: {c.input}', t_image))
        if status != 'complete':
            print(f'Predict stopped after {counts["scored"]} scored inputs; their rows are kept in {table.path}')
    print(f'Predicted {count(summary["scored"], "frame" if kind == "video" else "image")}: {summary["defective"]} '
          f'defective, {summary["skipped"]} skipped (unreadable), {summary["images_per_second"]:.1f} img/s; '
          f'results in {table.path}')
    return {'rows': list(table.read()), 'skipped': skipped, 'summary': summary, 'output_dir': c.output_dir}


def write_predictions(c, table: PredictionTable, skipped, summary, calibration, video_path) -> None:
    """predictions.json: the header fields, then the rows streamed from the table (memory stays flat)."""
    header = {'checkpoint': c.checkpoint, 'input': c.input, 'settings': calibration['settings'],
              'image_threshold': calibration['image_threshold'], 'pixel_threshold': calibration['pixel_threshold'],
              'mask_rule': 'A > max(t_P, t_I + %g (score - t_I))' % calibration.get('mask_peak_share', MASK_PEAK_SHARE),
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
