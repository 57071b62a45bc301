"""Datasets by ``--dataset`` name: each gives a train and a test split of one class."""
from typing import Optional, Tuple

from torch.utils.data import Dataset

from utils.errors import CflowError


def build_datasets(c) -> Tuple[Optional[Dataset], Dataset]:
    """(train set or None for norm-test, test set) for the flags in ``c``. A folder class without
    labelled defects gives (train set, None): good images only (``.calibration_images`` lists
    the images to calibrate on when there is no --calibration-path)."""
    if c.class_name == 'none':
        from custom_datasets.mvtec import MVTEC_CLASS_NAMES
        choices = {'mvtec': ', '.join(MVTEC_CLASS_NAMES), 'stc': '01 .. 12', 'folder': 'a folder under --data-path'}
        raise CflowError(f'--dataset {c.dataset} needs -cl/--class-name NAME ({choices[c.dataset]}); '
                         f'for a first try without data, use --dataset demo')
    norm = dict(mean=c.norm_mean, std=c.norm_std)
    need_train = c.action_type == 'norm-train'
    if c.dataset == 'mvtec':
        from custom_datasets.mvtec import mvtec_dataset

        def make(train):
            return mvtec_dataset(c.data_path, c.class_name, c.input_size, train, **norm)
    elif c.dataset == 'stc':
        from custom_datasets.stc import stc_dataset

        def make(train):
            return stc_dataset(c.data_path, c.class_name, c.input_size, train, **norm)
    else:
        import os
        from custom_datasets.folder import class_folder, folder_dataset, good_only_training_set, has_labelled_test
        if c.dataset == 'demo':
            from custom_datasets.synthetic import make_demo_class
            make_demo_class(c.data_path, c.class_name)
        class_dir = class_folder(c.data_path, c.class_name)
        if not has_labelled_test(class_dir):  # good images only: train, calibrate, no labelled metrics
            if not need_train:
                raise CflowError(f'{class_dir} has no defective test images (test/<defect>/ with masks), which '
                                 f'{c.action_type} needs for its metrics: score new images with --action-type '
                                 f'predict instead')
            train = good_only_training_set(c.data_path, c.class_name, c.input_size, c.seed,
                                           own_calibration=bool(c.calibration_path), **norm)
            if c.calibration_path:
                source = f'; calibrating on {c.calibration_path}'
            elif train.held_out:
                source = f'; {len(train.held_out)} held out (seed {c.seed}) to calibrate on'
            else:
                source = f'; calibrating on the {len(train.calibration_images)} images of test/good/'
            print(f'Notice: {os.path.join(class_dir, "test")} has no defective images, so this run trains on '
                  f'{len(train)} good images{source} and reports no AUROC/AUPRO (they need labelled defects)')
            return train, None

        def make(train):
            return folder_dataset(c.data_path, c.class_name, c.input_size, train, **norm)
    test = make(False)
    return (make(True) if need_train else None), test
