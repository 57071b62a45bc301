"""Calibration after training never costs the model: a bad folder fails before training, a failed
calibration keeps the trained file and says how to calibrate it, and memory stays bounded."""
import json

import numpy as np
import pytest
import torch

from main import main
from utils.errors import CflowError

from tests.test_errors import assert_one_line_error, run_cli


TRAIN = ['--dataset', 'demo', '-enc', 'resnet18', '-inp', '64', '-bs', '64', '-cb', '1', '--meta-epochs', '1',
         '--sub-epochs', '1', '--workers', '0', '--no-cuda', '--encoder-weights', 'none']


def test_a_bad_calibration_folder_fails_before_training(capsys, tmp_path, demo_root):
    rc, err = run_cli(capsys, TRAIN + ['--data-path', demo_root, '--output-dir', str(tmp_path),
                                       '--calibration-path', str(tmp_path / 'typo')])
    assert_one_line_error(rc, err, 'is not a folder')
    assert 'train epoch' not in capsys.readouterr().out and not (tmp_path / 'weights').exists()


def test_a_failed_calibration_keeps_the_trained_model_and_says_how_to_calibrate(capsys, tmp_path, demo_root,
                                                                                  monkeypatch):
    import train

    def broken(*args, **kwargs):
        raise CflowError('calibration gave non-finite constants')
    monkeypatch.setattr(train, 'calibrate_images', broken)
    assert main(TRAIN + ['--data-path', demo_root, '--output-dir', str(tmp_path)]) == 0
    err = capsys.readouterr().err
    (checkpoint,) = (tmp_path / 'weights').iterdir()
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    assert {'encoder_state_dict', 'decoder_state_dict'} <= set(state) and 'calibration' not in state
    assert f'calibrate it with: python main.py --action-type calibrate --checkpoint {checkpoint}' in err
    assert '-enc resnet18' in err and '-inp 64' in err
    (result,) = (tmp_path / 'results').glob('*.json')
    record = json.loads(result.read_text())
    assert record['complete'] and 'non-finite' in record['epochs'][-1]['calibration_error']


def test_calibration_in_bounded_chunks_equals_the_whole_array(monkeypatch):
    """Thresholds from S made a few images at a time equal those of the full N x H x W arrays."""
    import utils.anomaly_map as anomaly_map
    import utils.calibration as calibration
    from utils.anomaly_map import summed_probabilities
    torch.manual_seed(0)
    n, size = 23, (40, 40)
    log_probs = [torch.randn(n, 10, 10) * 3, torch.randn(n, 5, 5) * 3]
    made = []

    def spy(lps, *args, **kwargs):
        made.append(lps[0].shape[0])
        return summed_probabilities(lps, *args, **kwargs)
    monkeypatch.setattr(calibration, 'CHUNK_VALUES', 3 * 1600)
    monkeypatch.setattr(anomaly_map, 'summed_probabilities', spy)
    record = calibration.calibrate_from_log_probs(log_probs, size, 'test', {}, pixel_quantile=0.95)
    assert max(made) == 3 and sum(made) == n  # never more than 3 images' maps at once
    shifts = [float(lp.max()) for lp in log_probs]
    total = summed_probabilities([lp.double() for lp in log_probs], size, shifts)
    maps = (total.max() - total).numpy()
    scores = maps.reshape(n, -1).max(axis=1)
    top, median = np.quantile(scores, 0.99), np.median(scores)
    image_threshold = top + 0.1 * (top - median)
    assert record['sum_max'] == float(total.max())
    assert record['image_threshold'] == pytest.approx(image_threshold, abs=1e-12)
    assert np.quantile(maps, 0.95) < image_threshold  # so the pixel rule, not the cap, decides
    assert record['pixel_threshold'] == pytest.approx(np.quantile(maps, 0.95), abs=1e-12)
