"""GPU checks: skipped where CUDA is missing (CI has none); run them on a GPU machine.

    python -m pytest -q tests/test_cuda.py
"""
import numpy as np
import pytest
import torch

from config import parse_config
from custom_models.fibers import score_feature_map_loop
from custom_models.flows import build_decoder
from train import build_model, make_scorers, score_batch

from tests.test_reference_fixture import FIXTURES, fixture_config, relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


@pytest.mark.parametrize('name', FIXTURES)
def test_fixture_on_cuda(name):
    import os
    c, folder = fixture_config(name)
    c.device = 'cuda:0'
    c.no_cuda = False
    expected = torch.load(os.path.join(folder, 'expected.pt'), weights_only=False)
    encoder, decoders = build_model(c)  # channels_last encoder, cuDNN autotune
    with torch.inference_mode():
        log_probs = score_batch(c, encoder, make_scorers(c, decoders), expected['input'])
    for l, log_prob in enumerate(log_probs):
        assert relative_error(log_prob.cpu(), expected[f'log_prob_{l}']) < 1e-4


@pytest.mark.parametrize('compile_', [False, True])
def test_fused_scorer_on_cuda_equals_the_cpu_loop(compile_):
    np.random.seed(0)
    torch.manual_seed(0)
    decoder = build_decoder('freia-cflow', 64, 4).eval()
    feature_map = torch.randn(8, 64, 16, 16)
    with torch.inference_mode():
        reference = score_feature_map_loop(decoder, feature_map, 128)
        c = parse_config(['--no-cuda'] + (['--compile'] if compile_ else []))
        c.device = 'cuda:0'
        (scorer,) = make_scorers(c, [decoder.cuda()])
        fused = scorer(feature_map.cuda()).cpu()
    assert torch.allclose(fused, reference, rtol=1e-4, atol=1e-4)


def test_deployable_model_on_cuda_equals_the_cpu():
    """predict's model (normalisation, taps, fused decoders, calibrated maps) on CUDA against the CPU."""
    from custom_models.anomaly_model import AnomalyModel
    from custom_models.encoders import build_encoder
    from custom_models.flows import build_decoders
    torch.manual_seed(0)
    np.random.seed(0)
    encoder = build_encoder('resnet18', 3, 'none')
    decoders = build_decoders('freia-cflow', encoder.pool_dims, 4)
    calibration = {'log_p_max': [0.5, 0.5, 0.5], 'sum_max': 3.0}
    images = torch.rand(4, 3, 128, 128)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    with torch.inference_mode():
        cpu = AnomalyModel(encoder, decoders, 128, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), calibration).eval()
        maps, scores = cpu(images)
        gpu = AnomalyModel(encoder, decoders, 128, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                           calibration).to('cuda:0').eval()
        gpu_maps, gpu_scores = gpu(images.cuda())
    assert (gpu_maps.cpu() - maps).abs().max() / maps.abs().max() < 1e-4
    assert torch.allclose(gpu_scores.cpu(), scores, rtol=1e-4)
