"""MVTec AD: 15 classes in the MVTec layout (see ``folder.py``), PNG images only."""
from custom_datasets.common import LabelledImages, require_dir
from custom_datasets.folder import folder_dataset
from utils.errors import CflowError

MVTEC_CLASS_NAMES = ('bottle', 'cable', 'capsule', 'carpet', 'grid', 'hazelnut', 'leather', 'metal_nut',
                     'pill', 'screw', 'tile', 'toothbrush', 'transistor', 'wood', 'zipper')


def mvtec_dataset(root: str, class_name: str, input_size: int, train: bool, **norm) -> LabelledImages:
    """The train or test split of one class; grey classes come out as 3 equal channels."""
    if class_name not in MVTEC_CLASS_NAMES:
        raise CflowError(f'unknown MVTec AD class {class_name!r}: choose one of {", ".join(MVTEC_CLASS_NAMES)}')
    require_dir(root, 'MVTec AD folder', 'download MVTec AD and pass --data-path to the folder holding '
                'bottle/, cable/, ... (default ./data/MVTec-AD)')
    return folder_dataset(root, class_name, input_size, train, extensions=('.png',), **norm)
