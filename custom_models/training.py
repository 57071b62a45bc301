"""The published training steps of the decoders: one meta epoch of sub-epochs over the images.

Per image batch and per pool layer: a fresh random permutation of the B*H*W fibers, cut into
floor(E/N) batches of N = 256; each step minimises -logsigmoid(log p / C) with Adam over all
decoders together, ``zero_grad(set_to_none=False)`` as in torch 1.8; the learning rate follows
the published warm-up and cosine schedule (``utils/schedule.py``). ``train.py`` orchestrates
(data, epochs, checkpoints, results); this module is only the numerical loop.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader

from custom_models.fibers import to_fibers
from custom_models.flows import CONDITION_VEC, log_likelihood, nll_loss
from utils.decoder_adam import make_stepper
from utils.errors import CflowError
from utils.progress import progress
from utils.schedule import cosine_lr, set_lr, warmup_lr


def check_finite_loss(mean_loss: float, epoch: int, sub_epoch: int) -> None:
    """Stop a diverged flow where the loss is synchronised anyway: the end of a sub-epoch."""
    if not math.isfinite(mean_loss):
        raise CflowError(f'training diverged: the loss of epoch {epoch}.{sub_epoch} is {mean_loss}; '
                         f'lower --lr, use fewer -cb/--coupling-blocks, or check the images for '
                         f'extreme values (the results of earlier epochs are kept)')


@dataclass(frozen=True)
class TrainOptions:
    """The published training settings (``--lr``, ``--meta-epochs``, ``--sub-epochs``, N = 256 fibers per
    step) and how Adam steps the decoders (``--adam``), on ``device``."""
    lr: float = 2e-4
    meta_epochs: int = 25
    sub_epochs: int = 8
    fiber_batch: int = 256
    adam: str = 'fused'
    device: str = 'cpu'
    condition_vec: int = CONDITION_VEC


def train_meta_epoch(options: TrainOptions, epoch: int, loader: DataLoader, encoder, decoders, optimizer,
                     step_log: Optional[list] = None, threads=None) -> float:
    """One meta epoch of ``options.sub_epochs`` passes; returns the last sub-epoch's mean loss.

    ``optimizer`` is the published one Adam over all decoders; ``options.adam`` says how it is
    stepped (``utils/decoder_adam.py``: fused kernel by default, the published kernel, or
    the idle decoders' steps deferred).
    ``threads``, when given, is a ``utils.threads.ThreadPolicy``, re-checked between steps.

    ``step_log``, when given, receives (mean loss, lr) of every optimizer step (a host
    sync per step: for tests against the published trajectory, not for real runs).
    A non-finite sub-epoch loss stops training with a one-line error.
    """
    for decoder in decoders:
        decoder.train()
    stepper = make_stepper(options.adam, optimizer, [list(d.parameters()) for d in decoders])
    set_lr(stepper, cosine_lr(options.lr, epoch, options.meta_epochs))
    mean_loss = float('nan')
    try:
        for sub_epoch in range(options.sub_epochs):
            mean_loss = train_sub_epoch(options, epoch, sub_epoch, loader, encoder, decoders, stepper, step_log,
                                        threads)
    finally:  # every waiting idle step applied before anything reads the weights, also on Ctrl-C
        stepper.flush()
    return mean_loss


def train_sub_epoch(options: TrainOptions, epoch: int, sub_epoch: int, loader, encoder, decoders, stepper,
                    step_log: Optional[list], threads) -> float:
    """One pass over the training images: the published steps, per image batch and pool layer."""
    o = options
    n_batches = len(loader)
    N = o.fiber_batch
    loss_sum = torch.zeros((), device=o.device, dtype=torch.float64)
    loss_count = 0
    bar = progress(loader, total=n_batches, desc=f'train epoch {epoch}.{sub_epoch}')
    for i, (image, _, _) in enumerate(bar):
        warm = warmup_lr(o.lr, o.meta_epochs, epoch, i + sub_epoch * n_batches, n_batches * o.sub_epochs)
        if warm is not None:
            set_lr(stepper, warm)
        with torch.no_grad():
            taps = encoder(image.to(o.device, non_blocking=True))
        for layer, (feature_map, decoder) in enumerate(zip(taps, decoders)):
            fibers, positions = to_fibers(feature_map, o.condition_vec)
            perm = torch.randperm(fibers.shape[0]).to(o.device)
            for f in range(fibers.shape[0] // N):
                idx = perm[f * N:(f + 1) * N]
                stepper.prepare(layer)  # includes zero_grad(set_to_none=False), as in torch 1.8
                loss = nll_loss(log_likelihood(decoder, fibers[idx], positions[idx]))
                loss.mean().backward()
                stepper.step(layer)
                if step_log is not None:
                    step_log.append((loss.detach().mean().item(), stepper.param_groups[0]['lr']))
                loss_sum += loss.detach().sum()
                loss_count += loss.shape[0]
                if threads is not None:
                    threads.adjust()  # a clock read; the load itself is measured every second or so
    mean_loss = loss_sum.item() / max(loss_count, 1)
    check_finite_loss(mean_loss, epoch, sub_epoch)
    print(f'Epoch: {epoch:d}.{sub_epoch:d} \t train loss: {mean_loss:.4f}, lr={stepper.param_groups[0]["lr"]:.6f}')
    return mean_loss
