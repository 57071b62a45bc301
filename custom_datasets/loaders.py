"""Data loaders: the published loader settings, and replay of deterministic test passes."""
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler


class SeededShuffle(Sampler):
    """A random order of the dataset per pass, each index paired with its own rotation seed.

    Order and seeds come from one generator in the main process, so the training data are
    the same whatever the number of loader workers (which each have their own RNG).
    """

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator)
        seeds = torch.randint(2 ** 62, (self.n,), generator=self.generator)
        return iter(zip(order.tolist(), seeds.tolist()))


@dataclass(frozen=True)
class LoaderOptions:
    """``-bs``, ``--workers``, the seed of the training order, and pinned memory (for a CUDA device)."""
    batch_size: int = 32
    workers: int = 0
    seed: int = 0
    pin_memory: bool = False


def make_loader(dataset, train: bool, options: LoaderOptions) -> DataLoader:
    """The published loader: training batches shuffled (seeded, ``SeededShuffle``), incomplete ones dropped;
    test batches in order."""
    # Training workers live across sub-epochs (200 passes by default) instead of restarting.
    kwargs = dict(num_workers=options.workers, pin_memory=options.pin_memory,
                  persistent_workers=train and options.workers > 0)
    if not train:
        return DataLoader(dataset, batch_size=options.batch_size, shuffle=False, **kwargs)
    generator = torch.Generator().manual_seed(options.seed)
    return DataLoader(dataset, batch_size=options.batch_size, sampler=SeededShuffle(len(dataset), generator),
                      drop_last=True, **kwargs)


class ReplayLoader:
    """A test loader whose first pass is kept in memory and replayed afterwards.

    Test transforms are deterministic, so later passes (one per meta epoch) get the
    very same tensors without decoding and resizing every image again. Past
    ``budget_mb`` nothing is kept and every pass reads the files, as before.
    """

    def __init__(self, loader: DataLoader, budget_mb: float):
        self.loader, self.dataset = loader, loader.dataset
        self.budget = budget_mb * 2 ** 20
        self.batches = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.batches is not None:
            yield from self.batches
            return
        kept, size = [], 0
        for batch in self.loader:
            size += sum(t.numel() * t.element_size() for t in batch if isinstance(t, torch.Tensor))
            kept = kept if kept is not None and size <= self.budget else None
            if kept is not None:
                kept.append(batch)
            yield batch
        self.batches = kept
