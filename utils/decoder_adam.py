"""How Adam steps the decoders: the published torch-1.8 ``zero_grad`` semantics, three ways.

``--adam`` chooses (``make_stepper``):

* ``fused`` (default): one ``torch.optim.Adam`` over every decoder, stepped in full at every
  fiber batch, as published, with torch's fused kernel (one pass per tensor instead of
  ~8): the same maths rounded slightly differently; on the trajectory fixture the final
  weights stay within 2.3e-5 relative of the authors' loop and the step losses within 1.3e-7.
* ``published``: the same with torch's default kernel, bit for bit the authors' loop.
* ``deferred``: the idle decoders' steps wait and are applied in one pass (below). Same
  maths, but each weight is rounded once per wait instead of once per step; the published
  loop amplifies such float32 differences through near-dead ReLU units (a 1e-7 relative
  nudge of its initial weights alone moves its final weights by 9e-5), so on the fixture
  its final weights differ by up to 1.1e-3 relative while every step loss matches to 2e-7.
  Opt-in.

The published loop steps Adam over all decoders at every fiber batch, although only one
decoder (the "active" one) had a loss: ``zero_grad()`` zeroed, not dropped, the others'
gradients, so Adam moves them too, by their momentum. That movement is part of the
published trajectory. With g = 0, one torch Adam step (no weight decay, no amsgrad) at
step count t and learning rate lr is

    m <- b1 m,   v <- b2 v,   p <- p - (lr / bc1_t) m / (sqrt(v) / sqrt(bc2_t) + eps),
    bc1_t = 1 - b1^t,   bc2_t = 1 - b2^t,

which needs nothing from the parameter itself, so k such steps (counts t0+1 .. t0+k,
rates lr_1 .. lr_k) can wait until the decoder is needed and then be applied in one pass.
From the moments m, v at the start of the wait:

    m <- b1^k m,   v <- b2^k v,   t <- t0 + k,
    p <- p - sum_j (lr_j / bc1_j) b1^j m / (b2^(j/2) sqrt(v) / sqrt(bc2_j) + eps)
      =  p - (m / sqrt(v)) F(r),      r = eps / sqrt(v),
    F(r) = sum_j a_j / (b_j + r),    a_j = (lr_j / bc1_j) b1^j,   b_j = b2^(j/2) / sqrt(bc2_j).

a_j, b_j are scalars of the schedule, b = min_j b_j, B = max_j b_j. Two geometric series
give F in a few operations per element, with scalar coefficients:

    small r (r <= rho b):   F(r) = sum_n (-r)^n c_n,        c_n = sum_j a_j / b_j^(n+1)
    large r (r >= B / rho): F(r) = sum_n (-1/r)^n d_n / r,  d_n = sum_j a_j b_j^n

each with ``SERIES_TERMS`` terms, so the first dropped term is below rho^SERIES_TERMS
(rho = ``SERIES_RATIO``: 6e-6 of the move, itself ~1e-3 of the weight). Written with
s = sqrt(v) the moves are

    small r:  m (1/s) sum_n c_n (-eps/s)^n,        large r:  m sum_n d_n (-s)^n / eps^(n+1),

the second also right at v = 0 (m d_0 / eps, as the eager loop gives). Elements between
the two (eps / s within rho b .. B / rho, i.e. v around 1e-16 .. 1e-13) take the exact sum
over j. m = 0 gives no move in all three, as in the eager loop.

``DeferredAdam`` steps the published optimizer's state per decoder, so the active decoder
takes torch's own step; ``EagerAdam`` is the published loop (one Adam over everything).
Both offer ``prepare(l)`` (before decoder l's forward), ``step(l)`` (after its backward) and
``flush()`` (before any use of the weights).
"""
from typing import List, Sequence

import torch

SERIES_TERMS = 4
SERIES_RATIO = 0.05
EXACT_CHUNK = 1 << 22  # elements x pending steps per chunk of the exact sum


def idle_step_scalars(lrs: Sequence[float], t0: float, beta1: float, beta2: float):
    """a_j and b_j of the k = len(lrs) idle steps after step count t0, in float64."""
    j = torch.arange(1, len(lrs) + 1, dtype=torch.float64)
    t = t0 + j
    lr = torch.tensor(list(lrs), dtype=torch.float64)
    a = lr / (1 - beta1 ** t) * beta1 ** j
    b = beta2 ** (j / 2) / torch.sqrt(1 - beta2 ** t)
    return a, b


def horner(x: torch.Tensor, coefficients: List[float]) -> torch.Tensor:
    """sum_n coefficients[n] x^n, in place on a new tensor."""
    result = x * coefficients[-1]
    for c in reversed(coefficients[1:-1]):
        result.add_(c).mul_(x)
    return result.add_(coefficients[0])


@torch.no_grad()
def apply_idle_steps(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                     a: torch.Tensor, b: torch.Tensor, beta1: float, beta2: float, eps: float) -> None:
    """k zero-gradient Adam steps of one parameter, in place, in one pass (maths above)."""
    k = a.numel()
    n = torch.arange(SERIES_TERMS, dtype=torch.float64)[:, None]
    c = ((a / b ** (n + 1)).sum(1) * (-eps) ** n[:, 0]).tolist()     # c_n (-eps)^n
    d = ((a * b ** n).sum(1) * (-1.0) ** n[:, 0] / eps ** (n[:, 0] + 1)).tolist()  # d_n (-1)^n / eps^(n+1)
    s = exp_avg_sq.sqrt()
    s_small_r = eps / (SERIES_RATIO * float(b.min()))  # s above this: small r
    s_large_r = eps * SERIES_RATIO / float(b.max())    # s below this: large r
    small_r = s >= s_small_r
    inv_s = s.reciprocal()  # inf where v = 0, not used there
    move = torch.where(small_r, horner(inv_s, c).mul_(inv_s), horner(s, d)).mul_(exp_avg)
    between = ~small_r & (s > s_large_r) & (exp_avg != 0)
    if bool(between.any()):
        index = between.nonzero(as_tuple=True)
        m, root_v = exp_avg[index].double(), s[index].double()
        a_, b_ = a.to(s.device)[:, None], b.to(s.device)[:, None]
        step = max(1, EXACT_CHUNK // k)
        parts = [(a_ / (b_ * root_v[i:i + step] + eps)).sum(0) * m[i:i + step] for i in range(0, m.numel(), step)]
        move[index] = torch.cat(parts).to(move.dtype)
    param.sub_(move)
    exp_avg.mul_(beta1 ** k)
    exp_avg_sq.mul_(beta2 ** k)


ADAM_MODES = ('fused', 'published', 'deferred')


def make_stepper(mode: str, optimizer: torch.optim.Adam, param_lists: List[List[torch.nn.Parameter]]):
    """The stepper of ``--adam mode`` over the published optimizer (module docstring)."""
    if mode not in ADAM_MODES:
        raise ValueError(f'unknown Adam mode {mode!r}: one of {", ".join(ADAM_MODES)}')
    if mode == 'deferred':
        return DeferredAdam(optimizer, param_lists)
    if mode == 'fused':
        prefer_fused(optimizer)
    return EagerAdam(optimizer)


def prefer_fused(optimizer: torch.optim.Adam) -> None:
    """Torch's fused Adam kernel where it exists and the caller chose no kernel. Set before the
    first step, since Adam makes its state (the step counter's device) to suit the kernel."""
    group = optimizer.param_groups[0]
    params = [p for g in optimizer.param_groups for p in g['params']]
    if group.get('fused') is None and not optimizer.state and all(
            p.dtype == torch.float32 and p.device.type in ('cpu', 'cuda') for p in params):
        for g in optimizer.param_groups:
            g['fused'], g['foreach'] = True, False


def check_adam_group(group: dict) -> None:
    """The closed form holds for plain Adam only: the options the published loop uses."""
    unsupported = [name for name, plain in (('weight_decay', 0), ('amsgrad', False), ('maximize', False))
                   if group.get(name, plain) != plain]
    if unsupported:
        raise ValueError(f'DeferredAdam supports plain Adam only, not {", ".join(unsupported)}')


class DeferredAdam:
    """The published optimizer (one ``torch.optim.Adam`` over all decoders), stepped per decoder.

    Each decoder gets a ``torch.optim.Adam`` of its own with the same options, sharing the
    published optimizer's ``state`` (keyed by parameter), so the active decoder takes
    torch's own step and the published optimizer holds the same state after ``flush()``.
    Idle decoders' steps wait and are applied in one pass.
    """

    def __init__(self, optimizer: torch.optim.Adam, param_lists: List[List[torch.nn.Parameter]]):
        prefer_fused(optimizer)
        group = optimizer.param_groups[0]
        check_adam_group(group)
        options = {key: value for key, value in group.items() if key != 'params'}
        self.published = optimizer
        self.optimizers = []
        for params in param_lists:
            per_decoder = torch.optim.Adam(params, **options)
            per_decoder.state = optimizer.state
            self.optimizers.append(per_decoder)
        self.params = [[p for p in params if p.requires_grad] for params in param_lists]
        self.pending: List[List[float]] = [[] for _ in param_lists]  # lr of every idle step not yet applied

    @property
    def param_groups(self) -> List[dict]:
        """Every group, the published one included: ``utils.schedule.set_lr`` sets them all."""
        return self.published.param_groups + [g for optimizer in self.optimizers for g in optimizer.param_groups]

    def started(self, layer: int) -> bool:
        """Whether the eager loop moves this decoder when it is idle: once it has had a gradient
        (zeroed since, not dropped), which is when Adam made its state."""
        return any(p in self.published.state for p in self.params[layer])

    def prepare(self, active: int) -> None:
        """Before decoder ``active``'s forward: its waiting steps applied, its gradients zeroed."""
        self.flush_one(active)
        self.optimizers[active].zero_grad(set_to_none=False)

    def step(self, active: int) -> None:
        """Torch's Adam step for the decoder with the loss; an idle step recorded for every other
        decoder that the eager loop would move."""
        optimizer = self.optimizers[active]
        optimizer.step()
        lr = optimizer.param_groups[0]['lr']
        for layer in range(len(self.optimizers)):
            if layer != active and self.started(layer):
                self.pending[layer].append(lr)

    def flush(self) -> None:
        """Apply every waiting step (before a test pass, a checkpoint, or any read of the weights)."""
        for layer in range(len(self.optimizers)):
            self.flush_one(layer)

    def flush_one(self, layer: int) -> None:
        lrs = self.pending[layer]
        if not lrs:
            return
        group = self.optimizers[layer].param_groups[0]
        beta1, beta2 = group['betas']
        scalars = {}  # by step count: all parameters of a decoder share one, computed once
        for param in self.params[layer]:
            state = self.published.state.get(param)
            if not state:
                continue
            t0 = float(state['step'])
            if t0 not in scalars:
                scalars[t0] = idle_step_scalars(lrs, t0, beta1, beta2)
            apply_idle_steps(param, state['exp_avg'], state['exp_avg_sq'], *scalars[t0], beta1, beta2, group['eps'])
            state['step'] += len(lrs)
        self.pending[layer] = []


class EagerAdam:
    """The published loop: the one Adam over every decoder, stepped in full at every fiber batch."""

    def __init__(self, optimizer: torch.optim.Adam):
        self.published = optimizer
        self.param_groups = optimizer.param_groups

    def prepare(self, active: int) -> None:
        self.published.zero_grad(set_to_none=False)  # torch 1.8: zeroed, not dropped

    def step(self, active: int) -> None:
        self.published.step()

    def flush(self) -> None:
        pass
