"""What every dataset shares: listing image files, the published transforms, and a dataset over a
list of (image, label, mask) entries (reading and resizing one image: ``utils/images.py``).

Transforms (the published ones): ``Resize((inp, inp))`` on both sides (Lanczos for
images, nearest for masks), ``RandomRotation(5)`` right after it when training,
``CenterCrop(inp)``, ``ToTensor`` and ``Normalize(mean, std)``.
"""
import os
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from utils.errors import CflowError
from utils.images import IMAGENET_MEAN, IMAGENET_STD, image_size, mask_image, read_mask, read_rgb, resize_image

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


MAX_ROTATION = 5.0  # degrees: the published RandomRotation(5)


def rotate_like_random_rotation(image: Image.Image, seed: int) -> Image.Image:
    """``RandomRotation(5)`` (nearest, black fill, no expand) with its angle drawn from ``seed``.

    torchvision draws the angle from the global RNG of whichever loader worker reads the
    image, so the worker count changed the training data. The sampler gives every sample
    its own seed instead (:class:`custom_datasets.loaders.SeededShuffle`).
    """
    generator = torch.Generator().manual_seed(seed)
    angle = float(torch.empty(1).uniform_(-MAX_ROTATION, MAX_ROTATION, generator=generator).item())
    return TF.rotate(image, angle, T.InterpolationMode.NEAREST, expand=False, center=None, fill=0)


def mask_transform(input_size: int) -> Callable:
    return T.Compose([T.Resize((input_size, input_size), interpolation=T.InterpolationMode.NEAREST),
                      T.CenterCrop(input_size), T.ToTensor()])


def is_image_name(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return name.lower().endswith(tuple(extensions)) and not name.startswith('.')


def list_images(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Image files directly in ``folder``, sorted by name; extensions compare case-blind."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if is_image_name(f, extensions))


def list_images_recursive(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Image files in ``folder`` and every folder below it, sorted by path (hidden folders skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        found += [os.path.join(root, f) for f in files if is_image_name(f, extensions)]
    return sorted(found)


def calibration_images(folder: str) -> List[str]:
    """Every image under ``folder`` (--calibration-path), checked readable; one-line errors for an
    empty or missing folder."""
    if not os.path.isdir(folder):
        raise CflowError(f'--calibration-path {folder} is not a folder: pass a folder of defect-free images')
    paths = list_images_recursive(folder)
    if len(paths) < 2:
        raise CflowError(f'--calibration-path {folder} holds {len(paths)} images (png/jpg/jpeg/bmp/tif): '
                         f'calibration needs at least 2 defect-free images, 20 or more for a useful threshold')
    check_readable(paths)
    return paths


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
        self.input_size, self.train = input_size, train
        self.finish = T.Compose([T.CenterCrop(input_size), T.ToTensor(), T.Normalize(mean, std)])
        self.transform_mask = mask_transform(input_size)

    def __len__(self) -> int:
        return len(self.x)

    def load_mask(self, idx: int) -> torch.Tensor:
        mask = self.mask[idx]
        if mask is None:
            return torch.zeros(1, self.input_size, self.input_size)
        image = read_mask(mask) if isinstance(mask, str) else mask_image(mask())
        return self.transform_mask(image)

    def load_image(self, idx: int, seed: Optional[int] = None) -> torch.Tensor:
        """Resize (both sides), rotate when training, crop, normalise: the published order."""
        image = resize_image(read_rgb(self.x[idx]), self.input_size)
        if self.train:
            image = rotate_like_random_rotation(image, seed if seed is not None else int(torch.randint(2 ** 62, ())))
        return self.finish(image)

    def __getitem__(self, key) -> Tuple[torch.Tensor, int, torch.Tensor]:
        """``key``: an index, or (index, rotation seed) from :class:`SeededShuffle`."""
        idx, seed = key if isinstance(key, tuple) else (key, None)
        return self.load_image(idx, seed), self.y[idx], self.load_mask(idx)


def check_readable(paths: List[str]) -> List[Tuple[int, int]]:
    """Fail early, with the file's name, on an image that cannot even be identified; return the sizes.

    Reads headers only; a file broken further in is caught when it is loaded.
    """
    return [image_size(path) for path in paths]


def check_mask_sizes(images: List[str], sizes: List[Tuple[int, int]], masks: List[Optional[object]]) -> None:
    """Each mask file must have its image's size (``sizes``, from :func:`check_readable`): both are
    resized on their own to a square, so a mask of another aspect ratio would land on the wrong pixels."""
    for image, expected, mask in zip(images, sizes, masks):
        if isinstance(mask, str):
            found = image_size(mask, 'mask')
            if found != expected:
                raise CflowError(f'mask {mask} is {found[0]}x{found[1]} but its image {image} is '
                                 f'{expected[0]}x{expected[1]}: masks must have their image\'s size')


def require_defect_pixels(dataset: 'LabelledImages') -> None:
    """Fail before training when no defective test image has a defect pixel in its mask
    (localization AUROC and AUPRO would be undefined after the first epoch)."""
    defective = [i for i, label in enumerate(dataset.y) if label]
    for i in defective:  # usually the first mask has pixels: this reads one file
        if dataset.mask[i] is not None and dataset.load_mask(i).any():
            return
    raise CflowError(f'all {len(defective)} defective test images have empty ground-truth masks: '
                     f'localization metrics need defect pixels (non-zero) in the masks')
