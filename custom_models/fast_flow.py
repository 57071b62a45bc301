"""A test-time scorer that computes a FrEIA decoder's log-likelihood with less work.

Each AllInOneBlock (FrEIA 0.2, no Householder, no pre-permutation, not GIN) computes
    x1, x2 = split(x)
    a      = 0.1 * (W2 relu(W1x x1 + W1c c + b1) + b2)           (subnet on [x1; c])
    s, t   = clamp * tanh(a[:, :C2]), a[:, C2:]
    y      = perm((x1, x2 * exp(s) + t) * sigma + offset),  sigma = 0.1 softplus_0.5(global_scale)
    log|det J| += sum(s) + sum(log sigma)
Two rewrites change no maths, only the order of float additions:

* the condition c is the positional encoding of the fiber's (h, w), the same for every
  image, so ``W1c c + b1`` is computed once per map position and block, and broadcast
  over the batch (for small C it is most of the first layer's work);
* the global scale and offset fold into the permutation: y = x @ (P * sigma)^T + P offset.

The results equal the FrEIA modules' to float32 round-off (tests check 1e-5); the
decoders stay FrEIA modules for training and checkpoints. Built from a decoder after its
weights are loaded; rebuild it if they change.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from custom_models.flows import CONDITION_VEC, GAUSS_CONST, is_conditional
from custom_models.positional import position_fibers


TENSOR_KEYS = ('w1x', 'w1c', 'b1', 'w2', 'b2', 'w_perm', 'b_perm')


class FastFlowScorer(nn.Module):
    """Per-dimension log-likelihood maps of a frozen FrEIA ``SequenceINN``."""

    def __init__(self, decoder, condition_vec: int = CONDITION_VEC):
        super().__init__()
        self.conditional = is_conditional(decoder)
        self.condition_vec = condition_vec
        self.channels = decoder.shapes[0][0]
        blocks = []
        log_det_const = 0.0
        with torch.no_grad():
            for block in decoder.module_list:
                if block.GIN or block.householder or block.reverse_pre_permute:
                    raise ValueError('FastFlowScorer handles plain AllInOneBlocks only')
                s1, s2 = block.splits
                lin1, lin2 = block.subnet[0], block.subnet[2]
                sigma = block.global_scale_activation(block.global_scale).reshape(-1)
                w_perm = block.w_perm.reshape(self.channels, self.channels)
                blocks.append({
                    'split': s1, 'clamp': float(block.clamp),
                    'w1x': lin1.weight[:, :s1].contiguous(), 'w1c': lin1.weight[:, s1:].contiguous(),
                    'b1': lin1.bias.clone(),
                    # 0.1 * (W2 h + b2), the coupling's down-scaling folded into the layer
                    'w2': (0.1 * lin2.weight).contiguous(), 'b2': 0.1 * lin2.bias,
                    'w_perm': (w_perm * sigma.reshape(1, -1)).contiguous(),
                    'b_perm': F.linear(block.global_offset.reshape(1, -1), w_perm).reshape(-1),
                })
                log_det_const = log_det_const + torch.sum(torch.log(sigma))
        # Buffers, so state_dict(), .to(), .cuda(), .double() and friends see every tensor.
        self.splits = [b['split'] for b in blocks]
        self.clamps = [b['clamp'] for b in blocks]
        for i, b in enumerate(blocks):
            for name in TENSOR_KEYS:
                self.register_buffer(f'block{i}_{name}', b[name].detach().clone())
        # a tensor, not a float: torch.compile would specialise on (and recompile for) each value
        self.register_buffer('log_det_const', log_det_const.detach().reshape(()).clone())
        self._condition_cache: Dict[Tuple[int, int, str, torch.dtype], List[torch.Tensor]] = {}
        self.score_fibers = coupling_log_likelihood  # --compile swaps in a compiled one

    @property
    def blocks(self) -> List[dict]:
        """Per block, its split, clamp and tensors (the buffers), as ``coupling_log_likelihood`` takes them."""
        return [{'split': split, 'clamp': clamp, **{name: getattr(self, f'block{i}_{name}') for name in TENSOR_KEYS}}
                for i, (split, clamp) in enumerate(zip(self.splits, self.clamps))]

    def _apply(self, fn, *args, **kwargs):
        self._condition_cache = {}  # cached on the old device or dtype
        return super()._apply(fn, *args, **kwargs)

    def _condition_terms(self, H: int, W: int, device) -> List[torch.Tensor]:
        """Per block, W1c c + b1 for the H*W positions (or b1 alone without a condition)."""
        blocks = self.blocks
        key = (H, W, str(device), blocks[0]['b1'].dtype)
        if key not in self._condition_cache:
            if self.conditional:
                positions = position_fibers(self.condition_vec, H, W, str(device)).to(blocks[0]['b1'].dtype)
                terms = [F.linear(positions, b['w1c'], b['b1']) for b in blocks]
            else:
                terms = [b['b1'].reshape(1, -1) for b in blocks]
            self._condition_cache[key] = terms
        return self._condition_cache[key]

    def score_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """B x H x W log p / C of a whole batch in one call (no Python loop over the batch, so
        it traces and exports with a dynamic batch axis)."""
        B, C, H, W = feature_map.shape
        fibers = feature_map.permute(0, 2, 3, 1).reshape(B, H * W, C)
        log_p = coupling_log_likelihood(fibers, self.blocks, self._condition_terms(H, W, feature_map.device),
                                        self.log_det_const)
        return log_p.reshape(B, H, W)

    def forward(self, feature_map: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """B x H x W log p / C of every fiber of ``feature_map`` (B x C x H x W)."""
        B, C, H, W = feature_map.shape
        S = H * W
        terms = self._condition_terms(H, W, feature_map.device)
        fibers = feature_map.permute(0, 2, 3, 1).reshape(B, S, C)
        out = torch.empty(B, S, device=feature_map.device, dtype=feature_map.dtype)
        per_chunk = max(1, chunk // S)  # whole images, so the per-position terms broadcast
        blocks = self.blocks
        for start in range(0, B, per_chunk):
            out[start:start + per_chunk] = self.score_fibers(fibers[start:start + per_chunk], blocks,
                                                             terms, self.log_det_const)
        return out.reshape(B, H, W)


def coupling_log_likelihood(x: torch.Tensor, blocks: List[dict], terms: List[torch.Tensor],
                            log_det_const: torch.Tensor) -> torch.Tensor:
    """log p / C of b x S x C fibers through the rewritten blocks (see the module docstring).

    A plain function of its inputs, so ``torch.compile`` of it (``--compile``) is keyed on
    tensor shapes only and serves every scorer and test pass without recompiling.
    """
    C = x.shape[-1]
    log_det = torch.zeros(x.shape[:2], device=x.device, dtype=x.dtype)
    for block, term in zip(blocks, terms):
        s1 = block['split']
        x1, x2 = x[..., :s1], x[..., s1:]
        hidden = torch.relu(torch.matmul(x1, block['w1x'].t()) + term)
        a = F.linear(hidden, block['w2'], block['b2'])
        s = block['clamp'] * torch.tanh(a[..., :C - s1])
        x2 = x2 * torch.exp(s) + a[..., C - s1:]
        log_det = log_det + s.sum(-1)
        x = F.linear(torch.cat((x1, x2), -1), block['w_perm'], block['b_perm'])
    log_p = C * GAUSS_CONST - 0.5 * (x * x).sum(-1) + log_det + log_det_const
    return log_p / C
