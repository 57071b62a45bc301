"""Overlapping the stages of scoring many images, results always in input order.

``ordered_map`` keeps ``in_flight`` calls running on threads (the runtimes release the GIL while
they compute), so two images are scored at once, each on its share of the cores: on 2 cores the
ResNet-18 model gave 11.8 img/s as two one-thread streams against 10.1 as one two-thread call,
with the same bytes out (BENCHMARKS.md, issue 23). ``read_ahead`` reads the next items on a
thread while the current ones are scored (Pillow releases the GIL while decoding).
"""
import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator


def automatic_streams(more_than_one_batch: bool, cuda: bool = False) -> int:
    """2 where there are 2 cores or more and more than one batch to score, else 1 (one image alone is
    faster on every thread; a GPU runs one call at a time)."""
    return 2 if (os.cpu_count() or 1) >= 2 and more_than_one_batch and not cuda else 1


def ordered_map(fn: Callable, items: Iterable, in_flight: int) -> Iterator:
    """(item, fn(item)) for every item, in order, with up to ``in_flight`` calls running at once and
    one more queued, so no stream waits while the caller handles a result. in_flight 1: plain calls."""
    if in_flight <= 1:
        for item in items:
            yield item, fn(item)
        return
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix='score') as pool:
        pending = deque()
        try:
            for item in items:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) > in_flight:
                    item, future = pending.popleft()
                    yield item, future.result()
            while pending:
                item, future = pending.popleft()
                yield item, future.result()
        finally:  # an error or an abandoned generator: what has not started never runs
            for _, future in pending:
                future.cancel()


_END = object()


def read_ahead(items: Iterable, depth: int = 2) -> Iterator:
    """The items of ``items``, produced on a thread up to ``depth`` ahead of the consumer; an error
    in the producer is raised in the consumer, at the item where it happened."""
    slots = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((item, None))
            slots.put((_END, None))
        except BaseException as exc:  # handed to the consumer
            slots.put((_END, exc))
    thread = threading.Thread(target=produce, name='read-ahead', daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get(timeout=0.05)
            except queue.Empty:
                pass
