"""Reading and resizing images: the primitives every path into a model shares (datasets, predict,
load_model, the benchmark), in one place below both ``custom_datasets`` and ``custom_models``.

The published test-time resize: both sides to ``-inp`` (``Resize((inp, inp))``, Lanczos; the
``CenterCrop(inp)`` after it is then a no-op); masks with nearest neighbours (never blurred).
"""
from typing import Tuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError

from utils.errors import CflowError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; grey is replicated to three channels as published.

    16-bit and 32-bit greys are scaled to 8 bits by their range (PIL's own conversion
    clips them): 16-bit modes by 65535, others by the smallest of 1, 255 and 65535 that
    holds the data (float images in [0, 1], 8-bit values stored wide, 16-bit values).
    """
    if image.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
        array = np.asarray(image, dtype=np.float64)
        top = array.max()
        peak = 65535.0 if image.mode.startswith('I;16') else next(p for p in (1.0, 255.0, 65535.0, top) if top <= p)
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert('RGB')


# What Pillow raises for a file it cannot read (the bomb guard raises its own type).
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def unreadable(path: str, exc: Exception, what: str = 'image') -> CflowError:
    """The one-line error for a file Pillow cannot read, with the fix that fits the cause."""
    if isinstance(exc, Image.DecompressionBombError):
        return CflowError(f'{what} {path} is larger than Pillow\'s decompression-bomb limit of '
                          f'{Image.MAX_IMAGE_PIXELS} pixels: if you trust the file, pass a larger --max-image-pixels')
    return CflowError(f'cannot read {what} {path} ({exc}): replace or remove the file')


def open_rgb(source) -> Image.Image:
    """Decode a path or a binary file object as RGB; Pillow's own errors (``READ_ERRORS``) propagate."""
    with Image.open(source) as image:
        image.load()
        return to_rgb(image)


def read_rgb(path: str) -> Image.Image:
    """Open an image file as RGB, or fail with a message naming the file."""
    try:
        return open_rgb(path)
    except READ_ERRORS as exc:
        raise unreadable(path, exc) from None


def mask_image(mask: np.ndarray) -> Image.Image:
    """A 0/255 'L' image of a mask array; any non-zero value is a defect pixel."""
    return Image.fromarray(np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8))


def read_mask(path: str) -> Image.Image:
    """Open a ground-truth mask as a 0/255 'L' image."""
    try:
        with Image.open(path) as image:
            return mask_image(np.asarray(image.convert('L')))
    except READ_ERRORS as exc:
        raise unreadable(path, exc, 'mask') from None


def resize_image(image: Image.Image, input_size: int) -> Image.Image:
    """The published test-time resize: both sides to ``input_size``, Lanczos (``Resize((inp, inp))``;
    the ``CenterCrop(inp)`` after it is then a no-op). Every path into a model uses it."""
    return image.resize((input_size, input_size), Image.LANCZOS)


def scale_image(image: Image.Image, size: Tuple[int, int]) -> Image.Image:
    """``image`` at ``size`` = (width, height), Lanczos as the published resize (a tiled model's --image-size)."""
    return image if image.size == tuple(size) else image.resize(tuple(size), Image.LANCZOS)


def to_model_input(image: Image.Image, input_size: int) -> torch.Tensor:
    """3 x inp x inp in [0, 1]: the published test transform without its normalisation (the
    deployable model normalises inside)."""
    return TF.to_tensor(resize_image(image, input_size))


def resize_mask(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to ``size`` = (width, height) with nearest neighbours (never blurred)."""
    return np.asarray(mask_image(mask).resize(size, Image.NEAREST)) > 0


def image_size(path: str, what: str = 'image') -> Tuple[int, int]:
    """(width, height) from the file's header, or a one-line error naming the file."""
    try:
        with Image.open(path) as image:
            return image.size
    except READ_ERRORS as exc:
        raise unreadable(path, exc, what) from None
