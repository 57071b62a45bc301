"""A seeded high-resolution class with defects of a few pixels: what tiling (``utils/tiling.py``) is for.

The demo's woven texture (``custom_datasets/synthetic.py``) at ``image_size`` pixels with its weave as fine
as the demo's per pixel, and two defects that a resize to 256 px all but removes:

* ``scratch``: a bright line 3 px wide and 30-90 px long, at any angle;
* ``spot``: a dark ellipse 5-9 px across.

MVTec layout (train/good, test/good, test/<defect>, ground_truth/<defect>/NNN_mask.png) plus
``calibration/good``: defect-free images not used for training (``--calibration-path``).
"""
import os

import numpy as np
from PIL import Image, ImageDraw

from custom_datasets.synthetic import PALETTE, _save, finish_class, start_class

HIGHRES_DEFECTS = ('scratch', 'spot')


def fine_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """size x size x 3 float image (0..255): the demo's weave at the demo's period in pixels (192 px images)."""
    y, x = np.mgrid[0:size, 0:size] / 192.0
    weave = np.zeros((size, size))
    for freq, angle in ((9.0, 0.0), (9.0, np.pi / 2), (23.0, np.pi / 4)):
        weave += np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    level = (weave - weave.min()) / (weave.max() - weave.min())
    level = np.clip(level * rng.uniform(0.9, 1.1) + rng.normal(0, 0.04, level.shape), 0, 1)
    return PALETTE[0] + level[..., None] * (PALETTE[1] - PALETTE[0])


def small_defect(rng: np.random.Generator, image: np.ndarray, defect: str) -> np.ndarray:
    """Draw one small defect on ``image`` (in place); its 0/255 mask."""
    size = image.shape[0]
    mask = Image.new('L', (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.05, 0.95, 2) * size
    if defect == 'scratch':
        length, angle = rng.uniform(30, 90), rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=3)
        colour, alpha = np.array([250.0, 250.0, 235.0]), 0.9
    else:
        rx, ry = rng.uniform(2.5, 4.5, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        colour, alpha = np.array([40.0, 30.0, 60.0]), 0.75
    m = np.asarray(mask) > 0
    image[m] = (1 - alpha) * image[m] + alpha * colour
    return np.where(m, 255, 0).astype(np.uint8)


def make_highres_class(root: str, class_name: str = 'fine_weave', seed: int = 0, image_size: int = 1024,
                       n_train: int = 32, n_calibration: int = 12, n_test_good: int = 12,
                       n_test_defect: int = 12) -> str:
    """Write the class under ``root/class_name`` unless the same one is there (a marker records the
    settings); returns the class folder."""
    settings = dict(seed=seed, image_size=image_size, n_train=n_train, n_calibration=n_calibration,
                    n_test_good=n_test_good, n_test_defect=n_test_defect, version=1)
    class_dir = os.path.join(root, class_name)
    if not start_class(class_dir, settings):
        return class_dir
    rng = np.random.default_rng(seed)
    for folder, n in (('train', n_train), ('calibration', n_calibration), ('test', n_test_good)):
        for i in range(n):
            _save(fine_texture(rng, image_size), os.path.join(class_dir, folder, 'good', f'{i:03d}.png'))
    for defect in HIGHRES_DEFECTS:
        os.makedirs(os.path.join(class_dir, 'ground_truth', defect), exist_ok=True)
        for i in range(n_test_defect):
            image = fine_texture(rng, image_size)
            mask = small_defect(rng, image, defect)
            _save(image, os.path.join(class_dir, 'test', defect, f'{i:03d}.png'))
            Image.fromarray(mask).save(os.path.join(class_dir, 'ground_truth', defect, f'{i:03d}_mask.png'))
    finish_class(class_dir, settings)
    return class_dir
