"""DifferNet as its authors' code computes it: the fixture in tests/reference/differnet/ (made by their code,
small flow) reproduced through the normal --checkpoint path, their 6-step training trajectory through our
views and training step, Magnetic Tile Defects with their split, and each model's own flags."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from utils.views import fixed_angles, rotated_views
from custom_models.differnet import (DifferNet, differnet_loss, differnet_optimizer, gradient_maps, load_differnet,
                                     multiscale_features, train_step)
from main import main
from utils.images import read_rgb

from tests.conftest import PINNED_KERNELS, REFERENCE
from tests.test_errors import assert_one_line_error, run_cli

FIXTURE = os.path.join(REFERENCE, 'differnet')
INFO = json.load(open(os.path.join(FIXTURE, 'fixture.json')))
DRAW = """
import sys, torch, torchvision
torch.manual_seed(int(sys.argv[1]))
torch.save(torchvision.models.alexnet(weights=None).state_dict(), sys.argv[2])
"""


def close(found, expected, rtol=1e-4):
    """|diff| <= rtol x max|expected| (+ rtol x |expected|): the fixture README's tolerance."""
    found, expected = torch.as_tensor(found).double(), torch.as_tensor(expected).double()
    return bool(((found - expected).abs() <= rtol * expected.abs().max() + rtol * expected.abs()).all())


@pytest.fixture(scope='module')
def authors(tmp_path_factory):
    """(the authors' weights file: their AlexNet init and trained flow, as save_weights writes it; the expected
    tensors; a folder class of the fixture's four source images)."""
    sys.path.insert(0, REFERENCE)
    from slim import state_sha256
    work = tmp_path_factory.mktemp('differnet')
    init = INFO['encoder_init']
    subprocess.run([sys.executable, '-c', DRAW, str(init['seed']), str(work / 'alexnet.pt')], check=True,
                   env={**os.environ, **PINNED_KERNELS})
    alexnet = torch.load(work / 'alexnet.pt', weights_only=True)
    if state_sha256(alexnet) != init['state_sha256']:
        pytest.fail(f'the rebuilt AlexNet init is not the fixture\'s ({init["how"]}, torch {init["torch"]}): install '
                    f'the versions in requirements.txt')
    flow = torch.load(os.path.join(FIXTURE, 'flow.pt'), weights_only=True)
    torch.save({**{f'feature_extractor.{k}': v for k, v in alexnet.items()}, **{f'nf.{k}': v for k, v in flow.items()}},
               work / 'authors_weights.pt')
    expected = torch.load(os.path.join(FIXTURE, 'expected.pt'), weights_only=False)
    for i, name in enumerate(INFO['images']):
        kind = 'good' if INFO['labels'][i] == 0 else 'scratch'
        path = work / 'data' / 'tiles' / 'test' / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(expected['images'][i].numpy()).save(path)
        if kind != 'good':
            mask = work / 'data' / 'tiles' / 'ground_truth' / kind / name.replace('.png', '_mask.png')
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), ((80, 80), (112, 112)))).save(mask)
    (work / 'data' / 'tiles' / 'train' / 'good').mkdir(parents=True)
    return str(work / 'authors_weights.pt'), expected, work


def source_path(work, i):
    kind = 'good' if INFO['labels'][i] == 0 else 'scratch'
    return str(work / 'data' / 'tiles' / 'test' / kind / INFO['images'][i])


def test_the_authors_file_gives_their_features_z_log_det_and_loss(authors):
    path, expected, work = authors
    model = load_differnet(path)
    assert len(model.nf.module_list) == 5 and model.nf.module_list[2].s1.fc1.out_features == 64  # read from the file
    views = torch.cat([rotated_views(read_rgb(source_path(work, i)), 448, [0.0]) for i in range(4)])
    x = (expected['input_uint8'].permute(0, 3, 1, 2).float().div(255) - expected['norm_mean'][:, None, None]) \
        / expected['norm_std'][:, None, None]
    assert torch.equal(views, x)  # our loader's input is the authors', bit for bit
    with torch.no_grad():
        features = multiscale_features(model.feature_extractor.features, views)
        z, log_det = model.nf(features)
    assert close(features, expected['features']) and close(z, expected['z'])
    assert close(log_det, expected['log_jac_det']) and close(differnet_loss(z, log_det), expected['loss'])
    order = [list(p) for p in expected['permutations'].numpy()]
    assert [m.perm.tolist() for m in model.nf.module_list[1::2]] == order


def test_norm_test_of_the_authors_file_gives_their_fixed_rotation_scores(authors, tmp_path):
    path, expected, work = authors
    assert main(['--model', 'differnet', '--action-type', 'norm-test', '--checkpoint', path, '--dataset', 'folder',
                 '--data-path', str(work / 'data'), '-cl', 'tiles', '--fixed-rotations', '--no-cuda', '--workers', '0',
                 '--output-dir', str(tmp_path)]) == 0
    (results,) = [f for f in os.listdir(tmp_path / 'results') if f.endswith('.json')]
    report = json.load(open(tmp_path / 'results' / results))
    scores = {os.path.basename(s['path']): s['score'] for s in report['test_scores']}
    found = [scores[name] for name in INFO['images']]
    assert close(found, expected['score_fixed64'])
    from sklearn.metrics import roc_auc_score
    assert report['last']['DET_AUROC'] == pytest.approx(100 * roc_auc_score(INFO['labels'], found))
    assert report['settings']['input_size'] == 448 and report['settings']['test_transforms'] == 64


def test_gradient_maps_are_the_authors(authors):
    path, expected, work = authors
    model = load_differnet(path)
    angles = fixed_angles(64)
    for j, i in enumerate(expected['gradient_map_images'].tolist()):
        found = gradient_maps(model, rotated_views(read_rgb(source_path(work, i)), 448, angles), angles)
        reference = expected['gradient_map'][j].double()
        assert (found - reference).abs().max() <= 2e-3 * reference.abs().max()
        assert (found - reference).abs().mean() <= 1e-3 * reference.abs().mean()


def test_training_follows_the_authors_six_steps(authors):
    path, expected, work = authors
    trajectory = torch.load(os.path.join(FIXTURE, 'trajectory.pt'), weights_only=False)
    model = load_differnet(path)
    model.nf.load_state_dict(trajectory['init_flow_state_dict'])
    optimizer = differnet_optimizer(model.nf, lr=2e-4)
    model.train()
    four = fixed_angles(4)  # 0, 90, 180, 270: the fixture's training views
    for step, images in enumerate(trajectory['step_images'].tolist()):
        views = torch.cat([rotated_views(read_rgb(source_path(work, i)), 448, four) for i in images])
        loss = train_step(model, optimizer, views)
        assert loss == pytest.approx(float(trajectory['step_loss'][step]), rel=1e-4), step
    final = torch.load(os.path.join(FIXTURE, 'flow.pt'), weights_only=True)
    state = model.nf.state_dict()
    for key, reference in final.items():
        if reference.is_floating_point():
            assert (state[key] - reference).abs().max() <= 1e-4 * reference.abs().max() + 1e-12, key


def test_norm_train_writes_a_file_the_authors_load_and_norm_test_reads_it(authors, tmp_path, demo_root):
    argv = ['--model', 'differnet', '--dataset', 'demo', '--data-path', demo_root, '-inp', '256', '-bs', '8',
            '--meta-epochs', '1', '--sub-epochs', '1', '--transforms', '2', '--test-transforms', '2', '--flow-width',
            '32', '-cb', '2', '--encoder-weights', 'none', '--no-cuda', '--workers', '0', '--output-dir', str(tmp_path)]
    assert main(argv) == 0
    (weights,) = os.listdir(tmp_path / 'weights')
    state = torch.load(tmp_path / 'weights' / weights, weights_only=True)
    authors_model = DifferNet(torch.nn.Module(), 2, 32)  # the authors' module layout: nf keys as theirs
    authors_model.feature_extractor = load_differnet(authors[0]).feature_extractor
    assert authors_model.load_state_dict(state, strict=True)  # save_weights format: their load_state_dict takes it
    text = next(f for f in os.listdir(tmp_path / 'results') if f.endswith('.txt'))
    assert ',-,- \t\tfor DET_AUROC/SEG_AUROC/SEG_AUPRO' in open(tmp_path / 'results' / text).read()


def test_each_models_flags_are_its_own(capsys, tmp_path):
    base = ['--dataset', 'demo', '--data-path', str(tmp_path), '--no-cuda']
    assert_one_line_error(*run_cli(capsys, base + ['--model', 'differnet', '-enc', 'resnet18']), '-enc is for CFLOW')
    assert_one_line_error(*run_cli(capsys, base + ['--transforms', '8']), '--transforms is for DifferNet')
    assert_one_line_error(*run_cli(capsys, base + ['--model', 'diffnet']), "unknown --model 'diffnet'")
    assert_one_line_error(*run_cli(capsys, base + ['--model', 'differnet', '-inp', '128']), '-inp 252 or more')
    assert_one_line_error(*run_cli(capsys, base + ['--model', 'differnet', '--action-type', 'submission',
                                                   '--dataset', 'mvtec_ad2', '--checkpoint', 'x.pt']), 'built for CFLOW')
    assert_one_line_error(*run_cli(capsys, base + ['--model', 'differnet', '--calibration-path', str(tmp_path)]),
                          'calibrated after training')


# ----------------------------------------------------------------------------------
# Magnetic Tile Defects


def make_mtd(root, extra_free=3, defects_per_folder=2):
    from custom_datasets.mtd import DEFECTS, training_names
    rng = np.random.default_rng(0)
    tile = lambda: Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8))
    free = root / 'MT_Free' / 'Imgs'
    free.mkdir(parents=True)
    for name in training_names() + [f'exp9_num_{k}.jpg' for k in range(extra_free)]:
        tile().save(free / name)
    for defect in DEFECTS:
        folder = root / defect / 'Imgs'
        folder.mkdir(parents=True)
        for k in range(defects_per_folder):
            tile().save(folder / f'exp1_num_{k}.jpg')
            Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), ((10, 10), (8, 8)))).save(folder / f'exp1_num_{k}.png')
    return root


def test_mtd_uses_the_authors_training_split(tmp_path, capsys):
    from custom_datasets.mtd import mtd_split, training_names
    root = make_mtd(tmp_path / 'MTD')
    images, labels, masks = mtd_split(str(root), train=True)
    assert [os.path.basename(p) for p in images] == training_names() and len(images) == 761 and not any(labels)
    images, labels, masks = mtd_split(str(root), train=False)
    assert labels.count(0) == 3 and labels.count(1) == 10
    assert all((m is None) == (y == 0) for m, y in zip(masks, labels))
    assert not set(training_names()) & {os.path.basename(p) for p, y in zip(images, labels) if y == 0}
    os.remove(root / 'MT_Crack' / 'Imgs' / 'exp1_num_1.png')
    assert_one_line_error(*run_cli(capsys, ['--dataset', 'mtd', '--data-path', str(root), '--no-cuda', '-enc',
                                            'resnet18', '-inp', '64', '--encoder-weights', 'none']), 'has no mask')
    os.remove(root / 'MT_Free' / 'Imgs' / training_names()[5])
    assert_one_line_error(*run_cli(capsys, ['--dataset', 'mtd', '--data-path', str(root), '--no-cuda', '-enc',
                                            'resnet18', '-inp', '64', '--encoder-weights', 'none']), training_names()[5])
    assert_one_line_error(*run_cli(capsys, ['--dataset', 'mtd', '--data-path', str(tmp_path / 'none'), '--no-cuda']),
                          'Magnetic Tile Defects folder')


def test_a_calibrated_differnet_predicts_with_the_authors_scores_and_its_gradient_map(authors, tmp_path):
    from custom_models import load_model
    path, expected, work = authors
    good = tmp_path / 'good'
    good.mkdir()
    for i in (0, 1):
        Image.open(source_path(work, i)).save(good / f'{i}.png')
    calibrated = str(tmp_path / 'differnet_calibrated.pt')
    assert main(['--action-type', 'calibrate', '--model', 'differnet', '--checkpoint', path, '--calibration-path',
                 str(good), '--output', calibrated, '--no-cuda']) == 0
    assert load_differnet(calibrated) is not None  # the weights still load; the record rides beside them
    out = tmp_path / 'predictions'
    assert main(['--action-type', 'predict', '--checkpoint', calibrated, '--input', str(work / 'data' / 'tiles' / 'test'),
                 '--output-dir', str(out), '--scores-only', '--no-cuda', '--workers', '0']) == 0
    rows = {os.path.basename(r['source']): float(r['score'])
            for r in __import__('csv').DictReader(open(out / 'predictions.csv'))}
    assert close([rows[name] for name in INFO['images']], expected['score_fixed64'])  # the fixed views' scores
    detector = load_model(calibrated, sensitivity=1e6)  # every image decided defective: its mask is drawn
    result = detector.predict(source_path(work, 2))
    assert result.defective and result.size == (232, 168) and result.mask.shape == (168, 232)
    assert result.model_map.max() == pytest.approx(1.0) and 0 < result.mask.mean() < 0.5
    reference = expected['gradient_map'][0].numpy()
    assert np.unravel_index(result.model_map.argmax(), (448, 448)) == np.unravel_index(reference.argmax(), (448, 448))
    single = tmp_path / 'one'
    assert main(['--action-type', 'predict', '--checkpoint', calibrated, '--input', source_path(work, 3),
                 '--output-dir', str(single), '--no-cuda', '--workers', '0']) == 0
    (row,) = list(__import__('csv').DictReader(open(single / 'predictions.csv')))
    assert row['decision'] == 'defective' and int(row['defect_pixels']) > 0  # 3_scratch scores above t_I
    assert Image.open(single / row['mask']).size == (232, 168) and Image.open(single / row['overlay']).width > 232
    report = json.load(open(single / 'predictions.json'))
    assert 'DifferNet' in report['mask_rule'] and report['stored_thresholds']['pixel_threshold'] is None
    exported = str(tmp_path / 'differnet.onnx')
    assert main(['--action-type', 'export', '--checkpoint', calibrated, '--output', exported]) == 0
    onnx_detector = load_model(exported)
    assert onnx_detector.runtime == 'onnxruntime'
    on_onnx = onnx_detector.predict(source_path(work, 3))
    assert on_onnx.score == pytest.approx(rows[INFO['images'][3]], rel=1e-4)  # the same fixed views, the same score
    assert on_onnx.defective and not on_onnx.mask.any()  # no gradient map in a graph: decisions, no mask


def test_the_runner_runs_differnet_and_reports_its_image_auroc(tmp_path):
    import reproduce
    out = tmp_path / 'reproduce'
    assert reproduce.main(['--preset', 'differnet', '--dataset', 'demo', '--classes', 'bottle', '--runs', '1',
                           '-inp', '256', '-bs', '16', '--meta-epochs', '1', '--sub-epochs', '1', '--encoder-weights',
                           'none', '--workers', '0', '--no-cuda', '--output-dir', str(out),
                           '--data-path', str(tmp_path / 'data')]) == 0
    report = (out / 'report.md').read_text()
    (run,) = [json.load(open(p)) for p in (out / 'results').glob('*.json')]
    assert run['settings']['model_type'] == 'differnet' and run['settings']['enc_arch'] == 'alexnet'
    row = next(line for line in report.split('## DET_AUROC (%)')[1].splitlines() if line.startswith('| bottle'))
    assert f'{run["last"]["DET_AUROC"]:.2f}' in row and '## SEG_AUROC' not in report  # no map metrics to show
    # the same run is found again by its settings: a second call has nothing to do
    assert reproduce.main(['--preset', 'differnet', '--dataset', 'demo', '--classes', 'bottle', '--runs', '1',
                           '-inp', '256', '-bs', '16', '--meta-epochs', '1', '--sub-epochs', '1', '--encoder-weights',
                           'none', '--workers', '0', '--no-cuda', '--output-dir', str(out),
                           '--data-path', str(tmp_path / 'data')]) == 0
    assert len(list((out / 'results').glob('*.json'))) == 1
