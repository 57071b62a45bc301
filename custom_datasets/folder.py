"""Any class folder in the MVTec AD layout.

    <root>/<class>/train/good/*.png|jpg|...          defect-free training images
    <root>/<class>/test/good/*                       defect-free test images
    <root>/<class>/test/<defect type>/<name>.<ext>   defective test images
    <root>/<class>/ground_truth/<defect type>/<name>_mask.png
"""
import os
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np

from custom_datasets.common import (IMAGE_EXTENSIONS, LabelledImages, check_mask_sizes, check_readable, list_images,
                                    list_images_recursive, require_dir)
from utils.errors import CflowError


def list_split(class_dir: str, train: bool,
               extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Tuple[List[str], List[int], List[Optional[str]]]:
    """Image paths, labels and mask paths of the train or test split of a class folder."""
    phase = 'train' if train else 'test'
    phase_dir = os.path.join(class_dir, phase)
    require_dir(phase_dir, f'{phase} folder', f'a class folder needs {phase}/good/ (MVTec AD layout)')
    images, labels, masks = [], [], []
    for defect in sorted(os.listdir(phase_dir)):
        defect_dir = os.path.join(phase_dir, defect)
        if not os.path.isdir(defect_dir) or defect.startswith('.'):
            continue
        paths = list_images(defect_dir, extensions)
        nested = len(list_images_recursive(defect_dir, extensions)) - len(paths)
        if nested:
            raise CflowError(f'{defect_dir} has {nested} images in subfolders, which are not read: '
                             f'move them into {defect_dir}/ itself')
        if not paths:
            warnings.warn(f'{defect_dir} holds no images ({"/".join(extensions)}): skipped')
            continue
        images += paths
        if defect == 'good':
            labels += [0] * len(paths)
            masks += [None] * len(paths)
            continue
        labels += [1] * len(paths)
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            mask = os.path.join(class_dir, 'ground_truth', defect, f'{name}_mask.png')
            if not os.path.isfile(mask):
                raise CflowError(f'defect image {path} has no mask: expected {mask}')
            masks.append(mask)
    if not images:
        raise CflowError(f'no images ({"/".join(extensions)}) under {phase_dir}')
    if train and any(labels):
        raise CflowError(f'{phase_dir} holds defect folders; training uses defect-free images only (train/good/)')
    check_mask_sizes(images, check_readable(images), masks)
    return images, labels, masks


def class_folder(root: str, class_name: str) -> str:
    require_dir(root, 'data folder', 'pass --data-path to the folder holding the class folders')
    class_dir = os.path.join(root, class_name)
    if not os.path.isdir(class_dir):
        found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise CflowError(f'class folder {class_dir} does not exist; {root} holds: '
                         f'{", ".join(found) if found else "no folders"}')
    return class_dir


def folder_dataset(root: str, class_name: str, input_size: int, train: bool,
                   extensions: Sequence[str] = IMAGE_EXTENSIONS, **norm) -> LabelledImages:
    return LabelledImages(*list_split(class_folder(root, class_name), train, extensions), input_size=input_size,
                          train=train, **norm)


# ----------------------------------------------------------------------------------
# A class with good images only: train on most, calibrate on a seeded held-out share

HOLD_OUT_SHARE = 0.2   # of the good training images, held out for calibration
MIN_CALIBRATION = 8    # fewer calibration images give a threshold that means little
MIN_TRAINING = 8


def has_labelled_test(class_dir: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether test/ holds at least one defect folder with images (what AUROC and AUPRO need)."""
    test_dir = os.path.join(class_dir, 'test')
    if not os.path.isdir(test_dir):
        return False
    return any(d != 'good' and not d.startswith('.') and os.path.isdir(os.path.join(test_dir, d))
               and list_images(os.path.join(test_dir, d), extensions) for d in os.listdir(test_dir))


def hold_out(paths: List[str], seed: int, share: float = HOLD_OUT_SHARE) -> Tuple[List[str], List[str]]:
    """(training paths, held-out calibration paths): a seeded share, at least ``MIN_CALIBRATION``."""
    n = len(paths)
    k = max(MIN_CALIBRATION, int(round(share * n)))
    if n - k < MIN_TRAINING:
        raise CflowError(f'{n} good images are too few to train and calibrate: {MIN_CALIBRATION} or more are held '
                         f'out for calibration and at least {MIN_TRAINING} must remain for training; add images '
                         f'({MIN_CALIBRATION + MIN_TRAINING} or more in all) or pass --calibration-path DIR')
    chosen = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
    return ([p for i, p in enumerate(paths) if i not in chosen], [p for i, p in enumerate(paths) if i in chosen])


def good_only_training_set(root: str, class_name: str, input_size: int, seed: int, own_calibration: bool,
                           extensions: Sequence[str] = IMAGE_EXTENSIONS, **norm) -> LabelledImages:
    """train/good/ of a class without labelled defects. Unless ``own_calibration`` (--calibration-path),
    ``.calibration_images`` lists the images to calibrate on, never trained on: test/good/ when it
    holds ``MIN_CALIBRATION`` or more, else a seeded held-out share of train/good/ (``.held_out``)."""
    class_dir = class_folder(root, class_name)
    images, labels, masks = list_split(class_dir, True, extensions)
    test_good = os.path.join(class_dir, 'test', 'good')
    spare = list_images(test_good, extensions) if os.path.isdir(test_good) else []
    held = []
    if not own_calibration and len(spare) < MIN_CALIBRATION:
        images, held = hold_out(images, seed)
    dataset = LabelledImages(images, [0] * len(images), [None] * len(images), input_size=input_size, train=True,
                             **norm)
    dataset.held_out = held
    dataset.calibration_images = [] if own_calibration else (held or spare)
    dataset.calibration_source = (f'good images held out from training (seed {seed})' if held else
                                  f'the good test images of {test_good}')
    return dataset
