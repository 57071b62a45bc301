"""Datasets of a tiled model (``utils/tiling.py``): the tiles of each image instead of the image resized.

* ``TiledTrainingImages``: every grid tile of every training image is one sample, so each sub-epoch sees
  all tiles of the good images in a shuffled order (the published loader: seeded shuffle, incomplete
  batches dropped, -bs tiles per batch, as many fibers per step as published). A tile gets the published
  training chain after it is cut: resize to inp, RandomRotation(5), crop, normalise.
* ``TiledTestImages``: one image per item: its tiles (normalised), its label, its ground-truth mask at
  the canvas resolution (nearest), and its layout; the test and calibration passes score the tiles a
  batch at a time and stitch the maps (``utils/anomaly_map.py``).
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from custom_datasets.common import LabelledImages, check_readable, rotate_like_random_rotation
from utils.errors import CflowError
from utils.images import read_mask, read_rgb, resize_mask, scale_image
from utils.tiling import TileLayout, Tiling, as_unit_float, cut_tile, cut_tiles, tile_layout

# Training tiles are cut once and kept (uint8, inp x inp) when they fit in this many bytes; else each
# sample reads its image again.
TILE_CACHE_BYTES = 1 << 30


def layouts_of(paths: Sequence[str], tiling: Tiling, input_size: int) -> List[TileLayout]:
    """Each image's layout from its header (no pixels read); a tile that does not fit is one line naming it."""
    layouts = []
    for path, size in zip(paths, check_readable(list(paths))):
        try:
            layouts.append(tile_layout(size, tiling, input_size))
        except CflowError as exc:
            raise CflowError(f'{path}: {exc}') from None
    return layouts


class TiledTrainingImages(LabelledImages):
    """(tile tensor, 0, empty mask) for every grid tile of every image of ``images`` (module docstring)."""

    def __init__(self, images: LabelledImages, tiling: Tiling):
        super().__init__(list(images.x), list(images.y), list(images.mask), images.input_size, images.train,
                         mean=images.finish.transforms[-1].mean, std=images.finish.transforms[-1].std)
        for name in ('calibration_images', 'calibration_source', 'held_out'):  # a good-only class's own
            if hasattr(images, name):
                setattr(self, name, getattr(images, name))
        self.layouts = layouts_of(self.x, tiling, self.input_size)
        self.entries = [(i, k) for i, layout in enumerate(self.layouts) for k in range(len(layout))]
        self.cached = None
        if len(self.entries) * 3 * self.input_size ** 2 <= TILE_CACHE_BYTES:
            self.cached = torch.cat([cut_tiles(read_rgb(path), layout) for path, layout in zip(self.x, self.layouts)])

    def __len__(self) -> int:
        return len(self.entries)

    def tile_image(self, index: int) -> Image.Image:
        """Tile ``index`` resized to inp (before the training rotation): kept, or read from its image."""
        if self.cached is not None:
            return TF.to_pil_image(self.cached[index])
        i, k = self.entries[index]
        return cut_tile(scale_image(read_rgb(self.x[i]), self.layouts[i].size), self.layouts[i], k)

    def __getitem__(self, key):
        """``key``: an index, or (index, rotation seed) from ``SeededShuffle``."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        tile = self.tile_image(index)
        if self.train:
            tile = rotate_like_random_rotation(tile, seed if seed is not None else int(torch.randint(2 ** 62, ())))
        return self.finish(tile), 0, torch.zeros(1, self.input_size, self.input_size)


class TiledTestImages(Dataset):
    """(n x 3 x inp x inp normalised tiles, label, canvas-size bool mask, layout) per image."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], masks: Sequence[Optional[object]],
                 tiling: Tiling, input_size: int, mean, std):
        self.x, self.y, self.mask = list(paths), list(labels), list(masks)
        self.mean, self.std = list(mean), list(std)
        self.layouts = layouts_of(self.x, tiling, input_size)

    def __len__(self) -> int:
        return len(self.x)

    def load_mask(self, i: int) -> torch.Tensor:
        width, height = self.layouts[i].canvas
        mask = self.mask[i]
        if mask is None:
            return torch.zeros(height, width, dtype=torch.bool)
        truth = np.asarray(read_mask(mask)) if isinstance(mask, str) else np.asarray(mask())
        return torch.from_numpy(resize_mask(truth, (width, height)))

    def __getitem__(self, i: int):
        layout = self.layouts[i]
        tiles = TF.normalize(as_unit_float(cut_tiles(read_rgb(self.x[i]), layout)), self.mean, self.std)
        return tiles, int(self.y[i]), self.load_mask(i), layout


def tiled_test_set(images: LabelledImages, tiling: Tiling) -> TiledTestImages:
    """The tiled view of a test set (its images, labels and masks)."""
    norm = images.finish.transforms[-1]
    return TiledTestImages(images.x, images.y, images.mask, tiling, images.input_size, norm.mean, norm.std)


def tiled_loader(dataset: TiledTestImages, workers: int) -> DataLoader:
    """One image (all its tiles) per item, in order, read by ``workers`` processes."""
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)
