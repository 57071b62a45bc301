"""GPU checks: skipped where CUDA is missing (CI has none); run them on a GPU machine.

    python -m pytest -q tests/test_cuda.py
"""
import numpy as np
import pytest
import torch

from config import parse_config
from custom_models.fibers import score_feature_map_loop
from custom_models.flows import build_decoder
from actions import score_options
from custom_models.scoring import make_scorers, score_batch
from train import build_model

from tests.test_reference_fixture import FIXTURES, fixture_config, relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


@pytest.mark.parametrize('name', FIXTURES)
def test_fixture_on_cuda(name):
    import os
    c, folder = fixture_config(name)
    c = c.replace(device='cuda:0', no_cuda=False)
    expected = torch.load(os.path.join(folder, 'expected.pt'), weights_only=False)
    encoder, decoders = build_model(c)  # channels_last encoder, cuDNN autotune
    with torch.inference_mode():
        options = score_options(c)
        log_probs = score_batch(options, encoder, make_scorers(options, decoders), expected['input'])
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
        c = parse_config(['--no-cuda'] + (['--compile'] if compile_ else [])).replace(device='cuda:0')
        (scorer,) = make_scorers(score_options(c), [decoder.cuda()])
        fused = scorer(feature_map.cuda()).cpu()
    assert torch.allclose(fused, reference, rtol=1e-4, atol=1e-4)


def test_deployable_model_on_cuda_equals_the_cpu():
    """predict's model (normalisation, taps, fused decoders, calibrated maps) on CUDA against the CPU:
    the per-layer log-likelihoods themselves, and maps calibrated on these images, so that they span
    their whole range instead of sitting at a constant (where a relative bound proves little)."""
    from custom_models.anomaly_model import AnomalyModel
    from custom_models.encoders import build_encoder
    from custom_models.flows import build_decoders
    torch.manual_seed(0)
    np.random.seed(0)
    encoder = build_encoder('resnet18', 3, 'none')
    decoders = build_decoders('freia-cflow', encoder.pool_dims, 4)
    images = torch.rand(4, 3, 128, 128)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    args = (encoder, decoders, 128, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    grids = [g.as_list() for g in encoder.cell_grids(128)]  # maps centred on the cells, as calibration records
    with torch.inference_mode():
        probe = AnomalyModel(*args, {'log_p_max': [0.0] * 3, 'sum_max': 0.0}).eval()
        log_probs = probe.log_probs(images)
        shifts = [float(lp.max()) for lp in log_probs]  # m_l, as calibration measures them
        total = -AnomalyModel(*args, {'log_p_max': shifts, 'sum_max': 0.0, 'cell_grids': grids}).eval()(images)[0]  # S
        calibration = {'log_p_max': shifts, 'sum_max': float(total.max()), 'cell_grids': grids}
        cpu = AnomalyModel(*args, calibration).eval()
        maps, scores = cpu(images)
        gpu = AnomalyModel(*args, calibration).to('cuda:0').eval()
        gpu_log_probs = gpu.log_probs(images.cuda())
        gpu_maps, gpu_scores = gpu(images.cuda())
    assert maps.std() > 0.1 * maps.abs().max()  # a map that varies
    for ours, theirs in zip(gpu_log_probs, log_probs):
        assert (ours.cpu() - theirs).abs().max() / theirs.abs().max() < 1e-5
    assert (gpu_maps.cpu() - maps).abs().max() / maps.abs().max() < 1e-4
    assert torch.allclose(gpu_scores.cpu(), scores, rtol=1e-4)


@pytest.mark.parametrize('adam', ['fused', 'deferred', 'published'])
def test_training_on_cuda_follows_the_cpu(adam):
    """One meta epoch of the published trajectory fixture on CUDA and on the CPU: every step loss,
    and the final weights (one epoch: too short for float32 differences to grow)."""
    import copy
    import os
    from custom_models.flows import build_decoders
    from custom_models.training import TrainOptions, train_meta_epoch
    from tests.test_trajectory import TRAJECTORY, TapReplay
    t = torch.load(TRAJECTORY, weights_only=False)
    s = t['settings']
    runs = {}
    for device in ('cpu', 'cuda:0'):
        c = TrainOptions(lr=s['lr'], meta_epochs=s['meta_epochs'], sub_epochs=s['sub_epochs'],
                         fiber_batch=s['fiber_batch'], condition_vec=s['condition_vec'], device=device, adam=adam)
        decoders = build_decoders('freia-cflow', s['channels'], s['coupling_blocks'])
        for decoder, state in zip(decoders, t['init_decoder_state_dict']):
            decoder.load_state_dict(state)
        decoders = [d.to(device) for d in decoders]
        optimizer = torch.optim.Adam([p for d in decoders for p in d.parameters()], lr=c.lr)
        taps = [[tap.to(device) for tap in batch] for batch in t['taps']]
        loader = [(torch.full((s['batch'],), b), None, None) for b in range(s['image_batches'])]
        torch.manual_seed(s['seed'])
        steps = []
        train_meta_epoch(c, 0, loader, TapReplay(taps), decoders, optimizer, step_log=steps)
        runs[device] = (torch.tensor([l for l, _ in steps], dtype=torch.float64), decoders)
    (cpu_loss, cpu_decoders), (gpu_loss, gpu_decoders) = runs['cpu'], runs['cuda:0']
    assert ((gpu_loss - cpu_loss).abs() / cpu_loss.abs()).max() < 1e-4
    for a, b in zip(gpu_decoders, cpu_decoders):
        for p, q in zip(a.parameters(), b.parameters()):
            assert (p.detach().cpu() - q.detach()).abs().max() / q.abs().max() < 1e-3
