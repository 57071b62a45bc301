"""A product from good images only: train, calibrate on a held-out share, score new images;
small data sets get errors that name a batch size and input size that work."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch

from config import parse_config
from custom_datasets.folder import MIN_CALIBRATION, hold_out
from main import main
from custom_models.detector import full_size_mask
from utils.calibration import decide_then_mask
from utils.errors import CflowError

from tests.test_errors import assert_one_line_error, run_cli

SMALL = ['-enc', 'resnet18', '-cb', '1', '--meta-epochs', '1', '--sub-epochs', '1', '--workers', '0', '--no-cuda',
         '--encoder-weights', 'none']


@pytest.fixture(scope='module')
def widget(tmp_path_factory, demo_root):
    """mydata/widget/train/good with 30 good images and nothing else."""
    root = tmp_path_factory.mktemp('mydata')
    good = root / 'widget' / 'train' / 'good'
    good.mkdir(parents=True)
    source = os.path.join(demo_root, 'textile', 'train', 'good')
    for name in sorted(os.listdir(source))[:30]:
        shutil.copy(os.path.join(source, name), good / name)
    return root


def test_hold_out_is_seeded_disjoint_and_refuses_too_few():
    paths = [f'{i:03d}.png' for i in range(30)]
    train, held = hold_out(paths, seed=0)
    assert len(held) == MIN_CALIBRATION and len(train) == 22 and not set(train) & set(held)
    assert hold_out(paths, seed=0) == (train, held) and hold_out(paths, seed=1)[1] != held
    assert len(hold_out([f'{i}' for i in range(100)], seed=0)[1]) == 20  # 20 % once that is more than 8
    with pytest.raises(CflowError, match=r'12 good images are too few.*16 or more'):
        hold_out(paths[:12], seed=0)


def test_thirty_good_images_train_a_calibrated_model_that_predicts(widget, tmp_path, capsys, demo_root):
    out = tmp_path / 'out'
    rc = main(['--dataset', 'folder', '--data-path', str(widget), '--class-name', 'widget', '-inp', '128',
               '-bs', '22', '--output-dir', str(out)] + SMALL)
    assert rc == 0
    printed = capsys.readouterr().out
    assert 'trains on 22 good images; 8 held out (seed 0) to calibrate on' in printed
    (checkpoint,) = (out / 'weights').iterdir()
    calibration = torch.load(checkpoint, map_location='cpu', weights_only=True)['calibration']
    assert calibration['n_images'] == 8 and 'held out' in calibration['source']
    (result,) = (out / 'results').glob('*.json')
    record = json.loads(result.read_text())
    assert record['complete'] and all(v is None for v in record['last'].values())
    assert not list((out / 'results').glob('*.txt'))  # no metrics, so no published line
    # the held-out images were not trained on: the trained set is the other 22
    assert 'train / 0 test images' in printed
    rc = main(['--action-type', 'predict', '--checkpoint', str(checkpoint), '--input',
               os.path.join(demo_root, 'textile', 'test'), '--output-dir', str(tmp_path / 'scored'), '--no-cuda',
               '--workers', '0'])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / 'scored' / 'predictions.csv')))
    assert len(rows) == 16 + 24
    flagged = {d: sum(r['decision'] == 'defective' for r in rows if f'/{d}/' in r['source'])
               for d in ('good', 'scratch', 'stain')}
    assert flagged['scratch'] + flagged['stain'] > flagged['good']  # the decisions mean something


def test_a_good_only_class_cannot_be_norm_tested(widget, capsys, tmp_path):
    rc, err = run_cli(capsys, ['--dataset', 'folder', '--data-path', str(widget), '--class-name', 'widget',
                               '--action-type', 'norm-test', '--checkpoint', str(tmp_path / 'x.pt'), '--no-cuda'])
    assert rc == 2 and ('no defective test images' in err or 'does not exist' in err)


def test_too_few_images_for_the_batch_name_a_combination_that_works(widget, capsys, tmp_path):
    base = ['--dataset', 'folder', '--data-path', str(widget), '--class-name', 'widget', '--output-dir',
            str(tmp_path)] + SMALL
    rc, err = run_cli(capsys, base + ['-inp', '128'])  # the default -bs 32 for 22 training images
    assert_one_line_error(rc, err, 'has 22 images, fewer than -bs/--batch-size 32', 'try -bs 22 -inp 128')
    rc, err = run_cli(capsys, base + ['-inp', '128', '-bs', '8'])  # 8 x 4 x 4 fibers < 256 at the deepest tap
    assert_one_line_error(rc, err, '8 x 4 x 4 = 128 fibers', 'try -bs 22 -inp 128')
    assert main(base + ['-inp', '128', '-bs', '22']) == 0  # the suggestion works


def test_a_batch_size_that_drops_many_images_is_warned_about(widget, capsys, tmp_path):
    assert main(['--dataset', 'folder', '--data-path', str(widget), '--class-name', 'widget', '-inp', '128',
                 '-bs', '16', '--output-dir', str(tmp_path)] + SMALL) == 0
    out = capsys.readouterr().out
    assert 'Warning: -bs 16 trains on 16 of the 22 training images per sub-epoch (6 dropped' in out
    assert '-bs 22 -inp 128 drops 0 images' in out


def test_scores_only_writes_the_tables_and_the_same_scores(widget, tmp_path, demo_root):
    assert main(['--dataset', 'folder', '--data-path', str(widget), '--class-name', 'widget', '-inp', '128',
                 '-bs', '22', '--output-dir', str(tmp_path / 'model')] + SMALL) == 0
    (checkpoint,) = (tmp_path / 'model' / 'weights').iterdir()
    images = os.path.join(demo_root, 'textile', 'test', 'stain')
    runs = {}
    for name, extra in (('full', []), ('scores', ['--scores-only'])):
        assert main(['--action-type', 'predict', '--checkpoint', str(checkpoint), '--input', images,
                     '--output-dir', str(tmp_path / name), '--no-cuda', '--workers', '0'] + extra) == 0
        runs[name] = list(csv.DictReader(open(tmp_path / name / 'predictions.csv')))
    assert sorted(os.listdir(tmp_path / 'scores')) == ['predictions.csv', 'predictions.json']
    assert os.path.isdir(tmp_path / 'full' / 'overlays')
    assert [(r['source'], r['score'], r['decision'], r['defect_pixels']) for r in runs['scores']] == \
        [(r['source'], r['score'], r['decision'], r['defect_pixels']) for r in runs['full']]


def test_masks_are_thresholded_at_the_model_resolution_and_never_empty_when_defective():
    anomaly_map = np.zeros((64, 64), dtype=np.float32)
    anomaly_map[10, 20] = 5.0  # one pixel over the threshold
    defective, model_mask = decide_then_mask(anomaly_map, score=5.0, t_image=2.0, t_mask=1.0)
    assert defective and model_mask.sum() == 1
    up = full_size_mask(anomaly_map, model_mask, (256, 256))
    assert up.sum() == 16 and up[40:44, 80:84].all()  # nearest: one model pixel is a 4 x 4 block
    down = full_size_mask(anomaly_map, model_mask, (16, 16))
    assert down.sum() >= 1 and down[2, 5]  # a bilinear resize would have lost it
    defective, model_mask = decide_then_mask(anomaly_map, score=5.0, t_image=6.0, t_mask=1.0)  # decided good
    assert not defective and not full_size_mask(anomaly_map, model_mask, (16, 16)).any()
