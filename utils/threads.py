"""How many CPU threads torch uses: the cores other processes leave free, re-checked as training runs.

Training is thousands of small operations, each split over torch's intra-op threads. When
another process keeps a core busy, a split operation waits for its slowest thread, which
is the one sharing a core: with 2 threads on 2 cores beside one busy process the demo's
sub-epoch took 2.2x its idle time, against 1.3x with one thread. So every ``INTERVAL``
(1) seconds the policy measures how many cores the other processes used,

    others = (busy CPU seconds of our cores, from /proc/stat) - (our own CPU seconds),

divided by the wall time, and uses  threads = clamp(round(cores - others), 1, ceiling),
ceiling = torch's own default (or what ``--threads`` asked for is used as is, never changed).
Where /proc/stat cannot be read (not Linux), torch's default stays.
"""
import os
import time
from typing import Optional, Tuple

INTERVAL = 1.0  # seconds between measurements: long enough to average, short enough to follow a load
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (idle, iowait are 3, 4)


def our_cores() -> list:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def busy_cpu_seconds(cores: list, stat_path: str = '/proc/stat') -> Optional[float]:
    """Busy CPU seconds of ``cores`` since boot, summed over them; None where unreadable."""
    try:
        with open(stat_path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = {f'cpu{i}' for i in cores}
    ticks = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:]]
            ticks += sum(values[i] for i in BUSY_FIELDS if i < len(values))
    return ticks / os.sysconf('SC_CLK_TCK')


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def threads_for(cores: int, others: float, ceiling: int) -> int:
    """threads = clamp(round(cores - others), 1, ceiling): the cores left free, at least one."""
    return max(1, min(ceiling, int(round(cores - others))))


class ThreadPolicy:
    """Sets ``torch.set_num_threads`` from the measured load, at most every ``interval`` seconds."""

    def __init__(self, requested: Optional[int] = None, interval: float = INTERVAL, stat_path: str = '/proc/stat'):
        import torch
        self.torch = torch
        self.fixed = requested is not None
        self.ceiling = requested if self.fixed else torch.get_num_threads()
        self.interval = interval
        self.stat_path = stat_path
        self.cores = our_cores()
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.ceiling)
        self.threads = self.ceiling
        self.last = self.sample()

    def sample(self) -> Optional[Tuple[float, float, float]]:
        busy = busy_cpu_seconds(self.cores, self.stat_path)
        return None if busy is None else (time.monotonic(), busy, own_cpu_seconds())

    def others(self, earlier, later) -> float:
        """Cores the other processes kept busy between two samples."""
        wall = later[0] - earlier[0]
        return max(0.0, (later[1] - earlier[1]) - (later[2] - earlier[2])) / max(wall, 1e-9)

    def restore(self) -> None:
        """Torch's thread count as it was before the policy (the process may go on to other work)."""
        self.torch.set_num_threads(self.before)
        self.threads = self.before

    def adjust(self) -> int:
        """Re-measure if ``interval`` has passed; returns the thread count in use."""
        if self.fixed or self.last is None or time.monotonic() - self.last[0] < self.interval:
            return self.threads
        now = self.sample()
        if now is None:
            return self.threads
        threads = threads_for(len(self.cores), self.others(self.last, now), self.ceiling)
        self.last = now
        if threads != self.threads:
            self.torch.set_num_threads(threads)
            self.threads = threads
        return threads
