"""Fixes from the line-by-line review (issue 7): published rules, divergence, bad input, file names."""
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import custom_models.scoring
import custom_models.training
from actions import read_settings
from config import apply_process_settings, parse_config
from custom_datasets.folder import list_split
from custom_models.encoders import build_encoder
from main import main
from utils.results import ScoreObserver, reserve_run

from tests.conftest import reference_checkpoint
from tests.test_errors import BASE, assert_one_line_error, run_cli


@pytest.fixture
def demo_copy(demo_root, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(demo_root, root)
    return root


def folder_args(root, *extra):
    return ['--dataset', 'folder', '--class-name', 'textile', '--data-path', str(root)] + BASE + list(extra)


def test_every_action_runs_full_fp32_unless_tf32(tmp_path):
    """One arithmetic for training, testing, calibration, predict and export (set when the flags are read)."""
    checkpoint = reference_checkpoint('cflow_r18')
    deploy = ['-enc', 'resnet18', '--no-cuda', '--checkpoint', checkpoint]
    for argv in (['-enc', 'resnet18', '-inp', '64', '--no-cuda', '--encoder-weights', 'none', '-cb', '1'],
                 deploy + ['--action-type', 'norm-test'],
                 deploy + ['--action-type', 'calibrate', '--calibration-path', str(tmp_path)],
                 deploy + ['--action-type', 'predict', '--input', str(tmp_path)],
                 deploy + ['--action-type', 'export', '--output', str(tmp_path / 'm.onnx')]):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # PyTorch's cuDNN default
        apply_process_settings(read_settings(argv))  # as main.py sets up the process
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32, argv
        apply_process_settings(read_settings(argv + ['--tf32']))
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32, argv
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


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


def test_a_diverged_flow_stops_with_one_line_naming_the_epoch(capsys, demo_copy, monkeypatch, tmp_path):
    monkeypatch.setattr(custom_models.training, 'nll_loss', lambda log_prob: log_prob * float('nan'))
    rc, err = run_cli(capsys, folder_args(demo_copy, '-inp', '128', '-bs', '16', '--output-dir', str(tmp_path)))
    assert_one_line_error(rc, err, 'training diverged: the loss of epoch 0.0 is nan', '--lr')
    (report,) = [f for f in os.listdir(tmp_path / 'results') if f.endswith('.json')]
    report = json.load(open(tmp_path / 'results' / report))
    assert report['status'] == 'failed' and not report['complete'] and 'diverged' in report['error']


def test_non_finite_test_scores_stop_before_the_metrics(capsys, demo_copy, monkeypatch, tmp_path):
    real = custom_models.scoring.score_batch

    def with_a_nan(options, encoder, scorers, images):
        log_probs = real(options, encoder, scorers, images)
        log_probs[1][0, 0, 0] = float('nan')
        return log_probs
    monkeypatch.setattr(custom_models.scoring, 'score_batch', with_a_nan)
    rc, err = run_cli(capsys, folder_args(demo_copy, '-inp', '128', '-bs', '16', '--output-dir', str(tmp_path)))
    # 40 test images at -bs 16: three batches, one NaN each
    assert_one_line_error(rc, err, 'decoder 1 gave 3 NaN or +inf log-likelihoods of 2560')


def test_a_nan_metric_never_becomes_the_max():
    observer = ScoreObserver('SEG_AUPRO')
    assert not observer.update(float('nan'), 0)
    assert observer.update(50.0, 1) and observer.max_score == 50.0 and observer.max_epoch == 1
    assert not observer.update(float('nan'), 2)
    assert observer.max_score == 50.0 and observer.max_epoch == 1 and np.isnan(observer.last)
    first = ScoreObserver('DET_AUROC')
    assert first.update(10.0, 0) and not first.update(float('nan'), 1) and first.max_score == 10.0


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


def test_two_runs_in_the_same_second_keep_their_own_files(tmp_path):
    configs = [parse_config(['--dataset', 'demo', '--output-dir', str(tmp_path), '--no-cuda']).replace(
        run_date='2026-01-01-00-00-00') for _ in range(3)]
    runs = [reserve_run(c.output_dir, c.model, c.run_date) for c in configs]
    stems = [run.stem for run in runs]
    assert len(set(stems)) == 3 and stems[1].endswith('-2') and stems[2].endswith('-3')
    assert runs[1].viz_dir.endswith('2026-01-01-00-00-00-2') and ':' not in stems[0]
    assert runs[2].checkpoint('_final').endswith('2026-01-01-00-00-00-3_final.pt')
    assert sorted(os.listdir(tmp_path / 'results')) == sorted(os.path.basename(s) + '.json' for s in stems)


def test_save_best_keeps_the_published_best_epoch_checkpoint_too(demo_copy, tmp_path):
    assert main(folder_args(demo_copy, '-inp', '128', '-bs', '16', '-cb', '1', '--save-best',
                            '--output-dir', str(tmp_path))) == 0
    names = sorted(os.listdir(tmp_path / 'weights'))
    assert len(names) == 2 and names[1] == names[0].replace('.pt', '_final.pt')
