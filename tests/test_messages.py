"""Output a person can trust: notices only when they apply, counts in English, every flag explained."""
import torch

from actions import read_settings
from config import parse_config

from tests.conftest import reference_checkpoint


R18 = reference_checkpoint('cflow_r18')


def test_no_cuda_notice_unless_gpu_was_passed_and_no_demo_defaults_for_norm_test(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    parse_config(['--dataset', 'demo'])
    out = capsys.readouterr().out
    assert 'CUDA' not in out and 'Demo defaults' in out
    parse_config(['--dataset', 'demo', '--gpu', '0'])
    assert '--gpu 0 is ignored' in capsys.readouterr().out
    read_settings(['--dataset', 'demo', '--action-type', 'norm-test', '--checkpoint', R18, '-cb', '4'])
    assert 'Demo defaults' not in capsys.readouterr().out


def test_counts_read_as_english_and_every_bench_flag_says_what_it_does():
    from benchmarks.cli import build_parser as bench_parser
    from utils.progress import count
    assert count(1, 'image') == '1 image' and count(0, 'image') == '0 images' and count(2, 'frame') == '2 frames'
    assert [a.option_strings for a in bench_parser()._actions if not a.help] == []
    from config import build_parser
    (bs,) = [a for a in build_parser()._actions if '-bs' in a.option_strings]
    assert 'predict' in bs.help and 'calibration' in bs.help
