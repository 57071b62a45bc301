"""The files MVTec AD 2's evaluation server takes, per input image (its path relative to the dataset root
kept, as the benchmark's own dataset class names it):

    OUT/anomaly_images/<object>/<split>[/good|/bad]/<stem>.tiff               one channel, float16, image size
    OUT/anomaly_images_thresholded/<object>/<split>[/good|/bad]/<stem>.png    {0, 255}, image size

Each file is written to a temporary name and moved into place, so a finished name is a finished file and
a resumed run skips an image whose two files are both there.
"""
import os
from typing import Tuple

import numpy as np
from PIL import Image

from utils.atomic import atomic_write

FLOAT16_MAX = float(np.finfo(np.float16).max)
CONTINUOUS, THRESHOLDED = 'anomaly_images', 'anomaly_images_thresholded'


def output_paths(out_dir: str, data_root: str, image_path: str) -> Tuple[str, str]:
    """(continuous .tiff, thresholded .png) of the image at ``image_path`` under the dataset root."""
    stem = os.path.splitext(os.path.relpath(os.path.abspath(image_path), os.path.abspath(data_root)))[0]
    return os.path.join(out_dir, CONTINUOUS, stem + '.tiff'), os.path.join(out_dir, THRESHOLDED, stem + '.png')


def as_float16(anomaly_map: np.ndarray) -> np.ndarray:
    """The map as the server reads it: float16, clipped to float16's finite range (a pixel far more normal
    than any calibration pixel has a large negative value, beyond float16's)."""
    return np.clip(np.asarray(anomaly_map, np.float32), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


def write_pair(paths: Tuple[str, str], map16: np.ndarray, mask: np.ndarray) -> None:
    import tifffile
    atomic_write(paths[0], lambda tmp: tifffile.imwrite(tmp, map16))
    atomic_write(paths[1], lambda tmp: Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(tmp, 'PNG'))


def read_pair(paths: Tuple[str, str]) -> Tuple[np.ndarray, np.ndarray]:
    """(float16 map, bool mask) of a finished pair."""
    import tifffile
    with Image.open(paths[1]) as mask:
        return tifffile.imread(paths[0]), np.asarray(mask) > 0


def finished(paths: Tuple[str, str]) -> bool:
    return all(os.path.isfile(p) for p in paths)
