"""VisA (Zou et al., ECCV 2022), read as it unpacks, with no conversion step:

    <root>/split_csv/1cls.csv                         object,split,label,image,mask (paths relative to <root>)
    <root>/<object>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<object>/Data/Masks/Anomaly/*.png          any non-zero value is a defect pixel

The split file alone decides train and test (``1cls``: the one-class split the benchmark reports);
images it does not list are not read.
"""
import csv
import os
from typing import List, Optional, Tuple

from custom_datasets.common import LabelledImages, check_mask_sizes, check_readable, require_dir
from utils.errors import CflowError

VISA_CLASS_NAMES = ('candle', 'capsules', 'cashew', 'chewinggum', 'fryum', 'macaroni1', 'macaroni2', 'pcb1', 'pcb2',
                    'pcb3', 'pcb4', 'pipe_fryum')
SPLIT_FILE = os.path.join('split_csv', '1cls.csv')
COLUMNS = ('object', 'split', 'label', 'image', 'mask')
LABELS = {'normal': 0, 'anomaly': 1}


def split_rows(root: str) -> List[dict]:
    """The rows of the split file, its columns checked."""
    require_dir(root, 'VisA folder', 'download VisA and pass --data-path to the folder holding split_csv/ '
                'and candle/, capsules/, ... (default ./data/VisA)')
    path = os.path.join(root, SPLIT_FILE)
    if not os.path.isfile(path):
        raise CflowError(f'VisA split file {path} is missing: --data-path must be the unpacked VisA folder, which '
                         f'holds {SPLIT_FILE} (the one-class split) beside the object folders')
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CflowError(f'{path} has no column {", ".join(missing)}: expected the header '
                             f'{",".join(COLUMNS)} of VisA\'s split_csv/1cls.csv')
        return list(reader)


def row_entry(root: str, row: dict, line: int) -> Tuple[str, int, Optional[str]]:
    """(image path, label, mask path or None) of one row, every named file checked."""
    where = f'{os.path.join(root, SPLIT_FILE)} line {line}'
    label = LABELS.get(row['label'].strip().lower())
    if label is None:
        raise CflowError(f'{where}: label {row["label"]!r} is neither normal nor anomaly')
    image = os.path.join(root, row['image'].strip())
    mask = os.path.join(root, row['mask'].strip()) if label and row['mask'].strip() else None
    if not os.path.isfile(image):
        has_mask = f' (its mask {mask} is there)' if mask and os.path.isfile(mask) else ''
        raise CflowError(f'{where} names image {image}, which does not exist{has_mask}: unpack the whole VisA '
                         f'archive into --data-path')
    if label and mask is None:
        raise CflowError(f'{where}: anomalous image {image} names no mask')
    if mask is not None and not os.path.isfile(mask):
        raise CflowError(f'{where} names mask {mask} of {image}, which does not exist: unpack the whole VisA archive')
    return image, label, mask


def visa_split(root: str, class_name: str, train: bool) -> Tuple[List[str], List[int], List[Optional[str]]]:
    """Image paths, labels and mask paths of one object's train or test split, as the split file lists them."""
    if class_name not in VISA_CLASS_NAMES:
        raise CflowError(f'unknown VisA object {class_name!r}: choose one of {", ".join(VISA_CLASS_NAMES)}')
    split = 'train' if train else 'test'
    entries = [row_entry(root, row, line) for line, row in enumerate(split_rows(root), start=2)
               if row['object'].strip() == class_name and row['split'].strip() == split]
    if not entries:
        raise CflowError(f'{os.path.join(root, SPLIT_FILE)} lists no {split} image of {class_name}')
    images, labels, masks = (list(column) for column in zip(*entries))
    if train and any(labels):
        raise CflowError(f'{os.path.join(root, SPLIT_FILE)} lists anomalous {class_name} images for training; '
                         f'training uses normal images only')
    check_mask_sizes(images, check_readable(images), masks)
    return images, labels, masks


def visa_dataset(root: str, class_name: str, input_size: int, train: bool, **norm) -> LabelledImages:
    images, labels, masks = visa_split(root, class_name, train)
    return LabelledImages(images, labels, masks, input_size, train, **norm)
