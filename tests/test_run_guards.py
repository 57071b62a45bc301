"""A training run as published, guarded: full fp32 unless --tf32; divergence and non-finite scores stop it with
one line; a NaN metric is never the max; runs never share files; --save-best keeps the published checkpoint too."""
import json
import os

import numpy as np
import torch

import custom_models.scoring
import custom_models.training
from actions import read_settings
from config import apply_process_settings, parse_config
from main import main
from utils.results import ScoreObserver, reserve_run

from tests.conftest import reference_checkpoint
from tests.test_errors import assert_one_line_error, folder_args, run_cli


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
