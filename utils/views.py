"""DifferNet's view of an image (its authors' transforms), shared by its dataset, its detector and the tests:

    view = Normalize(ToTensor(rotate(resize(image, (S, S), BILINEAR), angle, NEAREST, corners 0)))

Training and (by default) norm-test draw each angle uniformly in [-180, 180] degrees (the published
``RandomRotation(180)``) from a seed; the fixed views are at i * 360 / V (the authors' localization views).
"""
from typing import List, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from utils.images import IMAGENET_MEAN, IMAGENET_STD


def fixed_angles(views: int) -> List[float]:
    """i * 360 / views degrees, i = 0 .. views - 1."""
    return [i * 360.0 / views for i in range(views)]


def random_angles(views: int, seed: int) -> List[float]:
    return np.random.default_rng(seed).uniform(-180.0, 180.0, views).tolist()


def rotated_views(image: Image.Image, size: int, angles: Sequence[float], mean=IMAGENET_MEAN,
                  std=IMAGENET_STD) -> torch.Tensor:
    """V x 3 x size x size normalised views of one RGB image."""
    resized = image.resize((size, size), Image.BILINEAR)
    return torch.stack([TF.normalize(TF.to_tensor(resized.rotate(a, Image.NEAREST, expand=False, fillcolor=0)),
                                     list(mean), list(std)) for a in angles])


class FixedViews:
    """image -> its V fixed views (picklable: predict's loader workers run it)."""

    def __init__(self, size: int, views: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.angles, self.mean, self.std = size, fixed_angles(views), tuple(mean), tuple(std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return rotated_views(image, self.size, self.angles, self.mean, self.std)
