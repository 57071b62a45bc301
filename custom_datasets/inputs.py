"""What ``predict`` reads: an image, a folder of images (recursively) or a video, in batches.

A batch is (B x 3 x inp x inp tensors in [0, 1], or a tiled model's ``utils.tiling.TiledBatch``, items); an item is (source, frame or None,
display copy or None, (width, height)), or (source, None, None, error text) for an unreadable
image (``unreadable``), which predict skips with a warning instead of failing.
"""
import os
from functools import partial
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from custom_datasets.common import IMAGE_EXTENSIONS, list_images_recursive
from utils.images import read_rgb, to_model_input
from utils.tiling import collate_inputs
from custom_datasets.stc import import_av
from utils.errors import CflowError
from utils.viz import display_copy

VIDEO_EXTENSIONS = ('.avi', '.mp4', '.mov', '.mkv', '.webm', '.mpg', '.mpeg', '.m4v', '.wmv')


def unreadable(item: tuple) -> bool:
    return isinstance(item[3], str)


class ImageFiles(Dataset):
    """Model input, a display copy (``display``: else None, for --scores-only) and the original size
    of each image; an error text instead of failing. ``transform``: image -> model input (picklable; default
    the published resize at ``input_size``, ``utils.images.to_model_input``)."""

    def __init__(self, paths: List[str], input_size: int, display: bool = True, transform: Optional[Callable] = None):
        self.paths, self.input_size, self.display = paths, input_size, display
        self.transform = transform or partial(to_model_input, input_size=input_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            image = read_rgb(self.paths[i])
            model_input = self.transform(image)  # a tiled model's tiles must fit the image
        except CflowError as exc:
            blank = (self.transform.blank() if hasattr(self.transform, 'blank') else
                     torch.zeros_like(self.transform(Image.new('RGB', (1, 1)))))
            return blank, (self.paths[i], None, None, str(exc))
        display = display_copy(image, minimum=256) if self.display else None
        return model_input, (self.paths[i], None, display, image.size)


def collate(batch):
    return collate_inputs([b[0] for b in batch]), [b[1] for b in batch]


def image_batches(paths: List[str], input_size: int, batch_size: int, workers: int,
                  pin_memory: bool = False, display: bool = True,
                  transform: Optional[Callable] = None) -> Iterator[Tuple[torch.Tensor, list]]:
    """Files decoded and resized in ``workers`` processes, in order, ``batch_size`` at a time; the
    workers start (and read ahead) at this call, not at the first ``next``."""
    return iter(DataLoader(ImageFiles(paths, input_size, display, transform), batch_size=batch_size,
                           num_workers=workers, collate_fn=collate, pin_memory=pin_memory))


def video_batches(path: str, input_size: int, batch_size: int,
                  transform: Optional[Callable] = None) -> Iterator[Tuple[torch.Tensor, list]]:
    """Frames decoded one at a time with PyAV (never the whole video in memory), in batches."""
    av = import_av()
    transform = transform or partial(to_model_input, input_size=input_size)
    tensors, items = [], []
    try:
        with av.open(path) as container:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                image = frame.to_image()
                tensors.append(transform(image))
                items.append((path, index, image, image.size))
                if len(items) == batch_size:
                    yield collate_inputs(tensors), items
                    tensors, items = [], []
    except (av.error.FFmpegError, IndexError) as exc:
        raise CflowError(f'cannot decode video {path} ({exc}): check the file') from None
    if items:
        yield collate_inputs(tensors), items


def video_info(path: str) -> Tuple[int, float]:
    """(frame count or 0 where the container does not say, frames per second) of a video."""
    av = import_av()
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
