"""Progress that shows in a terminal (tqdm bars) and in a log (a timed line with an estimate).

tqdm hides its bars when no terminal is attached (``disable=None``), which left a run
that writes to a log silent for hours. Without a terminal, :func:`progress` prints a line
every ``interval`` seconds instead: ``desc: done/total (pct), elapsed, about N left``.
"""
import sys
import time
from typing import Iterable, Iterator, Optional

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines in a log


def count(n: int, noun: str, plural: str = None) -> str:
    """'1 image', '2 images'."""
    return f'{n} {noun if n == 1 else (plural or noun + "s")}'


def hms(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def progress_line(desc: str, done: int, total: Optional[int], elapsed: float) -> str:
    if not total:
        return f'{desc}: {done} done, elapsed {hms(elapsed)}'
    left = f', about {hms(elapsed / done * (total - done))} left' if done else ''
    return f'{desc}: {done}/{total} ({100 * done / total:.0f}%), elapsed {hms(elapsed)}{left}'


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = '', leave: bool = False,
             interval: float = LOG_INTERVAL, stream=None) -> Iterator:
    stream = stream or sys.stderr
    if stream.isatty():
        yield from tqdm(iterable, total=total, desc=desc, leave=leave, file=stream)
        return
    start = last = time.time()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.time()
        if now - last >= interval:
            print(progress_line(desc, done, total, now - start), file=stream, flush=True)
            last = now
