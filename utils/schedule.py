"""The published learning-rate schedule: cosine per meta epoch, linear warm-up first.

    cosine:  lr_e = eta_min + (lr - eta_min) * (1 + cos(pi * e / meta_epochs)) / 2,
             eta_min = lr * 0.1**3
    warm-up: during the first ``WARM_EPOCHS`` meta epochs, per image-batch step s of
             the ``WARM_EPOCHS * sub_epochs * batches`` warm-up steps,
             lr_s = lr/10 + s / (WARM_EPOCHS * sub_epochs * batches) * (lr_{e=2} - lr/10)
"""
import math

DECAY_RATE = 0.1
WARM_EPOCHS = 2


def cosine_lr(lr: float, epoch: int, meta_epochs: int) -> float:
    eta_min = lr * DECAY_RATE ** 3
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / meta_epochs)) / 2


def warmup_lr(lr: float, meta_epochs: int, epoch: int, step: int, steps_per_epoch: int):
    """The warm-up learning rate at ``step`` of meta epoch ``epoch``; None after warm-up.

    ``steps_per_epoch`` is sub_epochs * image batches, ``step`` counts within the epoch.
    """
    if epoch >= WARM_EPOCHS:
        return None
    start, end = lr / 10.0, cosine_lr(lr, WARM_EPOCHS, meta_epochs)
    progress = (step + epoch * steps_per_epoch) / (WARM_EPOCHS * steps_per_epoch)
    return start + progress * (end - start)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group['lr'] = lr
