"""Datasets by ``--dataset`` name: each gives a train and a test split of one class."""
from typing import Optional, Tuple

from torch.utils.data import Dataset

from utils.errors import CflowError


def build_datasets(c) -> Tuple[Optional[Dataset], Dataset]:
    """(train set or None for norm-test, test set) for the flags in ``c``."""
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
            return mvtec_dataset(c.data_path, c.class_name, c.input_size, train)
    elif c.dataset == 'stc':
        from custom_datasets.stc import stc_dataset

        def make(train):
            return stc_dataset(c.data_path, c.class_name, c.input_size, train, **norm)
    else:
        from custom_datasets.folder import folder_dataset
        if c.dataset == 'demo':
            from custom_datasets.synthetic import make_demo_class
            make_demo_class(c.data_path, c.class_name)

        def make(train):
            return folder_dataset(c.data_path, c.class_name, c.input_size, train, **norm)
    test = make(False)
    return (make(True) if need_train else None), test
