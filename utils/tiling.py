"""Tiling: a high-resolution image scored as T x T tiles at its own resolution, the maps stitched back.

The published pipeline resizes the whole image to -inp, which removes defects of a few pixels. With
``--tile T [--tile-overlap O] [--image-size S]``:

* the image is first scaled so that its longer side is S (``--image-size``; left out: as read), Lanczos;
* tiles of T x T pixels cover it on a regular grid, per axis of length L:

      step = T - O,   n = ceil((L - T) / step) + 1,   start_k = min(k step, L - T)

  so neighbours overlap by at least O pixels and the last row/column lies on the edge (no padding);
* each tile is resized to inp x inp (the published resize) and scored by the unchanged model;
* the tiles' maps are put on a canvas at the model's density, r = inp / T cells per image pixel:
  canvas length round(L r), tile k at round(start_k r) (within half a cell of its place; exact when
  T = inp), and overlapping cells are **averaged**:

      A(p) = sum_k A_k(p) / #{k : p in tile k}

  Averaging is affine-invariant, so stitching the calibrated maps A = S_ref - S, or S before the
  constants, gives the same canvas;
* the image score is the canvas maximum; decisions and masks use the calibrated thresholds on the
  canvas, which is then resized to the image's own size (as the untiled model map is).

With one tile covering a square image (T = its side, no --image-size) the canvas is the model's map,
so every map, score and decision equals the untiled one.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from utils.errors import CflowError
from utils.images import resize_image, scale_image

@dataclass(frozen=True)
class Tiling:
    tile: int                         # T: tile side in pixels of the (scaled) image
    overlap: int = 0                  # O: least overlap of neighbouring tiles, pixels
    image_size: Optional[int] = None  # S: the longer side scaled to S first (None: as read)

    def check(self) -> 'Tiling':
        """One-line errors for settings that cannot tile anything."""
        if self.tile < 1:
            raise CflowError(f'--tile must be at least 1 pixel, got {self.tile}')
        if self.overlap < 0:
            raise CflowError(f'--tile-overlap must be 0 or more pixels, got {self.overlap}')
        if self.overlap >= self.tile:
            raise CflowError(f'--tile-overlap {self.overlap} must be smaller than --tile {self.tile} (the grid steps '
                             f'by tile - overlap pixels): pass e.g. --tile-overlap {self.tile // 4}')
        if self.image_size is not None and self.image_size < self.tile:
            raise CflowError(f'--image-size {self.image_size} is smaller than --tile {self.tile}: no tile fits the '
                             f'scaled image; pass --image-size {self.tile} or more, or a smaller --tile')
        return self

    def as_settings(self) -> dict:
        return {'tile': self.tile, 'tile_overlap': self.overlap, 'image_size': self.image_size}


def tiling_of(settings: dict) -> Optional[Tiling]:
    """The tiling a model's settings record, or None (an untiled model: every file made before tiling)."""
    if settings.get('tile') is None:
        return None
    return Tiling(int(settings['tile']), int(settings.get('tile_overlap') or 0),
                  None if settings.get('image_size') is None else int(settings['image_size']))


def grid_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Tile starts along one axis: step T - O, n = ceil((L - T) / step) + 1, the last one at L - T."""
    step = tile - overlap
    n = -(-(length - tile) // step) + 1
    return [min(k * step, length - tile) for k in range(n)]


def half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def scaled_size(size: Tuple[int, int], image_size: Optional[int]) -> Tuple[int, int]:
    """(width, height) after scaling the longer side to ``image_size`` (unchanged when None)."""
    if image_size is None:
        return tuple(size)
    scale = image_size / max(size)
    return max(1, half_up(size[0] * scale)), max(1, half_up(size[1] * scale))


@dataclass(frozen=True)
class TileLayout:
    """Where one image's tiles lie: in the scaled image (pixels) and on its canvas (model cells)."""
    size: Tuple[int, int]                 # (width, height) of the scaled image
    tile: int                             # T
    input_size: int                       # inp: a tile's map is inp x inp
    boxes: Tuple[Tuple[int, int], ...]    # (x, y) of each tile in the scaled image, row by row
    canvas: Tuple[int, int]               # (width, height) of the stitched map
    cells: Tuple[Tuple[int, int], ...]    # (x, y) of each tile's map on the canvas

    def __len__(self) -> int:
        return len(self.boxes)


def tile_layout(size: Tuple[int, int], tiling: Tiling, input_size: int) -> TileLayout:
    """The layout of an image of ``size`` = (width, height) as read; one line if the tile does not fit."""
    width, height = scaled_size(size, tiling.image_size)
    if tiling.tile > min(width, height):
        scaled = f' (scaled to {width}x{height} by --image-size {tiling.image_size})' if tiling.image_size else ''
        raise CflowError(f'the image is {size[0]}x{size[1]} px{scaled}, smaller than --tile {tiling.tile}: tiles must '
                         f'fit inside the image; pass --tile {min(width, height)} or less (or a larger --image-size)')
    r = input_size / tiling.tile  # canvas cells per image pixel
    xs, ys = grid_starts(width, tiling.tile, tiling.overlap), grid_starts(height, tiling.tile, tiling.overlap)
    boxes = tuple((x, y) for y in ys for x in xs)
    return TileLayout((width, height), tiling.tile, input_size, boxes, (half_up(width * r), half_up(height * r)),
                      tuple((half_up(x * r), half_up(y * r)) for x, y in boxes))


def cut_tile(scaled: Image.Image, layout: TileLayout, k: int) -> Image.Image:
    """Tile ``k`` of the image scaled to ``layout.size``, resized to inp the published way."""
    (x, y), t = layout.boxes[k], layout.tile
    return resize_image(scaled.crop((x, y, x + t, y + t)), layout.input_size)


def cut_tiles(image: Image.Image, layout: TileLayout) -> torch.Tensor:
    """n x 3 x inp x inp uint8: the image scaled (Lanczos), cut, each tile resized the published way."""
    scaled = scale_image(image, layout.size)
    return torch.stack([TF.pil_to_tensor(cut_tile(scaled, layout, k)) for k in range(len(layout))])


def as_unit_float(tiles: torch.Tensor) -> torch.Tensor:
    """uint8 tiles as float in [0, 1], exactly as ``TF.to_tensor`` makes them (x / 255)."""
    return tiles.to(torch.float32).div(255)


def stitch(tile_maps: Sequence[np.ndarray], layout: TileLayout, dtype=np.float32) -> np.ndarray:
    """The canvas (height x width) of the tiles' inp x inp maps, overlaps averaged (module docstring)."""
    width, height = layout.canvas
    total = np.zeros((height, width), dtype=np.float64)
    hits = np.zeros((height, width), dtype=np.int32)
    side = layout.input_size
    for tile_map, (x, y) in zip(tile_maps, layout.cells):
        total[y:y + side, x:x + side] += tile_map
        hits[y:y + side, x:x + side] += 1
    return (total / hits).astype(dtype)


@dataclass
class TiledInput:
    """One image ready for a tiled model: its tiles (uint8, picklable for loader workers) and layout."""
    tiles: torch.Tensor       # n x 3 x inp x inp, uint8
    layout: TileLayout        # no tiles: a placeholder for an image that could not be read


class TileInputs:
    """image -> ``TiledInput`` (a detector's ``input_transform`` for a tiled model; picklable)."""

    def __init__(self, tiling: Tiling, input_size: int):
        self.tiling, self.input_size = tiling, input_size

    def __call__(self, image: Image.Image) -> TiledInput:
        layout = tile_layout(image.size, self.tiling, self.input_size)
        return TiledInput(cut_tiles(image, layout), layout)

    def blank(self) -> TiledInput:
        empty = TileLayout((0, 0), self.tiling.tile, self.input_size, (), (0, 0), ())
        return TiledInput(torch.zeros(0, 3, self.input_size, self.input_size, dtype=torch.uint8), empty)

    def warm_image(self) -> Image.Image:
        """The smallest image every tile fits in (a service warms its model on it)."""
        side = self.tiling.image_size or self.tiling.tile
        return Image.new('RGB', (side, side))


@dataclass
class TiledBatch:
    """The tiles of several images, concatenated in order, with each image's layout."""
    tiles: torch.Tensor
    layouts: List[TileLayout]

    def __len__(self) -> int:
        return len(self.layouts)

    def __getitem__(self, keep: Sequence[int]) -> 'TiledBatch':
        """The batch of the images at indices ``keep`` (predict drops unreadable ones)."""
        ends = np.cumsum([0] + [len(layout) for layout in self.layouts])
        rows = [row for i in keep for row in range(ends[i], ends[i + 1])]
        return TiledBatch(self.tiles[rows], [self.layouts[i] for i in keep])

    def pin_memory(self) -> 'TiledBatch':
        return TiledBatch(self.tiles.pin_memory(), self.layouts)


def collate_inputs(inputs: Sequence):
    """Model inputs of several images as one batch: a B x 3 x inp x inp tensor, or a ``TiledBatch``."""
    if inputs and isinstance(inputs[0], TiledInput):
        return TiledBatch(torch.cat([item.tiles for item in inputs]), [item.layout for item in inputs])
    return torch.stack(list(inputs))


def tiled_map_scores(run, batch: TiledBatch, tile_batch: int) -> Tuple[List[np.ndarray], np.ndarray]:
    """(per image its stitched canvas, per image its score = the canvas max) of a ``TiledBatch``, the tiles
    scored ``tile_batch`` at a time by ``run`` (images in [0, 1] -> (maps, scores)): a few tiles' activations
    exist at once, whatever the image's size."""
    maps = [run(as_unit_float(batch.tiles[start:start + tile_batch]))[0]
            for start in range(0, batch.tiles.shape[0], tile_batch)]
    maps = np.concatenate(maps) if maps else np.zeros((0, 0, 0), np.float32)
    canvases, first = [], 0
    for layout in batch.layouts:
        canvases.append(stitch(maps[first:first + len(layout)], layout))
        first += len(layout)
    return canvases, np.array([canvas.max() for canvas in canvases], dtype=np.float32)
