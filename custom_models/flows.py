"""Decoders: one FrEIA 0.2 normalizing flow per pool layer, and their log-likelihood.

Each decoder maps a fiber (the C feature values at one position) to z ~ N(0, I):
    log p(x) = -C * ln(sqrt(2*pi)) - 0.5 * ||z||^2 + log|det J|
and the published code scores and trains on the per-dimension value log p(x) / C.
"""
import functools
import math
import warnings
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn
import FrEIA.framework as Ff
import FrEIA.modules as Fm

from custom_models.architectures import DECODER_ARCHS  # noqa: F401 (re-exported)
from utils.errors import CflowError

CONDITION_VEC = 128  # channels of the positional encoding (P)
CLAMP_ALPHA = 1.9
GAUSS_CONST = -0.9189385332046727  # ln(1 / sqrt(2*pi))


def subnet_fc(dims_in: int, dims_out: int) -> nn.Module:
    """The coupling sub-network: Linear(d_in, 2 d_in) -> ReLU -> Linear(2 d_in, d_out)."""
    return nn.Sequential(nn.Linear(dims_in, 2 * dims_in), nn.ReLU(), nn.Linear(2 * dims_in, dims_out))


@functools.lru_cache(maxsize=1)
def check_freia_maths() -> None:
    """Stop if the installed FrEIA is not the 0.2 release's maths. FrEIA's repository changed
    AllInOneBlock (clamp * tanh(a / clamp) instead of clamp * tanh(a), index permutations instead
    of C x C matrices) without changing its version string, and those give other numbers."""
    fix = 'pip install --force-reinstall FrEIA==0.2 (later code changed the coupling maths)'
    numpy_state, torch_state = np.random.get_state(), torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:  # the probe draws a permutation and weights: the RNGs are put back (seeded runs stay put)
            block = Fm.AllInOneBlock([(4,)], subnet_constructor=subnet_fc, affine_clamping=CLAMP_ALPHA,
                                     global_affine_type='SOFTPLUS', permute_soft=True)
            # a = 10: FrEIA 0.2 scales it by 0.1, then clamp * tanh(1.0) per coupled channel
            _, log_jac = block._affine(torch.zeros(1, 2), torch.full((1, 4), 10.0))
        except Exception as exc:  # another constructor or method: not the 0.2 module
            raise CflowError(f'the installed FrEIA ({Fm.__file__}) is not FrEIA 0.2 ({type(exc).__name__}): '
                             f'{fix}') from None
        finally:
            np.random.set_state(numpy_state)
            torch.random.set_rng_state(torch_state)
    w_perm = getattr(block, 'w_perm', None)
    expected = 2 * CLAMP_ALPHA * math.tanh(1.0)
    if not isinstance(w_perm, torch.Tensor) or tuple(w_perm.shape[:2]) != (4, 4) \
            or abs(float(log_jac.sum()) - expected) > 1e-5:
        raise CflowError(f'the installed FrEIA ({Fm.__file__}) computes AllInOneBlock differently from FrEIA 0.2 '
                         f'(coupling clamp or permutation): {fix}')


def build_decoder(dec_arch: str, n_feat: int, coupling_blocks: int,
                  condition_vec: int = CONDITION_VEC, clamp_alpha: float = CLAMP_ALPHA) -> Ff.SequenceINN:
    """A ``SequenceINN`` of ``coupling_blocks`` AllInOneBlocks over ``n_feat`` channels.

    ``freia-cflow`` conditions every block on the positional encoding; ``freia-flow``
    is the same flow without a condition. The soft permutations are drawn from numpy's
    global RNG (scipy's special_ortho_group), so seeding numpy fixes them.
    """
    if dec_arch not in DECODER_ARCHS:
        raise CflowError(f'unknown decoder {dec_arch!r}: choose one of {", ".join(DECODER_ARCHS)}')
    check_freia_maths()
    coder = Ff.SequenceINN(n_feat)
    cond = dict(cond=0, cond_shape=(condition_vec,)) if dec_arch == 'freia-cflow' else {}
    with warnings.catch_warnings():
        # FrEIA warns that soft permutations of >512 channels are slow to draw: they are
        # the published choice, and the cost is a few seconds once per run.
        warnings.filterwarnings('ignore', message='Soft permutation will take')
        for _ in range(coupling_blocks):
            coder.append(Fm.AllInOneBlock, subnet_constructor=subnet_fc, affine_clamping=clamp_alpha,
                         global_affine_type='SOFTPLUS', permute_soft=True, **cond)
    return coder


def build_decoders(dec_arch: str, pool_dims: List[int], coupling_blocks: int) -> List[Ff.SequenceINN]:
    return [build_decoder(dec_arch, dim, coupling_blocks) for dim in pool_dims]


def is_conditional(decoder: Ff.SequenceINN) -> bool:
    return decoder.conditions[0] is not None


def log_likelihood(decoder: Ff.SequenceINN, fibers: torch.Tensor,
                   positions: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-dimension log-likelihood log p(x) / C of each row of ``fibers`` (N x C).

    ``positions`` (N x P) condition a ``freia-cflow`` decoder and are ignored otherwise.
    """
    C = fibers.shape[1]
    if is_conditional(decoder):
        z, log_jac_det = decoder(fibers, [positions])
    else:
        z, log_jac_det = decoder(fibers)
    log_p = C * GAUSS_CONST - 0.5 * torch.sum(z ** 2, 1) + log_jac_det
    return log_p / C


def nll_loss(log_prob: torch.Tensor) -> torch.Tensor:
    """The published training loss per fiber: -log sigmoid(log p / C)."""
    return -torch.nn.functional.logsigmoid(log_prob)
