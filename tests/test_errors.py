"""Bad input ends in one clear line on stderr, exit status 2, and no traceback."""
import os
import shutil

import torch

from main import main

BASE = ['-enc', 'resnet18', '-inp', '64', '--workers', '0', '--no-cuda', '--encoder-weights', 'none',
        '--meta-epochs', '1', '--sub-epochs', '1']


def run_cli(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.err


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2
    assert 'Traceback' not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def folder_args(root, *extra):
    return ['--dataset', 'folder', '--class-name', 'textile', '--data-path', str(root)] + BASE + list(extra)


def test_missing_data_folder(capsys, tmp_path):
    rc, err = run_cli(capsys, ['--dataset', 'mvtec', '--class-name', 'bottle', '--data-path', str(tmp_path / 'nope')] + BASE)
    assert_one_line_error(rc, err, 'MVTec AD folder', str(tmp_path / 'nope'), '--data-path')


def test_unknown_mvtec_class(capsys, tmp_path):
    rc, err = run_cli(capsys, ['--dataset', 'mvtec', '--class-name', 'bottel', '--data-path', str(tmp_path)] + BASE)
    assert_one_line_error(rc, err, "unknown MVTec AD class 'bottel'", 'bottle')


def test_unknown_folder_class_lists_what_is_there(capsys, demo_copy):
    rc, err = run_cli(capsys, ['--dataset', 'folder', '--class-name', 'carpet', '--data-path', str(demo_copy)] + BASE)
    assert_one_line_error(rc, err, 'class folder', 'carpet', 'textile')


def test_defect_image_without_mask(capsys, demo_copy):
    os.remove(demo_copy / 'textile' / 'ground_truth' / 'stain' / '003_mask.png')
    rc, err = run_cli(capsys, ['--dataset', 'folder', '--class-name', 'textile', '--data-path', str(demo_copy)] + BASE)
    assert_one_line_error(rc, err, 'has no mask', '003_mask.png')


def test_unreadable_image_is_named(capsys, demo_copy):
    bad = demo_copy / 'textile' / 'test' / 'good' / '005.png'
    bad.write_bytes(b'this is not a png')
    rc, err = run_cli(capsys, ['--dataset', 'folder', '--class-name', 'textile', '--data-path', str(demo_copy)] + BASE)
    assert_one_line_error(rc, err, 'cannot read image', '005.png')


def test_image_broken_after_its_header_is_named_from_a_worker(capsys, demo_copy):
    bad = demo_copy / 'textile' / 'train' / 'good' / '002.png'
    bad.write_bytes(bad.read_bytes()[:200])  # header intact, data cut off
    rc, err = run_cli(capsys, ['--dataset', 'folder', '--class-name', 'textile', '--data-path', str(demo_copy),
                               '-enc', 'resnet18', '-inp', '128', '-bs', '16', '--workers', '1', '--no-cuda',
                               '--encoder-weights', 'none', '--meta-epochs', '1', '--sub-epochs', '1',
                               '--output-dir', str(demo_copy / 'out')])
    assert_one_line_error(rc, err, 'cannot read image', '002.png')


def test_too_few_fibers_names_the_flags(capsys, demo_copy):
    rc, err = run_cli(capsys, ['--dataset', 'folder', '--class-name', 'textile', '--data-path', str(demo_copy),
                               '-bs', '4'] + BASE)
    assert_one_line_error(rc, err, 'layer3 gives 4 x 4 x 4 = 64 fibers', 'fewer than one fiber batch of 256', '--batch-size', '--input-size')


def test_gpu_without_cuda_says_which_device_is_used(capsys, monkeypatch, demo_copy):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    rc = main(['--dataset', 'folder', '--class-name', 'textile', '--data-path', str(demo_copy), '--gpu', '0',
               '-enc', 'resnet18', '-inp', '64', '-bs', '4', '--workers', '0', '--encoder-weights', 'none'])
    out = capsys.readouterr()
    assert 'CUDA is not available, so --gpu 0 is ignored and the CPU is used' in out.out
    assert rc == 2 and 'fewer than one fiber batch' in out.err  # it went on, on the CPU, to the next check


def test_unknown_flag_values(capsys):
    rc, err = run_cli(capsys, ['-enc', 'resnet99'])
    assert_one_line_error(rc, err, "unknown encoder -enc 'resnet99'", 'wide_resnet50_2')
    rc, err = run_cli(capsys, ['--action-type', 'norm-test'])
    assert_one_line_error(rc, err, 'needs --checkpoint')


def test_unreadable_checkpoint(capsys, demo_copy, tmp_path):
    (tmp_path / 'bad.pt').write_text('garbage')
    rc, err = run_cli(capsys, ['--dataset', 'folder', '--class-name', 'textile', '--data-path', str(demo_copy),
                               '--action-type', 'norm-test', '--checkpoint', str(tmp_path / 'bad.pt')] + BASE)
    assert_one_line_error(rc, err, 'not a readable torch file')


def test_a_test_set_without_defects_trains_and_calibrates_on_its_good_images(capsys, demo_copy):
    """Good test images only: no labelled metrics, all training images used, calibration on test/good/."""
    for defect in ('scratch', 'stain'):
        shutil.rmtree(demo_copy / 'textile' / 'test' / defect)
    rc = main(['--dataset', 'folder', '--class-name', 'textile', '--data-path', str(demo_copy), '-bs', '16',
               '-cb', '1', '--output-dir', str(demo_copy / 'out')] + BASE[:2] + ['-inp', '128'] + BASE[4:])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert 'trains on 64 good images; calibrating on the 16 images of test/good/' in out.out
    (checkpoint,) = (demo_copy / 'out' / 'weights').iterdir()
    calibration = torch.load(checkpoint, map_location='cpu', weights_only=True)['calibration']
    assert calibration['n_images'] == 16 and 'test/good' in calibration['source']
