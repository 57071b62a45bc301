"""Deferred idle-decoder steps against the published eager loop (one Adam over all, every step)."""
import copy

import pytest
import torch

from custom_models.flows import build_decoders
from utils.decoder_adam import DeferredAdam, EagerAdam, apply_idle_steps, idle_step_scalars
from utils.schedule import set_lr

TOLERANCE = 1e-5  # relative to the largest value of each tensor (the trajectory test allows 1e-4)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def test_closed_form_equals_zero_gradient_adam_steps_in_both_branches():
    """k zero-gradient torch Adam steps with changing lr, against one call; the elements cover
    the series (ordinary v), the exact sum (tiny v, v = 0 with m != 0) and m = v = 0."""
    torch.manual_seed(0)
    n = 4000
    m = torch.randn(n) * 1e-3
    v = torch.rand(n) * 1e-6
    v[:50] = torch.rand(50) * 1e-15  # r = eps / sqrt(v) far from small: the exact branch
    v[50:60] = 0.0                   # underflowed v with a non-zero m
    m[60:70], v[60:70] = 0.0, 0.0    # never had a gradient: must not move
    p0 = torch.randn(n)
    lrs = [2e-4 * (1 + 0.01 * j) if j < 70 else 5e-5 for j in range(130)]  # a rate change mid-way
    t0 = 37

    param = torch.nn.Parameter(p0.clone())
    eager = torch.optim.Adam([param], lr=lrs[0])
    eager.state[param] = {'step': torch.tensor(float(t0)), 'exp_avg': m.clone(), 'exp_avg_sq': v.clone()}
    param.grad = torch.zeros(n)
    for lr in lrs:
        set_lr(eager, lr)
        eager.step()

    p, m1, v1 = p0.clone(), m.clone(), v.clone()
    a, b = idle_step_scalars(lrs, t0, 0.9, 0.999)
    apply_idle_steps(p, m1, v1, a, b, 0.9, 0.999, 1e-8)
    state = eager.state[param]
    moved = (p0 - param.detach()).abs()
    assert moved[:60].min() > 0 and moved[60:70].max() == 0  # both branches actually move
    assert relative(p - p0, param.detach() - p0) < 1e-5  # the moves themselves, not just the weights
    assert relative(p, param.detach()) < 1e-6
    assert relative(m1, state['exp_avg']) < 1e-5
    assert relative(v1, state['exp_avg_sq']) < 1e-5
    assert torch.isfinite(p).all()


def train_unequal(stepper_class, decoders, dims, schedule, seed=1):
    """Steps the decoders in the given (layer, steps) runs, with a learning-rate change.

    The loss is linear in the weights with random coefficients (sum_p <G_t, p>), so each step's
    gradient does not depend on the weights: the two paths then differ by float32 rounding only.
    (Through a real flow loss, rounding differences grow chaotically: see utils/decoder_adam.py.)"""
    adam = torch.optim.Adam([p for d in decoders for p in d.parameters()], lr=2e-3, fused=False)
    stepper = DeferredAdam(adam, [list(d.parameters()) for d in decoders]) if stepper_class is DeferredAdam \
        else EagerAdam(adam)
    g = torch.Generator().manual_seed(seed)
    step = 0
    for layer, count in schedule:
        for _ in range(count):
            set_lr(stepper, 2e-3 * (1.0 if step < 100 else 0.3) * (1 + 1e-3 * step))
            stepper.prepare(layer)
            loss = sum((p * torch.randn(p.shape, generator=g)).sum() for p in decoders[layer].parameters()
                       if p.requires_grad)
            loss.backward()
            stepper.step(layer)
            step += 1
    stepper.flush()
    return adam


def test_long_unequal_stretch_matches_the_eager_loop():
    """150 steps of one decoder while the others wait (across a rate change), then the reverse:
    weights, both Adam moments and the step counts against the published eager loop."""
    torch.manual_seed(0)
    dims = [8, 16, 32]
    start = build_decoders('freia-cflow', dims, 2)
    schedule = [(0, 150), (1, 3), (2, 1), (0, 5), (2, 120), (1, 2), (0, 1)]
    eager_decoders, deferred_decoders = copy.deepcopy(start), copy.deepcopy(start)
    eager = train_unequal(EagerAdam, eager_decoders, dims, schedule)
    deferred = train_unequal(DeferredAdam, deferred_decoders, dims, schedule)
    checked = 0
    for ours_decoder, eager_decoder in zip(deferred_decoders, eager_decoders):
        for ours, theirs in zip(ours_decoder.parameters(), eager_decoder.parameters()):
            assert relative(ours, theirs) < TOLERANCE
            ours_state, eager_state = deferred.state.get(ours, {}), eager.state.get(theirs, {})
            assert bool(ours_state) == bool(eager_state)
            if not eager_state:
                continue
            assert float(ours_state['step']) == float(eager_state['step'])
            assert relative(ours_state['exp_avg'], eager_state['exp_avg']) < TOLERANCE
            assert relative(ours_state['exp_avg_sq'], eager_state['exp_avg_sq']) < TOLERANCE
            checked += 1
    assert checked == 3 * 2 * 6  # every trainable tensor: 3 decoders x 2 blocks x 6
    # the idle decoders did move while waiting: the deferred steps are not a no-op
    first_step_of_2 = 150 + 3 + 1  # its first loss; every later step moves it
    assert float(deferred.state[next(deferred_decoders[2].parameters())]["step"]) == sum(n for _, n in schedule) - first_step_of_2 + 1


def test_a_decoder_without_a_gradient_yet_is_not_moved():
    """As in the eager loop: a decoder that never had a loss has no gradient and stays put."""
    torch.manual_seed(0)
    decoders = build_decoders('freia-cflow', [8, 16], 1)
    before = [p.detach().clone() for p in decoders[1].parameters()]
    adam = train_unequal(DeferredAdam, decoders, [8, 16], [(0, 20)])
    assert all(torch.equal(b, p) for b, p in zip(before, decoders[1].parameters()))
    assert not any(p in adam.state for p in decoders[1].parameters())


def test_options_outside_the_closed_form_are_refused():
    param = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match='weight_decay'):
        DeferredAdam(torch.optim.Adam([param], weight_decay=1e-2), [[param]])
