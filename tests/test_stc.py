"""STC on a tiny generated layout: extraction, reruns, labels, errors, and a full run."""
import builtins
import json
import os

import numpy as np
import pytest
import torch

from custom_datasets import stc
from custom_datasets.stc import extract_video_frames, stc_dataset, training_frames
from custom_datasets.synthetic import make_stc_layout
from main import main
from utils.errors import CflowError

FRAMES_PER_VIDEO, CLIP_FRAMES = 10, 8


@pytest.fixture
def stc_root(tmp_path):
    return make_stc_layout(str(tmp_path / 'stc'), frames_per_video=FRAMES_PER_VIDEO, frames_per_clip=CLIP_FRAMES)


def test_extraction_streams_every_frame_once_and_skips_on_rerun(stc_root, monkeypatch):
    frames = training_frames(stc_root, '01')
    assert len(frames) == 2 * FRAMES_PER_VIDEO
    first = os.path.join(stc_root, 'training', 'frames', '01_001')
    assert sorted(os.listdir(first)) == ['.complete'] + [f'{i:08d}.jpg' for i in range(FRAMES_PER_VIDEO)]
    mtimes = [os.path.getmtime(f) for f in frames]

    def no_decoding(*args, **kwargs):
        raise AssertionError('a completed video was decoded again')
    monkeypatch.setattr(stc, 'import_av', no_decoding)
    assert training_frames(stc_root, '01') == frames
    assert [os.path.getmtime(f) for f in frames] == mtimes


def test_interrupted_extraction_is_redone(stc_root):
    video = os.path.join(stc_root, 'training', 'videos', '01_001.avi')
    frames_dir = os.path.join(stc_root, 'training', 'frames', '01_001')
    os.makedirs(frames_dir)
    open(os.path.join(frames_dir, '00000000.jpg'), 'wb').write(b'half-written')  # no marker
    frames = extract_video_frames(video, frames_dir)
    assert len(frames) == FRAMES_PER_VIDEO
    assert os.path.getsize(frames[0]) > 100 and os.path.isfile(os.path.join(frames_dir, '.complete'))


def test_test_labels_and_masks_align_with_frames(stc_root):
    test = stc_dataset(stc_root, '01', 64, train=False, mean=(0.5,) * 3, std=(0.225,) * 3)
    labels = np.concatenate([np.load(os.path.join(stc_root, 'testing', 'test_frame_mask', f'01_000{k}.npy'))
                             for k in (1, 2)])
    assert test.y == labels.tolist() and len(test) == 2 * CLIP_FRAMES
    assert test.x[CLIP_FRAMES].endswith(os.path.join('01_0002', '000.jpg'))
    for i in range(len(test)):
        _, label, mask = test[i]
        assert mask.shape == (1, 64, 64)
        assert bool(mask.sum() > 0) == bool(label)  # generated: defect frames, and only they, have masks
    pixel = np.load(os.path.join(stc_root, 'testing', 'test_pixel_mask', '01_0002.npy'))[CLIP_FRAMES - 1]
    mask = test[2 * CLIP_FRAMES - 1][2][0].numpy()
    assert abs(mask.mean() - pixel.mean()) < 0.02  # same defect area after resizing


def test_stc_normalisation_is_mean_half_std_0225(stc_root):
    from config import parse_config
    c = parse_config(['--dataset', 'stc', '--class-name', '01', '--data-path', stc_root, '--no-cuda'])
    assert c.norm_mean == (0.5, 0.5, 0.5) and c.norm_std == (0.225, 0.225, 0.225)
    assert c.model.startswith('stc_wide_resnet50_2_freia-cflow_pl3_cb8_inp256_run0_01')


def test_errors(stc_root, monkeypatch, tmp_path):
    with pytest.raises(CflowError, match='unknown STC scene'):
        stc_dataset(stc_root, '13', 64, True)
    with pytest.raises(CflowError, match='STC folder .* does not exist'):
        stc_dataset(str(tmp_path / 'none'), '01', 64, True)
    with pytest.raises(CflowError, match='no training videos for scene 02'):
        stc_dataset(stc_root, '02', 64, True)
    np.save(os.path.join(stc_root, 'testing', 'test_pixel_mask', '01_0001.npy'), np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(CflowError, match='01_0001 has 8 frames but 8 frame labels and 3 pixel masks'):
        stc_dataset(stc_root, '01', 64, False)
    real_import = builtins.__import__

    def without_av(name, *args, **kwargs):
        if name == 'av':
            raise ImportError('No module named av')
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', without_av)
    with pytest.raises(CflowError, match='PyAV is needed .* pip install av'):
        stc_dataset(stc_root, '01', 64, True)


def test_stc_trains_and_tests_end_to_end(stc_root, tmp_path, capsys):
    rc = main(['--dataset', 'stc', '--class-name', '01', '--data-path', stc_root, '-enc', 'resnet18', '-inp', '128',
               '-bs', '16', '-cb', '4', '--meta-epochs', '2', '--sub-epochs', '2', '--pro', '--workers', '0',
               '--no-cuda', '--encoder-weights', 'none', '--output-dir', str(tmp_path / 'out')])
    out = capsys.readouterr().out
    assert rc == 0, out
    results = os.listdir(tmp_path / 'out' / 'results')
    report = json.load(open(tmp_path / 'out' / 'results' / next(f for f in results if f.endswith('.json'))))
    assert report['settings']['dataset'] == 'stc' and len(report['epochs']) == 2
    last = report['epochs'][-1]
    # Measured with seed 0 (this test): DET 100, SEG 98.8. A random-init encoder on 20
    # training frames is weak, so other seeds gave DET 86 / SEG 79-91: the bound rules
    # out misaligned labels or masks (chance is 50), not a weak model.
    assert last['DET_AUROC'] > 70 and last['SEG_AUROC'] > 70
