"""Magnetic Tile Defects (Huang et al., 2018) as downloaded, with the training split of DifferNet's authors:

    <root>/MT_Free/Imgs/*.jpg                          defect-free tiles
    <root>/MT_{Blowhole,Break,Crack,Fray,Uneven}/Imgs/<stem>.jpg, <stem>.png (its mask)

The defect-free images named in ``mtd_train_filenames.txt`` (shipped by the authors with DifferNet) train;
every other image tests: the rest of MT_Free as good, every defect image as defective, with its mask.
"""
import os
from typing import List, Optional, Tuple

from custom_datasets.common import LabelledImages, check_mask_sizes, check_readable, require_dir
from utils.errors import CflowError

FREE = 'MT_Free'
DEFECTS = ('MT_Blowhole', 'MT_Break', 'MT_Crack', 'MT_Fray', 'MT_Uneven')
TRAIN_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mtd_train_filenames.txt')


def training_names() -> List[str]:
    with open(TRAIN_LIST) as f:
        return [line.strip() for line in f if line.strip()]


def jpgs(folder: str) -> List[str]:
    return sorted(n for n in os.listdir(folder) if n.lower().endswith('.jpg'))


def mtd_split(root: str, train: bool) -> Tuple[List[str], List[int], List[Optional[str]]]:
    require_dir(root, 'Magnetic Tile Defects folder', 'download the dataset and pass --data-path to the folder '
                'holding MT_Free/, MT_Blowhole/, ...')
    free = os.path.join(root, FREE, 'Imgs')
    require_dir(free, 'MT_Free/Imgs folder', '--data-path must be the unpacked Magnetic-tile-defect-datasets folder')
    on_disk, listed = set(jpgs(free)), training_names()
    missing = [n for n in listed if n not in on_disk]
    if missing:
        raise CflowError(f'{len(missing)} of the {len(listed)} training images of the authors\' split are not in '
                         f'{free} (e.g. {missing[0]}): use the complete download')
    if train:
        images = [os.path.join(free, n) for n in listed]
        check_readable(images)
        return images, [0] * len(images), [None] * len(images)
    chosen = set(listed)
    images = [os.path.join(free, n) for n in sorted(on_disk - chosen)]
    labels, masks = [0] * len(images), [None] * len(images)
    for defect in DEFECTS:
        folder = os.path.join(root, defect, 'Imgs')
        require_dir(folder, f'{defect}/Imgs folder', 'use the complete download (five defect folders and MT_Free)')
        for name in jpgs(folder):
            mask = os.path.join(folder, os.path.splitext(name)[0] + '.png')
            if not os.path.isfile(mask):
                raise CflowError(f'defect image {os.path.join(folder, name)} has no mask: expected {mask}')
            images.append(os.path.join(folder, name))
            labels.append(1)
            masks.append(mask)
    check_mask_sizes(images, check_readable(images), masks)
    return images, labels, masks


def mtd_dataset(root: str, input_size: int, train: bool, **norm) -> LabelledImages:
    images, labels, masks = mtd_split(root, train)
    return LabelledImages(images, labels, masks, input_size, train, **norm)
