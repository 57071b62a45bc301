"""Datasets by ``--dataset`` name: each gives a train and a test split of one class."""
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from torch.utils.data import Dataset

from utils.errors import CflowError


@dataclass(frozen=True)
class DataOptions:
    """Which class to read and how its images are fed (``--dataset``, ``--data-path``, ``-cl``, the
    encoder's input: ``custom_models.preprocessing``)."""
    dataset: str
    data_path: str
    class_name: str
    input_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    need_train: bool = True             # norm-train (norm-test reads the test split only)
    seed: int = 0                       # the held-out calibration share of a good-only class
    calibration_path: Optional[str] = None  # --calibration-path: a good-only class then holds nothing out
    action: str = 'norm-train'          # for the messages


def build_datasets(options: DataOptions) -> Tuple[Optional[Dataset], Dataset]:
    """(train set or None for norm-test, test set). A folder class without labelled defects gives
    (train set, None): good images only (``.calibration_images`` lists the images to calibrate on when
    there is no --calibration-path)."""
    o = options
    if o.class_name == 'none' and o.dataset != 'mtd':
        from custom_datasets.mvtec import MVTEC_CLASS_NAMES
        from custom_datasets.mvtec_ad2 import MVTEC_AD2_CLASS_NAMES
        from custom_datasets.visa import VISA_CLASS_NAMES
        choices = {'mvtec': ', '.join(MVTEC_CLASS_NAMES), 'stc': '01 .. 12', 'folder': 'a folder under --data-path',
                   'visa': ', '.join(VISA_CLASS_NAMES), 'mvtec_ad2': ', '.join(MVTEC_AD2_CLASS_NAMES)}
        raise CflowError(f'--dataset {o.dataset} needs -cl/--class-name NAME ({choices[o.dataset]}); '
                         f'for a first try without data, use --dataset demo')
    norm = dict(mean=o.mean, std=o.std)
    if o.dataset == 'mvtec':
        from custom_datasets.mvtec import mvtec_dataset

        def make(train):
            return mvtec_dataset(o.data_path, o.class_name, o.input_size, train, **norm)
    elif o.dataset == 'mtd':
        from custom_datasets.mtd import mtd_dataset

        def make(train):
            return mtd_dataset(o.data_path, o.input_size, train, **norm)
    elif o.dataset == 'visa':
        from custom_datasets.visa import visa_dataset

        def make(train):
            return visa_dataset(o.data_path, o.class_name, o.input_size, train, **norm)
    elif o.dataset == 'mvtec_ad2':
        from custom_datasets.mvtec_ad2 import mvtec_ad2_dataset

        def make(train):
            return mvtec_ad2_dataset(o.data_path, o.class_name, o.input_size, train, **norm)
    elif o.dataset == 'stc':
        from custom_datasets.stc import stc_dataset

        def make(train):
            return stc_dataset(o.data_path, o.class_name, o.input_size, train, **norm)
    else:
        from custom_datasets.folder import class_folder, folder_dataset, has_labelled_test
        if o.dataset == 'demo':
            from custom_datasets.synthetic import make_demo_class
            make_demo_class(o.data_path, o.class_name)
        if not has_labelled_test(class_folder(o.data_path, o.class_name)):
            return good_only_datasets(o)

        def make(train):
            return folder_dataset(o.data_path, o.class_name, o.input_size, train, **norm)
    test = make(False)
    return (make(True) if o.need_train else None), test


def good_only_datasets(o: DataOptions) -> Tuple[Dataset, None]:
    """A class without labelled defects: train on its good images, calibrate, no labelled metrics."""
    from custom_datasets.folder import class_folder, good_only_training_set
    class_dir = class_folder(o.data_path, o.class_name)
    if not o.need_train:
        raise CflowError(f'{class_dir} has no defective test images (test/<defect>/ with masks), which '
                         f'{o.action} needs for its metrics: score new images with --action-type '
                         f'predict instead')
    train = good_only_training_set(o.data_path, o.class_name, o.input_size, o.seed,
                                   own_calibration=bool(o.calibration_path), mean=o.mean, std=o.std)
    if o.calibration_path:
        source = f'; calibrating on {o.calibration_path}'
    elif train.held_out:
        source = f'; {len(train.held_out)} held out (seed {o.seed}) to calibrate on'
    else:
        source = f'; calibrating on the {len(train.calibration_images)} images of test/good/'
    print(f'Notice: {os.path.join(class_dir, "test")} has no defective images, so this run trains on '
          f'{len(train)} good images{source} and reports no AUROC/AUPRO (they need labelled defects)')
    return train, None
