"""VisA and MVTec AD 2 read as downloaded (generated small), scored as their authors score them: VisA equals
the same images in the MVTec layout; MVTec AD 2 trains on train/good, calibrates on validation/good, and
its metrics and submission files are what its evaluation reads."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import label
from sklearn.metrics import roc_auc_score

from benchmarks.official_pro import official_au_pro, official_trapezoid
from custom_datasets.synthetic import make_mvtec_ad2_layout, make_visa_layout
from main import main
from utils.pro_curve import ProCurve

from tests.test_errors import assert_one_line_error, run_cli

TINY = ['-enc', 'resnet18', '-inp', '96', '-bs', '32', '-cb', '2', '--meta-epochs', '1', '--sub-epochs', '1',
        '--workers', '0', '--no-cuda', '--encoder-weights', 'none']


def results_of(out):
    (path,) = glob.glob(os.path.join(out, 'results', '*.json'))
    return json.load(open(path))


def brute_force_au_pro(maps, truths, limit):
    """Every distinct score a threshold, each map thresholded at it: the definition, no cumulative sums."""
    points = [(0.0, 0.0)]
    regions = [(i, label(t, np.ones((3, 3), int))) for i, t in enumerate(truths)]
    negatives = sum((~t).sum() for t in truths)
    for s in np.unique(np.concatenate([m.ravel() for m in maps]).astype(np.float64))[::-1]:
        positive = [m.astype(np.float64) >= s for m in maps]
        fpr = sum((p & ~t).sum() for p, t in zip(positive, truths)) / negatives
        overlaps = [(positive[i] & (lab == k)).sum() / (lab == k).sum() for i, (lab, n) in regions for k in range(1, n + 1)]
        points.append((fpr, np.mean(overlaps)))
    x, y = np.array(points + [(1.0, 1.0)]).T
    return official_trapezoid(x, y, limit) / limit


@pytest.mark.parametrize('dtype', [np.float64, np.float16])
def test_au_pro_with_a_limit_equals_the_brute_force_definition(dtype):
    rng = np.random.default_rng(3)
    truths = [np.zeros((9, 11), bool) for _ in range(4)]
    truths[1][2:5, 3:6] = True
    truths[1][7, 9] = True          # a second region in the same image (8-connected: the diagonal pixel below joins)
    truths[1][8, 10] = True
    truths[2][0:3, 8:11] = True
    maps = [(rng.random((9, 11)) + 0.8 * t).astype(dtype) for t in truths]
    maps[3][0, 0] = maps[3][0, 1]   # ties
    curve = ProCurve()
    for m, t in zip(maps, truths):
        curve.add(m, t)
    for limit in (0.05, 0.3, 0.123, 1.0):
        expected = brute_force_au_pro(maps, truths, limit)
        assert curve.au_pro(limit) == pytest.approx(expected, abs=1e-12)
        assert official_au_pro(maps, truths, limit) == pytest.approx(expected, abs=1e-12)
    assert curve.regions == 3  # the diagonal pair is one region


# ----------------------------------------------------------------------------------
# VisA


@pytest.fixture(scope='module')
def visa(tmp_path_factory):
    root = tmp_path_factory.mktemp('visa')
    make_visa_layout(str(root / 'VisA'), objects=('candle', 'pcb1'))
    return root


def as_mvtec_layout(visa_root, obj, target):
    """The same files re-laid as an MVTec-layout class (what the held-out check compares with)."""
    import csv
    rows = list(csv.DictReader(open(os.path.join(visa_root, 'split_csv', '1cls.csv'))))
    for row in rows:
        if row['object'] != obj:
            continue
        kind = 'good' if row['label'] == 'normal' else 'anomaly'
        name = os.path.basename(row['image'])
        destination = os.path.join(target, obj, row['split'], kind, name)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy(os.path.join(visa_root, row['image']), destination)
        if row['mask']:
            mask = os.path.join(target, obj, 'ground_truth', kind, os.path.splitext(name)[0] + '_mask.png')
            os.makedirs(os.path.dirname(mask), exist_ok=True)
            shutil.copy(os.path.join(visa_root, row['mask']), mask)


def test_visa_reads_the_download_and_equals_the_same_images_in_the_mvtec_layout(visa, tmp_path):
    data = str(visa / 'VisA')
    assert main(['--dataset', 'visa', '-cl', 'pcb1', '--data-path', data, '--output-dir', str(tmp_path / 'train'),
                 '--pro', '--pro-limit', '0.05'] + TINY) == 0
    trained = results_of(tmp_path / 'train')
    assert trained['complete'] and trained['epochs'][-1]['SEG_AUPRO@0.05'] >= 0
    (checkpoint,) = glob.glob(str(tmp_path / 'train' / 'weights' / '*_final.pt'))
    as_mvtec_layout(data, 'pcb1', str(tmp_path / 'mvtec_layout'))
    test = ['--action-type', 'norm-test', '--checkpoint', checkpoint, '--pro', '--pro-limit', '0.05'] + TINY
    assert main(['--dataset', 'visa', '-cl', 'pcb1', '--data-path', data, '--output-dir', str(tmp_path / 'a')] + test) == 0
    assert main(['--dataset', 'folder', '-cl', 'pcb1', '--data-path', str(tmp_path / 'mvtec_layout'),
                 '--output-dir', str(tmp_path / 'b')] + test) == 0
    a, b = results_of(tmp_path / 'a')['epochs'][-1], results_of(tmp_path / 'b')['epochs'][-1]
    for name in ('DET_AUROC', 'SEG_AUROC', 'SEG_AUPRO', 'SEG_AUPRO@0.05'):
        assert abs(a[name] - b[name]) <= 0.01, (name, a[name], b[name])
    assert results_of(tmp_path / 'a')['settings']['dataset'] == 'visa'


def test_visa_bad_layouts_end_in_one_line(visa, tmp_path, capsys):
    data = tmp_path / 'VisA'
    shutil.copytree(visa / 'VisA', data)
    base = ['--dataset', 'visa', '--data-path', str(data)] + TINY
    assert_one_line_error(*run_cli(capsys, base + ['-cl', 'pcb9']), "unknown VisA object 'pcb9'", 'pcb1')
    first_anomaly = sorted(glob.glob(str(data / 'candle' / 'Data' / 'Images' / 'Anomaly' / '*.JPG')))[0]
    os.remove(first_anomaly)  # a mask without its image
    assert_one_line_error(*run_cli(capsys, base + ['-cl', 'candle']), first_anomaly, 'does not exist', 'its mask')
    os.remove(data / 'split_csv' / '1cls.csv')
    assert_one_line_error(*run_cli(capsys, base + ['-cl', 'candle']), 'split file', '1cls.csv', '--data-path')


def test_visa_reads_only_what_the_split_file_lists(visa):
    from custom_datasets.visa import visa_split
    data = str(visa / 'VisA')
    listed = visa_split(data, 'candle', True)[0] + visa_split(data, 'candle', False)[0]
    on_disk = glob.glob(os.path.join(data, 'candle', 'Data', 'Images', '*', '*.JPG'))
    assert len(on_disk) == len(listed) + 1 and set(listed) < set(on_disk)  # the unlisted image is not read
    images, labels, masks = visa_split(data, 'candle', False)
    defect = labels.index(1)
    assert np.asarray(Image.open(masks[defect])).max() == 1  # VisA's masks: any non-zero value is a defect
    from custom_datasets.common import LabelledImages
    dataset = LabelledImages(images, labels, masks, 96, train=False)
    assert dataset.load_mask(defect).max() == 1.0 and dataset.load_mask(labels.index(0)).max() == 0.0


# ----------------------------------------------------------------------------------
# MVTec AD 2


@pytest.fixture(scope='module')
def ad2(tmp_path_factory):
    root = tmp_path_factory.mktemp('ad2')
    data = make_mvtec_ad2_layout(str(root / 'mvtec_ad_2'))
    out = root / 'train'
    assert main(['--dataset', 'mvtec_ad2', '-cl', 'can', '--data-path', data, '--output-dir', str(out)] + TINY) == 0
    (checkpoint,) = glob.glob(str(out / 'weights' / '*_final.pt'))
    return root, data, checkpoint, results_of(out)


def test_mvtec_ad2_trains_on_train_good_and_calibrates_on_validation_good(ad2):
    import torch
    _, data, checkpoint, report = ad2
    calibration = torch.load(checkpoint, weights_only=False)['calibration']
    assert calibration['source'].startswith('validation/good') and calibration['n_images'] == 12
    benchmark = report['benchmark']
    assert set(benchmark) >= {'SEG_AUPRO@0.05', 'SEG_AUPRO@0.3', 'DET_AUROC', 'SEG_F1'}
    assert benchmark['image_threshold'] == calibration['image_threshold']
    assert report['epochs'][-1]['calibrated']['at_stored_threshold']['threshold'] == calibration['image_threshold']


def test_the_submission_is_what_the_server_reads_and_its_metrics_are_the_official_ones(ad2, tmp_path):
    import tifffile
    _, data, checkpoint, report = ad2
    out = tmp_path / 'submission'
    assert main(['--action-type', 'submission', '--dataset', 'mvtec_ad2', '-cl', 'can', '--data-path', data,
                 '--checkpoint', checkpoint, '--output-dir', str(out), '--no-cuda', '--workers', '0']) == 0
    inputs = sorted(glob.glob(os.path.join(data, 'can', 'test_p*', '**', '*.png'), recursive=True))
    inputs = [p for p in inputs if '/ground_truth/' not in p]
    assert len(inputs) == 16 + 4 + 4
    maps, masks, truths, labels = [], [], [], []
    for path in inputs:
        stem = os.path.splitext(os.path.relpath(path, data))[0]
        tiff, png = out / 'anomaly_images' / (stem + '.tiff'), out / 'anomaly_images_thresholded' / (stem + '.png')
        anomaly_map, mask = tifffile.imread(tiff), np.asarray(Image.open(png))
        width, height = Image.open(path).size
        assert anomaly_map.dtype == np.float16 and anomaly_map.shape == (height, width)  # one channel, own size
        assert mask.dtype == np.uint8 and mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        if '/test_public/' in path:
            truth_path = path.replace('/bad/', '/ground_truth/bad/').replace('.png', '_mask.png')
            truth = np.asarray(Image.open(truth_path)) > 0 if '/bad/' in path else np.zeros((height, width), bool)
            maps.append(anomaly_map), masks.append(mask > 0), truths.append(truth), labels.append('/bad/' in path)
    official = {f'SEG_AUPRO@{limit:g}': 100 * official_au_pro(maps, truths, limit) for limit in (0.05, 0.3)}
    official['DET_AUROC'] = 100 * roc_auc_score(labels, [m.astype(np.float64).max() for m in maps])
    tp = sum((m & t).sum() for m, t in zip(masks, truths))
    official['SEG_F1'] = 100 * 2 * tp / (2 * tp + sum((m & ~t).sum() + (~m & t).sum() for m, t in zip(masks, truths)))
    written = json.load(open(out / 'metrics_can.json'))
    for name, value in official.items():
        assert written[name] == pytest.approx(value, abs=1e-6), name
        assert report['benchmark'][name] == pytest.approx(value, abs=1e-6), name  # norm-train reported the same
    # a resumed run keeps finished files and writes only what is missing
    first = out / 'anomaly_images' / 'can' / 'test_private' / '000_regular.tiff'
    missing = out / 'anomaly_images_thresholded' / 'can' / 'test_private_mixed' / '001_regular.png'
    os.remove(missing)
    before = os.stat(first).st_mtime_ns
    assert main(['--action-type', 'submission', '--dataset', 'mvtec_ad2', '-cl', 'can', '--data-path', data,
                 '--checkpoint', checkpoint, '--output-dir', str(out), '--no-cuda', '--workers', '0']) == 0
    assert os.stat(first).st_mtime_ns == before and missing.is_file()
    assert json.load(open(out / 'metrics_can.json'))['SEG_F1'] == written['SEG_F1']


def test_mvtec_ad2_bad_layouts_end_in_one_line(ad2, tmp_path, capsys):
    _, data, checkpoint, _ = ad2
    copy = tmp_path / 'mvtec_ad_2'
    shutil.copytree(data, copy)
    base = ['--dataset', 'mvtec_ad2', '--data-path', str(copy)] + TINY
    assert_one_line_error(*run_cli(capsys, base + ['-cl', 'bottle']), "unknown MVTec AD 2 object 'bottle'", 'walnuts')
    orphan = copy / 'can' / 'test_public' / 'bad' / '003_regular.png'
    os.remove(orphan)
    assert_one_line_error(*run_cli(capsys, base + ['-cl', 'can']), 'has no image', '003_regular_mask.png')
    assert_one_line_error(*run_cli(capsys, ['--action-type', 'submission', '--dataset', 'visa', '-cl', 'can',
                                            '--checkpoint', checkpoint]), 'pass --dataset mvtec_ad2')
    assert_one_line_error(*run_cli(capsys, ['--dataset', 'mvtec', '-cl', 'bottle', '--pro-limit', '0.05']),
                          'MVTec AD keeps the published CFLOW AUPRO')


def test_the_runner_runs_mvtec_ad2_and_reports_its_metrics_with_no_published_row(ad2, tmp_path):
    import reproduce
    _, data, _, _ = ad2
    out = tmp_path / 'reproduce'
    assert reproduce.main(['--preset', 'r18-cb8-pl3-256', '--dataset', 'mvtec_ad2', '--classes', 'can', '--runs', '1',
                           '--data-path', data, '--output-dir', str(out), '-inp', '96', '-bs', '32', '--meta-epochs',
                           '1', '--sub-epochs', '1', '--encoder-weights', 'none', '--workers', '0', '--no-cuda']) == 0
    report = (out / 'report.md').read_text()
    (run,) = glob.glob(str(out / 'results' / '*.json'))
    benchmark = json.load(open(run))['benchmark']
    for name in ('SEG_AUPRO@0.05', 'SEG_AUPRO@0.3', 'DET_AUROC', 'SEG_F1'):
        assert f'## MVTec AD 2 {name} (%)' in report
        row = next(line for line in report.split(f'## MVTec AD 2 {name} (%)')[1].splitlines() if line.startswith('| can'))
        assert f'{benchmark[name]:.2f}' in row and row.endswith('|  |  |  |')  # no published value, no diff
    assert 'no published CFLOW-AD numbers exist for MVTec AD 2' in report
    assert reproduce.dataset_classes('visa')[:2] == ('candle', 'capsules') and len(reproduce.dataset_classes('visa')) == 12
