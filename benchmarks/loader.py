"""The data loader from image files (decode + resize + normalise), by worker count: the dataset and
loader norm-test uses (``LabelledImages``, ``make_loader``)."""
import os
import tempfile

from benchmarks.rows import Row
from benchmarks.timing import Timer
from custom_datasets.common import LabelledImages, list_images
from custom_datasets.loaders import LoaderOptions, make_loader
from custom_datasets.synthetic import make_demo_class


def run(a):
    rows = []
    with tempfile.TemporaryDirectory() as root:
        make_demo_class(root, 'bench', image_size=a.loader_image_size, n_train=a.loader_images,
                        n_test_good=1, n_test_defect=1)
        files = list_images(os.path.join(root, 'bench', 'train', 'good'))
        dataset = LabelledImages(files, [0] * len(files), [None] * len(files), a.input_size, train=False)
        for workers in [int(w) for w in a.workers.split(',')]:
            loader = make_loader(dataset, False, LoaderOptions(batch_size=a.batch_size, workers=workers,
                                                                pin_memory=a.device.startswith('cuda')))
            with Timer() as t:
                for _ in loader:
                    pass
            rows.append(Row(f'loader, {workers} workers ({a.loader_image_size}px PNG -> {a.input_size})',
                            len(dataset) / t.seconds, 'img/s', data={'workers': workers}))
    return rows
