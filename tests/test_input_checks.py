"""Bad input stops with one line naming the fix: input sizes, images and masks, folders, flags."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from custom_datasets.folder import list_split
from custom_models.encoders import build_encoder
from main import main

from tests.test_errors import BASE, assert_one_line_error, folder_args, run_cli


def test_checkpoint_with_norm_train_is_refused(capsys, tmp_path):
    rc, err = run_cli(capsys, ['--dataset', 'demo', '--checkpoint', str(tmp_path / 'x.pt')] + BASE)
    assert_one_line_error(rc, err, '--checkpoint is for norm-test', 'drop --checkpoint')


def test_stc_normal_frames_get_an_empty_mask_whatever_the_file_holds(tmp_path):
    from custom_datasets.stc import stc_dataset
    from custom_datasets.synthetic import make_stc_layout
    root = make_stc_layout(str(tmp_path / 'stc'), frames_per_clip=4, n_clips=1)
    mask_path = os.path.join(root, 'testing', 'test_pixel_mask', '01_0001.npy')
    masks = np.load(mask_path)
    masks[0, 10:30, 10:30] = 1  # frame 0 is labelled normal, but its mask file has pixels
    np.save(mask_path, masks)
    test = stc_dataset(root, '01', 64, train=False)
    assert test.y == [0, 0, 1, 1]
    assert test[0][2].sum() == 0  # the published rule: normal frame -> all-zero mask
    assert test[3][2].sum() > 0   # defect frames keep their masks


@pytest.mark.parametrize('arch', ['resnet18', 'wide_resnet50_2'])
def test_too_small_input_names_the_smallest_that_works(capsys, arch):
    rc, err = run_cli(capsys, ['-enc', arch, '-inp', '24', '--no-cuda', '--encoder-weights', 'none'])
    assert_one_line_error(rc, err, f'-inp 24 is too small for {arch}', 'pass -inp ')
    smallest = int(err.split('pass -inp ')[1].split()[0])
    encoder = build_encoder(arch, 3, 'none')
    with torch.no_grad():  # checked with real convolutions: the suggestion works, one pixel less does not
        encoder(torch.zeros(1, 3, smallest, smallest))
        with pytest.raises(RuntimeError, match='[Pp]adding'):
            encoder(torch.zeros(1, 3, smallest - 1, smallest - 1))


def test_too_few_fibers_names_the_smallest_input(capsys, demo_copy):
    rc, err = run_cli(capsys, folder_args(demo_copy, '-bs', '4'))
    assert_one_line_error(rc, err, 'fewer than one fiber batch', 'at -bs 4, resnet18 needs -inp ')
    smallest = int(err.split('needs -inp ')[1].split()[0])
    from custom_models.encoders import tap_shapes
    assert min(4 * H * W for _, H, W in tap_shapes('resnet18', 3, smallest)) >= 256
    assert min(4 * H * W for _, H, W in tap_shapes('resnet18', 3, smallest - 1)) < 256


def test_image_over_the_decompression_bomb_limit(capsys, demo_copy, monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', Image.MAX_IMAGE_PIXELS)  # restored afterwards
    rc, err = run_cli(capsys, folder_args(demo_copy, '--max-image-pixels', '1000'))
    assert_one_line_error(rc, err, "decompression-bomb limit of 1000 pixels", '--max-image-pixels')


def test_mask_of_another_size_than_its_image(capsys, demo_copy):
    mask = demo_copy / 'textile' / 'ground_truth' / 'stain' / '003_mask.png'
    Image.new('L', (192, 96)).save(mask)
    rc, err = run_cli(capsys, folder_args(demo_copy))
    assert_one_line_error(rc, err, 'is 192x96 but its image', '003.png is 192x192')


def test_empty_defect_folder_warns_and_nested_images_are_an_error(demo_copy):
    os.makedirs(demo_copy / 'textile' / 'test' / 'crack')
    with pytest.warns(UserWarning, match='crack holds no images'):
        images, labels, _ = list_split(str(demo_copy / 'textile'), train=False)
    assert len(images) == 16 + 24
    nested = demo_copy / 'textile' / 'train' / 'good' / 'day2'
    os.makedirs(nested)
    shutil.copy(demo_copy / 'textile' / 'train' / 'good' / '000.png', nested / 'x.png')
    with pytest.raises(Exception, match=r'good has 1 images in subfolders, which are not read'):
        list_split(str(demo_copy / 'textile'), train=True)


def test_all_empty_masks_fail_before_training(capsys, demo_copy):
    for folder in (demo_copy / 'textile' / 'ground_truth').iterdir():
        for mask in folder.iterdir():
            Image.new('L', (192, 192)).save(mask)
    rc = main(folder_args(demo_copy))
    out = capsys.readouterr()
    assert_one_line_error(rc, out.err, 'all 24 defective test images have empty ground-truth masks')
    assert 'Model ' not in out.out
