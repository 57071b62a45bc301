"""The deployable model is an ordinary module, encoders are thread-safe, and a FrEIA with other maths
than the published is refused at start-up."""
import threading

import numpy as np
import pytest
import torch

from utils.errors import CflowError


def tiny_model(arch='resnet18'):
    from custom_models.anomaly_model import AnomalyModel
    from custom_models.encoders import build_encoder
    from custom_models.flows import build_decoders
    torch.manual_seed(0)
    np.random.seed(0)
    encoder = build_encoder(arch, 3, 'none')
    decoders = build_decoders('freia-cflow', encoder.pool_dims, 1)
    return AnomalyModel(encoder, decoders, 64, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2),
                        {'log_p_max': [0.0] * 3, 'sum_max': 3.0}).eval()


def test_the_deployable_model_is_an_ordinary_module():
    model = tiny_model()
    state = model.state_dict()
    assert any(k.startswith('scorers.2.block0_w1x') for k in state)  # the flows are in it
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        before = model(images)[0]
        moved = model.to('cpu', non_blocking=True)  # raised before
        assert moved is model
        double = model.double()
        assert double.scorers[0].block0_w1x.dtype == torch.float64
        after = double(images.double())[0]
    assert (after.float() - before).abs().max() <= 1e-4 * before.abs().max()


def test_threads_sharing_a_mobilenet_keep_their_own_taps():
    from custom_models.encoders import build_encoder
    torch.manual_seed(0)
    encoder = build_encoder('mobilenet_v3_large', 3, 'none')
    inputs = [torch.rand(1, 3, 96, 96) for _ in range(4)]
    with torch.inference_mode():
        expected = [encoder(x) for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(5):
            with torch.inference_mode():
                results[i] = encoder(inputs[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert len(got) == 3 and all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize('change', ['clamp', 'permutation'])
def test_a_freia_with_other_maths_is_refused(change, monkeypatch):
    import FrEIA.modules as Fm
    from custom_models import flows
    flows.check_freia_maths.cache_clear()
    if change == 'clamp':  # the repository's later coupling: clamp * tanh(a / clamp)
        def affine(self, x, a, rev=False):
            a = a * 0.1
            ch = x.shape[1]
            sub_jac = self.clamp * torch.tanh(a[:, :ch] / self.clamp)
            return x * torch.exp(sub_jac) + a[:, ch:], torch.sum(sub_jac, dim=1)
        monkeypatch.setattr(Fm.AllInOneBlock, '_affine', affine)
    else:  # index permutations instead of C x C matrices
        original = Fm.AllInOneBlock.__init__

        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            del self.w_perm
            self.register_buffer('w_perm', torch.arange(self.in_channels))
        monkeypatch.setattr(Fm.AllInOneBlock, '__init__', init)
    try:
        with pytest.raises(CflowError, match='FrEIA==0.2'):
            flows.build_decoder('freia-cflow', 8, 1)
    finally:
        flows.check_freia_maths.cache_clear()
    monkeypatch.undo()
    flows.build_decoder('freia-cflow', 8, 1)  # the installed 0.2 passes
