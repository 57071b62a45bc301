"""DifferNet's data: each image as V rotated views (``utils/views.py``), the angles random but seeded per image
and pass (so runs repeat, whatever the loader's workers), or fixed."""
from typing import List, Optional

import torch
from torch.utils.data import Dataset

from utils.images import IMAGENET_MEAN, IMAGENET_STD, read_rgb
from utils.views import fixed_angles, random_angles, rotated_views


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
