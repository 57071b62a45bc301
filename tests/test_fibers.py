import numpy as np
import pytest
import torch

from custom_models.fibers import score_feature_map, score_feature_map_loop, to_fibers
from custom_models.flows import build_decoder


@pytest.mark.parametrize('dec_arch', ['freia-cflow', 'freia-flow'])
def test_vectorised_scoring_equals_the_published_256_fiber_loop(dec_arch):
    np.random.seed(0)
    torch.manual_seed(0)
    decoder = build_decoder(dec_arch, 24, 4).eval()
    with torch.no_grad():  # move every weight off its init so the check means something
        for p in decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    feature_map = torch.randn(3, 24, 13, 11)  # 429 fibers: a partial last batch of 256
    with torch.inference_mode():
        loop = score_feature_map_loop(decoder, feature_map, 128)
        for chunk in (1000, 100, 7):
            fast = score_feature_map(decoder, feature_map, 128, chunk)
            assert torch.allclose(fast, loop, rtol=1e-5, atol=1e-5)


def test_fibers_are_row_major_over_batch_rows_columns():
    feature_map = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    fibers, positions = to_fibers(feature_map, 128)
    assert fibers.shape == (40, 3) and positions.shape == (40, 128)
    b, h, w = 1, 2, 3
    assert torch.equal(fibers[b * 20 + h * 5 + w], feature_map[b, :, h, w])
    assert torch.equal(positions[b * 20 + h * 5 + w], positions[h * 5 + w])


@pytest.mark.parametrize('dec_arch,channels', [('freia-cflow', 24), ('freia-cflow', 37), ('freia-flow', 37)])
def test_fused_scorer_equals_the_published_loop(dec_arch, channels):
    from custom_models.fast_flow import FastFlowScorer
    np.random.seed(1)
    torch.manual_seed(1)
    decoder = build_decoder(dec_arch, channels, 3).eval()
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    feature_map = torch.randn(4, channels, 9, 7)
    with torch.inference_mode():
        loop = score_feature_map_loop(decoder, feature_map, 128)
        scorer = FastFlowScorer(decoder)
        for chunk in (10_000, 63, 1):  # whole batch, one image per chunk, below one image
            fused = scorer(feature_map, chunk)
            assert torch.allclose(fused, loop, rtol=1e-5, atol=1e-5)
