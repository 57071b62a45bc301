"""MVTec AD 2 (Heckler-Kram et al., 2025), read as it unpacks:

    <root>/<object>/train/good/*.png                   training images (defect-free)
    <root>/<object>/validation/good/*.png              defect-free images to choose thresholds on
    <root>/<object>/test_public/{good,bad}/*.png       the labelled public test set
    <root>/<object>/test_public/ground_truth/bad/<stem>_mask.png   255 = anomalous
    <root>/<object>/test_private/*.png, test_private_mixed/*.png   unlabelled: scored by the benchmark's server

The benchmark's rule: thresholds are chosen on ``validation/good`` only, never on a test image, which is
what the calibration does (norm-train calibrates there).
"""
import os
from typing import List, Optional, Tuple

from custom_datasets.common import (LabelledImages, check_mask_sizes, check_readable, is_image_name, list_images,
                                    require_dir)
from utils.errors import CflowError

MVTEC_AD2_CLASS_NAMES = ('can', 'fabric', 'fruit_jelly', 'rice', 'sheet_metal', 'vial', 'wallplugs', 'walnuts')
PRIVATE_SPLITS = ('test_private', 'test_private_mixed')
CALIBRATION_SOURCE = 'validation/good (the benchmark\'s rule: no test image chooses a threshold)'


def object_folder(root: str, class_name: str) -> str:
    if class_name not in MVTEC_AD2_CLASS_NAMES:
        raise CflowError(f'unknown MVTec AD 2 object {class_name!r}: choose one of {", ".join(MVTEC_AD2_CLASS_NAMES)}')
    require_dir(root, 'MVTec AD 2 folder', 'download MVTec AD 2 and pass --data-path to the folder holding can/, '
                'fabric/, ... (default ./data/mvtec_ad_2)')
    folder = os.path.join(root, class_name)
    require_dir(folder, 'MVTec AD 2 object folder', f'unpack {class_name} into --data-path')
    return folder


def good_images(root: str, class_name: str, split: str) -> List[str]:
    """The images of ``split``/good (train or validation), checked readable."""
    folder = os.path.join(object_folder(root, class_name), split, 'good')
    require_dir(folder, f'{split} folder', f'MVTec AD 2 objects hold {split}/good/')
    paths = list_images(folder, ('.png',))
    if not paths:
        raise CflowError(f'{folder} holds no .png image')
    check_readable(paths)
    return paths


def public_test(root: str, class_name: str) -> Tuple[List[str], List[int], List[Optional[str]]]:
    """Image paths, labels and mask paths of test_public; a mask without its image is an error."""
    test = os.path.join(object_folder(root, class_name), 'test_public')
    require_dir(test, 'test_public folder', 'MVTec AD 2 objects hold test_public/{good,bad}/')
    good, bad = (list_images(os.path.join(test, kind), ('.png',)) for kind in ('good', 'bad'))
    truth = os.path.join(test, 'ground_truth', 'bad')
    masks = [os.path.join(truth, os.path.splitext(os.path.basename(p))[0] + '_mask.png') for p in bad]
    for image, mask in zip(bad, masks):
        if not os.path.isfile(mask):
            raise CflowError(f'defect image {image} has no mask: expected {mask}')
    if os.path.isdir(truth):
        stems = {os.path.splitext(os.path.basename(p))[0] for p in bad}
        for name in sorted(os.listdir(truth)):
            if is_image_name(name) and name[:-len('_mask.png')] not in stems:
                raise CflowError(f'mask {os.path.join(truth, name)} has no image: expected '
                                 f'{os.path.join(test, "bad", name.replace("_mask.png", ".png"))}')
    if not good or not bad:
        raise CflowError(f'{test} needs good/ and bad/ images for the metrics; it has {len(good)} and {len(bad)}')
    images = good + bad
    check_mask_sizes(images, check_readable(images), [None] * len(good) + masks)
    return images, [0] * len(good) + [1] * len(bad), [None] * len(good) + masks


def private_images(root: str, class_name: str, split: str) -> List[str]:
    """The unlabelled images of test_private or test_private_mixed."""
    folder = os.path.join(object_folder(root, class_name), split)
    require_dir(folder, f'{split} folder', f'unpack the whole {class_name} archive (it holds {split}/)')
    return list_images(folder, ('.png',))


def mvtec_ad2_dataset(root: str, class_name: str, input_size: int, train: bool, **norm) -> LabelledImages:
    """train/good (with ``calibration_images``: validation/good), or test_public."""
    if train:
        paths = good_images(root, class_name, 'train')
        dataset = LabelledImages(paths, [0] * len(paths), [None] * len(paths), input_size, True, **norm)
        dataset.calibration_images = good_images(root, class_name, 'validation')
        dataset.calibration_source = CALIBRATION_SOURCE
        return dataset
    images, labels, masks = public_test(root, class_name)
    return LabelledImages(images, labels, masks, input_size, False, **norm)
