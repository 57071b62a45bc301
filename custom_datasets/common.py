"""What every dataset shares: reading images and masks, the published transforms, and
a dataset over a list of (image, label, mask) entries.

Transforms (the published ones): ``Resize((inp, inp))`` on both sides (Lanczos for
images, nearest for masks), ``RandomRotation(5)`` right after it when training,
``CenterCrop(inp)``, ``ToTensor`` and ``Normalize(mean, std)``.
"""
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from utils.errors import CflowError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


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


def read_rgb(path: str) -> Image.Image:
    """Open an image file as RGB, or fail with a message naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise CflowError(f'cannot read image {path} ({exc}): replace or remove the file') from None


def mask_image(mask: np.ndarray) -> Image.Image:
    """A 0/255 'L' image of a mask array; any non-zero value is a defect pixel."""
    return Image.fromarray(np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8))


def read_mask(path: str) -> Image.Image:
    """Open a ground-truth mask as a 0/255 'L' image."""
    try:
        with Image.open(path) as image:
            return mask_image(np.asarray(image.convert('L')))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise CflowError(f'cannot read mask {path} ({exc}): replace or remove the file') from None


def image_transform(input_size: int, train: bool, mean: Sequence[float], std: Sequence[float]) -> Callable:
    steps = [T.Resize((input_size, input_size), interpolation=T.InterpolationMode.LANCZOS)]
    if train:
        steps.append(T.RandomRotation(5))
    steps += [T.CenterCrop(input_size), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def mask_transform(input_size: int) -> Callable:
    return T.Compose([T.Resize((input_size, input_size), interpolation=T.InterpolationMode.NEAREST),
                      T.CenterCrop(input_size), T.ToTensor()])


def list_images(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Image files directly in ``folder``, sorted by name; extensions compare case-blind."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(tuple(extensions)) and not f.startswith('.'))


def require_dir(path: str, what: str, fix: str) -> None:
    if not os.path.isdir(path):
        raise CflowError(f'{what} {path} does not exist: {fix}')


class LabelledImages(Dataset):
    """(image tensor, label, mask tensor) for a list of image entries.

    Args:
        images: image file paths.
        labels: 0 = good, 1 = defective, per image.
        masks: per image a mask file path, a callable returning a mask array, or None
            (an all-good mask).
    """

    def __init__(self, images: List[str], labels: List[int], masks: List[Optional[object]],
                 input_size: int, train: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.x, self.y, self.mask = images, labels, masks
        self.input_size = input_size
        self.transform_x = image_transform(input_size, train, mean, std)
        self.transform_mask = mask_transform(input_size)

    def __len__(self) -> int:
        return len(self.x)

    def load_mask(self, idx: int) -> torch.Tensor:
        mask = self.mask[idx]
        if mask is None:
            return torch.zeros(1, self.input_size, self.input_size)
        image = read_mask(mask) if isinstance(mask, str) else mask_image(mask())
        return self.transform_mask(image)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, int, torch.Tensor]:
        return self.transform_x(read_rgb(self.x[idx])), self.y[idx], self.load_mask(idx)


def check_readable(paths: List[str]) -> None:
    """Fail early, with the file's name, on an image that cannot even be identified.

    Reads headers only; a file broken further in is caught when it is loaded.
    """
    for path in paths:
        try:
            with Image.open(path) as image:
                image.size
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise CflowError(f'cannot read image {path} ({exc}): replace or remove the file') from None
