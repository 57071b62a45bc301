"""Timing: paths interleaved in rotated order, per-round paired ratios to a baseline."""
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from benchmarks.rows import Row


def synchronize(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


class Timer:
    """Wall time of a block, with the device synchronised at both ends."""

    def __init__(self, device: str = 'cpu'):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def interleaved(paths: Dict[str, Callable], rounds: int, device: str) -> Dict[str, List[float]]:
    """Seconds per round of each path: one warm-up call each, then ``rounds`` rounds with the
    order rotated by one every round (no path always runs first, or right after a given other)."""
    names = list(paths)
    for name in names:
        paths[name]()  # warm-up: allocations, autotuning, compilation, caches
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with Timer(device) as t:
                paths[name]()
            seconds[name].append(t.seconds)
    return seconds


def speed_rows(seconds: Dict[str, List[float]], items: int, baseline: Optional[str],
               notes: Optional[dict] = None, data: Optional[dict] = None) -> List[Row]:
    """Per path: items/s (median, [min-max] over rounds) and the median [min-max] of the per-round
    paired ratio baseline seconds / path seconds (> 1: faster than the baseline)."""
    rows = []
    for name, times in seconds.items():
        speeds = [items / t for t in times]
        row = Row(name, float(np.median(speeds)), 'img/s', (min(speeds), max(speeds)), baseline=name == baseline,
                  notes=(notes or {}).get(name, ''), data=dict((data or {}).get(name, {})))
        if baseline is not None and name != baseline:
            ratios = [b / t for b, t in zip(seconds[baseline], times)]
            row.ratio, row.ratio_spread = float(np.median(ratios)), (min(ratios), max(ratios))
        rows.append(row)
    return rows


def paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> dict:
    """{'median', 'min', 'max'} of slow / fast per round (rounds paired: both measured in the same round)."""
    ratios = [s / f for s, f in zip(slow, fast)]
    return {'median': float(np.median(ratios)), 'min': min(ratios), 'max': max(ratios)}


def time_each(fn: Callable, items: Sequence) -> float:
    """Seconds per item of ``fn`` over ``items`` (one warm-up call first)."""
    fn(items[0])
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items)
