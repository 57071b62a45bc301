"""A small seeded MVTec-layout class for the offline demo and the tests.

Every image is one woven texture (three sinusoidal gratings with per-image phases, a
little brightness jitter and pixel noise, mapped to a two-colour palette). Defective
test images carry a drawn defect, and its mask is written in the MVTec layout:

* ``scratch``: a thin bright line of random length and angle;
* ``stain``: a dark filled ellipse blended into the texture.

Nothing is downloaded: the same seed writes the same files on every machine.
"""
import json
import os
import shutil
from typing import Dict, Optional

import numpy as np
from PIL import Image, ImageDraw

from utils.errors import CflowError

DEMO_CLASS = 'textile'
# The demo class, and seeded stand-ins named after the MVTec AD classes (the same kind of
# woven texture with other phases and defects: not the real objects), so that the
# reproduce runner and its report can be exercised offline on a table's class names.
DEMO_CLASSES = (DEMO_CLASS, 'bottle', 'cable', 'capsule', 'carpet', 'grid', 'hazelnut', 'leather', 'metal_nut',
                'pill', 'screw', 'tile', 'toothbrush', 'transistor', 'wood', 'zipper')
DEFECT_TYPES = ('scratch', 'stain')
PALETTE = (np.array([92, 64, 42], dtype=np.float64), np.array([214, 188, 150], dtype=np.float64))


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size x 3 float image of the class's texture, values 0..255."""
    y, x = np.mgrid[0:size, 0:size] / size
    weave = np.zeros((size, size))
    for freq, angle in ((9.0, 0.0), (9.0, np.pi / 2), (23.0, np.pi / 4)):
        phase = rng.uniform(0, 2 * np.pi)
        weave += np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    level = (weave - weave.min()) / (weave.max() - weave.min())
    level = np.clip(level * rng.uniform(0.9, 1.1) + rng.normal(0, 0.04, level.shape), 0, 1)
    return PALETTE[0] + level[..., None] * (PALETTE[1] - PALETTE[0])


def _draw_defect(rng: np.random.Generator, image: np.ndarray, defect: str):
    """Draw one defect on ``image`` (in place) and return its 0/255 mask."""
    size = image.shape[0]
    mask = Image.new('L', (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if defect == 'scratch':
        cx, cy = rng.uniform(0.25, 0.75, 2) * size
        length, angle = rng.uniform(0.2, 0.45) * size, rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=max(3, size // 40))
        colour, alpha = np.array([250.0, 250.0, 235.0]), 0.9
    else:
        cx, cy = rng.uniform(0.25, 0.75, 2) * size
        rx, ry = rng.uniform(0.05, 0.12, 2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        colour, alpha = np.array([40.0, 30.0, 60.0]), 0.75
    m = np.asarray(mask) > 0
    image[m] = (1 - alpha) * image[m] + alpha * colour
    return np.where(m, 255, 0).astype(np.uint8)


def _save(array: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8)).save(path)


def demo_data_seed(class_name: str) -> int:
    """The data seed of a demo class: fixed by its name, never by a run's --seed (runs of one
    class share one data set, and parallel runs never rewrite each other's files)."""
    return DEMO_CLASSES.index(class_name) if class_name in DEMO_CLASSES else 0


def start_class(class_dir: str, settings: dict) -> bool:
    """Whether a generated class must be written: False when a finished one with the same ``settings`` is
    there; else the folder is made empty (only a folder a generator started, marked ``.synthetic``, is ever
    removed). ``finish_class`` marks it finished."""
    marker = os.path.join(class_dir, '.complete.json')
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == settings:
                return False
    if os.path.isdir(class_dir):
        if not os.path.isfile(os.path.join(class_dir, '.synthetic')):
            raise CflowError(f'{class_dir} exists and was not made by the data generator: '
                             f'pass another --data-path for the generated class')
        shutil.rmtree(class_dir)
    os.makedirs(class_dir)
    open(os.path.join(class_dir, '.synthetic'), 'w').close()
    return True


def finish_class(class_dir: str, settings: dict) -> None:
    with open(os.path.join(class_dir, '.complete.json'), 'w') as f:
        json.dump(settings, f)


def make_demo_class(root: str, class_name: str = DEMO_CLASS, seed: Optional[int] = None, image_size: int = 192,
                    n_train: int = 64, n_test_good: int = 16, n_test_defect: int = 12) -> str:
    """Write the demo class under ``root/class_name`` unless the same one is already there.

    A marker file records the settings; a folder without it (an interrupted run) or with
    other settings is written anew. Returns the class folder.
    """
    seed = demo_data_seed(class_name) if seed is None else seed
    settings: Dict = dict(seed=seed, image_size=image_size, n_train=n_train,
                          n_test_good=n_test_good, n_test_defect=n_test_defect, version=1)
    class_dir = os.path.join(root, class_name)
    if not start_class(class_dir, settings):
        return class_dir
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _save(_texture(rng, image_size), os.path.join(class_dir, 'train', 'good', f'{i:03d}.png'))
    for i in range(n_test_good):
        _save(_texture(rng, image_size), os.path.join(class_dir, 'test', 'good', f'{i:03d}.png'))
    for defect in DEFECT_TYPES:
        for i in range(n_test_defect):
            image = _texture(rng, image_size)
            mask = _draw_defect(rng, image, defect)
            _save(image, os.path.join(class_dir, 'test', defect, f'{i:03d}.png'))
            os.makedirs(os.path.join(class_dir, 'ground_truth', defect), exist_ok=True)
            Image.fromarray(mask).save(os.path.join(class_dir, 'ground_truth', defect, f'{i:03d}_mask.png'))
    finish_class(class_dir, settings)
    return class_dir


def _write_video(path: str, frames) -> None:
    import av  # only the STC layout needs PyAV
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, 'w') as container:
        stream = container.add_stream('mpeg4', rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = 'yuv420p'
        for frame in frames:
            image = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_stc_layout(root: str, scene: str = '01', seed: int = 0, image_size: int = 96, n_videos: int = 2,
                    frames_per_video: int = 10, n_clips: int = 2, frames_per_clip: int = 8) -> str:
    """A tiny ShanghaiTech Campus layout: training videos, test frames, npy labels and masks.

    In every test clip the second half of the frames carries a stain (label 1, its
    pixel mask set); the first half is normal (label 0, empty mask).
    """
    rng = np.random.default_rng(seed)
    for v in range(n_videos):
        frames = [_texture(rng, image_size) for _ in range(frames_per_video)]
        _write_video(os.path.join(root, 'training', 'videos', f'{scene}_{v + 1:03d}.avi'), frames)
    for k in range(n_clips):
        clip = f'{scene}_{k + 1:04d}'
        labels = np.zeros(frames_per_clip, dtype=np.uint8)
        masks = np.zeros((frames_per_clip, image_size, image_size), dtype=np.uint8)
        for t in range(frames_per_clip):
            image = _texture(rng, image_size)
            if t >= frames_per_clip // 2:
                labels[t] = 1
                masks[t] = _draw_defect(rng, image, 'stain') // 255
            _save(image, os.path.join(root, 'testing', 'frames', clip, f'{t:03d}.jpg'))
        for folder, array in (('test_frame_mask', labels), ('test_pixel_mask', masks)):
            os.makedirs(os.path.join(root, 'testing', folder), exist_ok=True)
            np.save(os.path.join(root, 'testing', folder, f'{clip}.npy'), array)
    return root


def _picture(rng: np.random.Generator, width: int, height: int, defect: Optional[str] = None):
    """(width x height x 3 texture image, its 0/255 defect mask or None): the demo's texture, cropped."""
    image = _texture(rng, max(width, height))[:height, :width].copy()
    if defect is None:
        return image, None
    square = np.zeros((max(width, height),) * 2 + (3,))
    square[:height, :width] = image
    mask = _draw_defect(rng, square, defect)[:height, :width]
    if not mask.any():  # the defect fell outside the crop: draw again
        return _picture(rng, width, height, defect)
    return square[:height, :width], mask


def make_visa_layout(root: str, objects=('candle',), seed: int = 0, width: int = 120, height: int = 96,
                     n_train: int = 32, n_test_good: int = 8, n_test_defect: int = 8) -> str:
    """A small VisA download (``custom_datasets/visa.py``): JPEG images, masks with defect value 1 (any
    non-zero value counts), ``split_csv/1cls.csv``, and one image per object that the split file does not
    list (it must not be read)."""
    rng = np.random.default_rng(seed)
    rows = []
    for obj in objects:
        images, masks = os.path.join(obj, 'Data', 'Images'), os.path.join(obj, 'Data', 'Masks', 'Anomaly')
        for i in range(n_train + n_test_good + 1):
            name = os.path.join(images, 'Normal', f'{i:04d}.JPG')
            _save_jpeg(_picture(rng, width, height)[0], os.path.join(root, name))
            if i < n_train + n_test_good:  # the last one is left out of the split file
                rows.append((obj, 'train' if i < n_train else 'test', 'normal', name, ''))
        for i in range(n_test_defect):
            image, mask = _picture(rng, width, height, DEFECT_TYPES[i % 2])
            name, mask_name = os.path.join(images, 'Anomaly', f'{i:03d}.JPG'), os.path.join(masks, f'{i:03d}.png')
            _save_jpeg(image, os.path.join(root, name))
            os.makedirs(os.path.join(root, masks), exist_ok=True)
            Image.fromarray((mask > 0).astype(np.uint8)).save(os.path.join(root, mask_name))
            rows.append((obj, 'test', 'anomaly', name, mask_name))
    os.makedirs(os.path.join(root, 'split_csv'), exist_ok=True)
    with open(os.path.join(root, 'split_csv', '1cls.csv'), 'w') as f:
        f.write('object,split,label,image,mask\n' + ''.join(','.join(r) + '\n' for r in rows))
    return root


def _save_jpeg(array: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8)).save(path, quality=95)


def make_mvtec_ad2_layout(root: str, obj: str = 'can', seed: int = 0, width: int = 144, height: int = 112,
                          n_train: int = 32, n_validation: int = 12, n_test_good: int = 8, n_test_defect: int = 8,
                          n_private: int = 4) -> str:
    """A small MVTec AD 2 object (``custom_datasets/mvtec_ad2.py``): non-square PNGs named as the benchmark
    names them (``000_regular.png``), masks 0/255, and unlabelled test_private and test_private_mixed."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, obj)
    for split, count in (('train/good', n_train), ('validation/good', n_validation),
                         ('test_public/good', n_test_good)):
        for i in range(count):
            _save(_picture(rng, width, height)[0], os.path.join(folder, split, f'{i:03d}_regular.png'))
    for i in range(n_test_defect):
        image, mask = _picture(rng, width, height, DEFECT_TYPES[i % 2])
        _save(image, os.path.join(folder, 'test_public', 'bad', f'{i:03d}_regular.png'))
        os.makedirs(os.path.join(folder, 'test_public', 'ground_truth', 'bad'), exist_ok=True)
        Image.fromarray(mask).save(os.path.join(folder, 'test_public', 'ground_truth', 'bad', f'{i:03d}_regular_mask.png'))
    for split in ('test_private', 'test_private_mixed'):
        for i in range(n_private):
            defect = DEFECT_TYPES[i % 2] if i % 2 else None
            _save(_picture(rng, width, height, defect)[0], os.path.join(folder, split, f'{i:03d}_regular.png'))
    return root
