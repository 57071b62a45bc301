"""Calibrated maps put each feature cell on the input pixel its receptive field is centred on
(custom_models/receptive_field.py), so predicted masks sit on the defects; the published metrics keep the
published stretch."""
import numpy as np
import pytest
import torch

from custom_models.encoders import build_encoder
from custom_models.receptive_field import chain_grid
from utils.anomaly_map import calibrated_maps, grid_matrices, summed_probabilities, upsample


def without_squeeze_excitation(net):
    """Squeeze-excitation scales each channel by a statistic of the whole map: it moves no cell, but makes
    every gradient global. Replaced by the identity so the gradient shows the local receptive field."""
    for name, child in net.named_children():
        if 'SqueezeExcit' in type(child).__name__:
            setattr(net, name, torch.nn.Identity())
        else:
            without_squeeze_excitation(child)
    return net


def receptive_field_centre(encoder, tap: int, size: int):
    """(row cell, measured centre row) of the middle cell of ``tap``: the middle of the input rows whose
    gradient is non-zero (the receptive field), on a random input and random weights."""
    without_squeeze_excitation(encoder.net)
    x = torch.rand(1, 3, size, size, requires_grad=True)
    maps = encoder(x)
    cell = maps[tap].shape[2] // 2
    maps[tap][0, :, cell, cell].sum().backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3))).flatten()
    first, last = int(rows.min()), int(rows.max())
    assert first > 0 and last < size - 1, 'the receptive field is clipped: measure at a larger size'
    return cell, (first + last) / 2


# (encoder, -pl, input size, the taps whose receptive field fits inside that input)
@pytest.mark.parametrize('arch, pool_layers, size, taps', [('resnet18', 3, 512, (0, 1, 2)),
                                                            ('mobilenet_v3_large', 3, 512, (0, 1)),
                                                            ('tf_efficientnet_b5', 3, 456, (0,)),
                                                            ('efficientnet_b5', 3, 448, (0,))])
def test_each_cell_grid_is_the_receptive_field_centre(arch, pool_layers, size, taps):
    if 'efficientnet' in arch:
        pytest.importorskip('timm')
    torch.manual_seed(0)
    encoder = build_encoder(arch, pool_layers, 'none')
    grids = encoder.cell_grids(size)
    for tap in taps:
        cell, centre = receptive_field_centre(encoder, tap, size)
        assert centre == grids[tap].offset + grids[tap].stride * cell, (arch, tap)
    if arch == 'tf_efficientnet_b5':  # TensorFlow 'same' padding: the cells sit off the stride multiples
        assert grids[0].offset == 7.0


def test_a_vit_patch_token_sits_on_its_patch_centre():
    pytest.importorskip('timm')
    encoder = build_encoder('vit_base_patch16_224', 3, 'none')
    assert {(g.stride, g.offset) for g in encoder.cell_grids(224)} == {(16.0, 7.5)}  # pixels 16 i ... 16 i + 15


def test_tensorflow_same_padding_depends_on_the_size():
    # 3x3 stride 2 on an even size pads 0 before (offset +1), on an odd size 1 before (offset 0)
    assert chain_grid([(3, 2, 'same')], 8).offset == 1.0 and chain_grid([(3, 2, 'same')], 9).offset == 0.0
    assert chain_grid([(7, 2, 3), (3, 2, 1), (3, 2, 1)], 256).offset == 0.0


def test_centred_upsampling_places_a_cell_on_its_pixel_and_the_published_one_stretches():
    h, size, stride = 8, 64, 8.0
    prob = torch.zeros(1, h, h, dtype=torch.float64)
    prob[0, 6, 2] = 1.0
    centred = summed_probabilities([torch.log(prob + 1e-300)], (size, size), [0.0],
                                   grid_matrices([(h, h)], (size, size), [[stride, 0.0]]))[0]
    assert np.unravel_index(int(centred.argmax()), (size, size)) == (48, 16)  # stride x cell
    published = summed_probabilities([torch.log(prob + 1e-300)], (size, size), [0.0])[0]
    row, col = np.unravel_index(int(published.argmax()), (size, size))
    assert (row, col) == (54, 18)  # cell 6 of 8 stretched onto 63 / 7 px per cell: 6 px low, 2 px right
    # with the grid the stretch implies (stride (H - 1) / (h - 1), offset 0) the two code paths agree
    p = torch.rand(3, h, h, dtype=torch.float64)
    (pair,) = grid_matrices([(h, h)], (size, size), [[(size - 1) / (h - 1), 0.0]])
    torch.testing.assert_close(upsample(p, (size, size), pair), upsample(p, (size, size)), atol=1e-12, rtol=0)


def test_a_calibration_without_grids_keeps_the_published_stretch():
    """Files calibrated before the grids existed give the maps they were calibrated with."""
    log_probs = [torch.randn(2, 8, 8), torch.randn(2, 4, 4)]
    old = {'log_p_max': [0.0, 0.0], 'sum_max': 2.0}
    new = {**old, 'cell_grids': [[8.0, 0.0], [16.0, 0.0]]}
    expected = 2.0 - summed_probabilities([lp.double() for lp in log_probs], (64, 64), [0.0, 0.0]).numpy()
    np.testing.assert_allclose(calibrated_maps(log_probs, (64, 64), old), expected, rtol=0, atol=1e-12)
    assert np.abs(calibrated_maps(log_probs, (64, 64), new) - expected).max() > 1e-3
