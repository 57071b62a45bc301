"""Folder and MVTec datasets: any image format and mode, masks, transforms."""
import numpy as np
import pytest
import torch
from PIL import Image

from custom_datasets.common import IMAGENET_MEAN, IMAGENET_STD, LabelledImages
from custom_datasets.folder import folder_dataset, list_split
from custom_datasets.mvtec import mvtec_dataset

GREY = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))


def write_class(root, name='part'):
    base = root / name
    for sub in ('train/good', 'test/good', 'test/dent', 'ground_truth/dent'):
        (base / sub).mkdir(parents=True)
    rgb = np.stack([GREY, 255 - GREY, np.full_like(GREY, 90)], -1)
    Image.fromarray(rgb).save(base / 'train/good/a.jpg')
    Image.fromarray(GREY).save(base / 'train/good/b.BMP')                       # grey, upper-case extension
    Image.fromarray(GREY.astype(np.uint16) * 257).save(base / 'train/good/c.png')  # 16-bit grey
    Image.fromarray(rgb).convert('RGBA').save(base / 'train/good/d.tif')
    Image.fromarray(rgb).convert('P').save(base / 'test/good/e.png')
    (base / 'train/good/notes.txt').write_text('not an image')
    Image.fromarray(GREY).save(base / 'test/dent/f.jpeg')
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 10:20] = 1  # a mask stored as 0/1, not 0/255
    Image.fromarray(mask).save(base / 'ground_truth/dent/f_mask.png')
    return base


def test_test_split_lists_defect_folders_then_good_with_labels(tmp_path):
    write_class(tmp_path)
    test = folder_dataset(str(tmp_path), 'part', 32, train=False)
    assert [p.rsplit('/', 1)[1] for p in test.x] == ['f.jpeg', 'e.png']  # folders sorted: dent, good
    assert test.y == [1, 0] and test.mask[0].endswith('ground_truth/dent/f_mask.png') and test.mask[1] is None
    assert test[1][0].shape == (3, 32, 32)  # the palette image comes out RGB


def test_train_split_reads_every_format_and_mode(tmp_path):
    base = write_class(tmp_path)
    images, labels, masks = list_split(str(base), train=True)
    assert [p.rsplit('/', 1)[1] for p in images] == ['a.jpg', 'b.BMP', 'c.png', 'd.tif']  # notes.txt skipped
    assert labels == [0] * 4 and masks == [None] * 4
    # loaded without the training rotation, so pixel values can be compared
    ds = LabelledImages(images, labels, masks, input_size=32, train=False)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    loaded = [ds[i][0] * std + mean for i in range(4)]
    assert all(image.shape == (3, 32, 32) for image in loaded)
    grey, grey16 = loaded[1], loaded[2]
    assert torch.allclose(grey[0], grey[1], atol=1e-5) and torch.allclose(grey[1], grey[2], atol=1e-5)
    assert torch.allclose(grey, grey16, atol=2 / 255)  # 16-bit scaled down, not clipped to white


def test_masks_any_non_zero_pixel_is_a_defect(tmp_path):
    write_class(tmp_path)
    test = folder_dataset(str(tmp_path), 'part', 40, train=False)
    _, label, mask = test[0]
    assert label == 1 and set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.sum() == pytest.approx(10 * 10 * (40 / 30), rel=0.15)  # resized to 40x40 on both sides


def test_mvtec_grey_class_gives_three_equal_channels(tmp_path):
    write_class(tmp_path, 'screw')
    ds = mvtec_dataset(str(tmp_path), 'screw', 32, train=True)
    assert [p.rsplit('/', 1)[1] for p in ds.x] == ['c.png']  # MVTec is PNG only
    image = ds[0][0]
    assert torch.allclose(image[0] * 0.229 + 0.485, image[1] * 0.224 + 0.456, atol=1e-5)
