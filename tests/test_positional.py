import math

import torch

from custom_models.positional import position_fibers, positionalencoding2d


def test_values_follow_the_published_formula():
    P, H, W = 8, 3, 5
    enc = positionalencoding2d(P, H, W)
    D = P // 2
    div = [math.exp(-i * math.log(1e4) / D) for i in range(0, D, 2)]  # [1, 0.01]
    assert torch.allclose(torch.tensor(div), torch.tensor([1.0, 0.01]))
    for h in range(H):
        for w in range(W):
            for j, d in enumerate(div):
                assert math.isclose(enc[2 * j, h, w], math.sin(w * d), abs_tol=1e-6)       # columns
                assert math.isclose(enc[2 * j + 1, h, w], math.cos(w * d), abs_tol=1e-6)
                assert math.isclose(enc[D + 2 * j, h, w], math.sin(h * d), abs_tol=1e-6)   # rows
                assert math.isclose(enc[D + 2 * j + 1, h, w], math.cos(h * d), abs_tol=1e-6)


def test_128_channel_encoding_spot_values():
    enc = positionalencoding2d(128, 16, 16)
    # channel 2 is sin(x * exp(-2 ln(1e4)/64)) of the column x, the same in every row
    assert math.isclose(enc[2, 7, 5], math.sin(5 * math.exp(-2 * math.log(1e4) / 64)), abs_tol=1e-6)
    assert torch.equal(enc[2, 0], enc[2, 9])
    # channel 65 is cos(y) of the row y, the same in every column
    assert math.isclose(enc[65, 7, 5], math.cos(7), abs_tol=1e-6)
    assert torch.equal(enc[65, :, 0], enc[65, :, 11])


def test_position_fibers_are_row_major_rows():
    rows = position_fibers(128, 4, 6, 'cpu')
    enc = positionalencoding2d(128, 4, 6)
    assert rows.shape == (24, 128)
    assert torch.equal(rows[2 * 6 + 3], enc[:, 2, 3])
