"""DifferNet's input: each image as V rotated views (its authors' transforms).

    view = Normalize(ToTensor(rotate(resize(image, (S, S), BILINEAR), angle, NEAREST, corners 0)))

Training and (by default) testing draw each view's angle uniformly in [-180, 180] degrees, as the published
``RandomRotation(180)``, from a seed per image and pass (so runs repeat, whatever the loader's workers);
``fixed`` views are at i * 360 / V (the authors' localization views).
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from utils.images import IMAGENET_MEAN, IMAGENET_STD, read_rgb


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


class RotatedViews(Dataset):
    """(V x 3 x S x S views, label) per image; ``fixed``: the evenly spaced angles, else random ones seeded per
    (image, pass) by the sampler's seed (training) or by ``seed`` and the index (testing)."""

    def __init__(self, paths: List[str], labels: List[int], size: int, views: int, fixed: bool = False,
                 seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.x, self.y, self.size, self.views, self.fixed, self.seed = paths, labels, size, views, fixed, seed
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.x)

    def angles(self, idx: int, seed: Optional[int] = None) -> List[float]:
        if self.fixed:
            return fixed_angles(self.views)
        return random_angles(self.views, seed if seed is not None else self.seed * 1_000_003 + idx)

    def __getitem__(self, key):
        idx, seed = key if isinstance(key, tuple) else (key, None)
        return rotated_views(read_rgb(self.x[idx]), self.size, self.angles(idx, seed), self.mean, self.std), self.y[idx]


def views_batch(batch):
    """Images x views, image-major, as one batch of views, and the labels."""
    return torch.cat([views for views, _ in batch]), torch.tensor([label for _, label in batch])
