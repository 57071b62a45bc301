"""The training loop does what the published one does, step for step."""
import numpy as np
import pytest
import torch

from config import parse_config
from actions import data_options, loader_options, score_options, train_options
from custom_datasets import build_datasets
from custom_datasets.loaders import make_loader
from custom_models.training import train_meta_epoch
from train import build_model
from utils.schedule import warmup_lr


class RecordingAdam(torch.optim.Adam):
    """Adam that records, per step, which decoders carry a non-zero gradient, the
    learning rate, and whether decoder 0's weights moved."""

    def __init__(self, decoders, lr):
        self.decoders = decoders
        super().__init__([p for d in decoders for p in d.parameters()], lr=lr)
        self.log = []

    def step(self, closure=None):
        with_grad = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())
                     for d in self.decoders]
        before = self.decoders[0].module_list[0].subnet[0].weight.detach().clone()
        super().step(closure)
        moved = not torch.equal(before, self.decoders[0].module_list[0].subnet[0].weight)
        self.log.append({'grad': with_grad, 'lr': self.param_groups[0]['lr'], 'moved0': moved})


def test_fiber_batches_zero_grad_and_warmup_follow_the_published_loop(demo_root):
    c = parse_config(['--dataset', 'demo', '--data-path', demo_root, '-enc', 'resnet18', '-inp', '128', '-cb', '2',
                      '-bs', '16', '--meta-epochs', '25', '--sub-epochs', '1', '--workers', '0', '--no-cuda',
                      '--encoder-weights', 'none'])
    train_set, _ = build_datasets(data_options(c))
    encoder, decoders = build_model(c)
    loader = make_loader(train_set, True, loader_options(c))
    optimizer = RecordingAdam(decoders, c.lr)
    train_meta_epoch(train_options(c), 0, loader, encoder, decoders, optimizer)

    # 64 images, batch 16 -> 4 image batches; taps 16x16, 8x8, 4x4 give E = 4096, 1024, 256
    # fibers, i.e. floor(E/256) = 16 + 4 + 1 steps per image batch, layer after layer.
    per_batch = [0] * 16 + [1] * 4 + [2]
    assert len(optimizer.log) == 4 * len(per_batch)
    for step, layer in zip(optimizer.log, per_batch * 4):
        assert step['grad'] == [l == layer for l in range(3)]
    # zero_grad(set_to_none=False): once decoder 0 has a (zeroed) gradient, Adam's
    # momentum moves it in steps whose loss came from other decoders.
    later_steps = optimizer.log[16:21]
    assert all(step['moved0'] for step in later_steps)
    # warm-up: one learning rate per image batch, linear from lr/10
    lrs = [step['lr'] for step in optimizer.log]
    for b in range(4):
        expected = warmup_lr(c.lr, c.meta_epochs, 0, b, 4)
        assert lrs[b * 21:(b + 1) * 21] == pytest.approx([expected] * 21, rel=1e-12)
    assert lrs[0] == pytest.approx(c.lr / 10)


def test_training_is_reproducible_with_a_seed(demo_root):
    def train_once(seed):
        c = parse_config(['--dataset', 'demo', '--data-path', demo_root, '-enc', 'resnet18', '-inp', '128', '-pl', '1',
                          '-cb', '2', '-bs', '16', '--sub-epochs', '1', '--workers', '0', '--no-cuda',
                          '--encoder-weights', 'none', '--seed', str(seed)])
        train_set, _ = build_datasets(data_options(c))
        encoder, decoders = build_model(c)
        optimizer = torch.optim.Adam([p for d in decoders for p in d.parameters()], lr=c.lr)
        loader = make_loader(train_set, True, loader_options(c))
        return train_meta_epoch(train_options(c), 0, loader, encoder, decoders, optimizer)

    assert train_once(5) == train_once(5)
    assert train_once(5) != train_once(6)


def test_test_passes_after_the_first_replay_identical_batches_without_reading_files(demo_root, monkeypatch):
    from custom_datasets.loaders import ReplayLoader
    from custom_models.scoring import score_loader as score_test_set
    c = parse_config(['--dataset', 'demo', '--data-path', demo_root, '-enc', 'resnet18', '-inp', '64', '-cb', '2',
                      '-bs', '16', '--workers', '0', '--no-cuda', '--encoder-weights', 'none'])
    _, test_set = build_datasets(data_options(c))
    encoder, decoders = build_model(c)
    loader = ReplayLoader(make_loader(test_set, False, loader_options(c)), c.test_cache_mb)
    first = score_test_set(score_options(c), loader, encoder, decoders)

    def no_reading(*args):
        raise AssertionError('a replayed pass read an image file')
    monkeypatch.setattr(type(test_set), '__getitem__', no_reading)
    second = score_test_set(score_options(c), loader, encoder, decoders)
    for a, b in zip(first.log_probs, second.log_probs):
        assert torch.equal(a, b)
    assert np.array_equal(first.masks, second.masks) and np.array_equal(first.labels, second.labels)

    # with no budget nothing is kept: the second pass reads the files again
    monkeypatch.undo()
    unbuffered = ReplayLoader(make_loader(test_set, False, loader_options(c)), 0)
    score_test_set(score_options(c), unbuffered, encoder, decoders)
    assert unbuffered.batches is None


def test_training_batches_do_not_depend_on_the_worker_count(demo_root):
    """Order and rotation angles come from the sampler in the main process, not from each worker's RNG."""
    def batches(workers):
        c = parse_config(['--dataset', 'demo', '--data-path', demo_root, '-enc', 'resnet18', '-inp', '64',
                          '-bs', '16', '--workers', str(workers), '--no-cuda', '--seed', '3'])
        train_set, _ = build_datasets(data_options(c))
        loader = make_loader(train_set, True, loader_options(c))
        return [image for _ in range(2) for image, _, _ in loader]  # two passes: new order, new angles

    zero, two = batches(0), batches(2)
    assert len(zero) == 8 and all(torch.equal(a, b) for a, b in zip(zero, two))
    assert not torch.equal(zero[0], zero[4])  # the second pass is another draw
