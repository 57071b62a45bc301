"""What predict writes, one piece per job: the table appended per batch, PNGs written atomically on a
background thread. Kept apart from the predict loop (``predict.py``) so that the benchmark times the
same writers."""
import csv
import io
import os
from typing import Iterator, List

from PIL import Image

from utils.atomic import atomic_write, atomic_write_text
from utils.errors import CflowError


class PredictionTable:
    """predictions.csv, appended one batch at a time (one write, flushed to disk), so every scored row
    survives a crash or a later failure; the header is written once, at the start."""

    FIELDS = ['source', 'frame', 'score', 'decision', 'defect_pixels', 'defect_fraction', 'overlay', 'mask']

    def __init__(self, path: str):
        self.path, self.rows = path, 0
        atomic_write_text(path, ','.join(self.FIELDS) + '\n')

    def append(self, rows: List[dict]) -> None:
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=self.FIELDS).writerows(rows)
        try:
            with open(self.path, 'a', newline='') as f:
                f.write(buffer.getvalue())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise CflowError(f'cannot append to {self.path} ({exc.strerror}): free some disk space (the rows '
                             f'written so far are kept)') from None
        self.rows += len(rows)

    def read(self) -> Iterator[dict]:
        with open(self.path, newline='') as f:
            yield from csv.DictReader(f)


def save_png(path: str, image: Image.Image) -> None:
    # zlib's fastest level: PNG encoding at the default level cost more than scoring the image
    atomic_write(path, lambda tmp: image.save(tmp, format='PNG', compress_level=1))


def save_overlay(path: str, image: Image.Image) -> None:
    """An overlay: PNG (lossless) or, for a .jpg path, JPEG at quality 90 without chroma subsampling
    (the heat colours keep their edges); 1.8 ms against 19 ms of PNG at 512 px."""
    if path.endswith('.png'):
        save_png(path, image)
    else:
        atomic_write(path, lambda tmp: image.save(tmp, format='JPEG', quality=90, subsampling=0))


class BackgroundWriter:
    """Encodes and writes PNGs on ``threads`` threads (Pillow releases the GIL while encoding), so
    writing overlaps the next batch's scoring; at most ``pending`` writes wait, and any error surfaces.
    Two threads on 2 cores: the writes left when scoring ends are finished on both cores, not one."""

    def __init__(self, pending: int = 64, threads: int = min(2, os.cpu_count() or 1)):
        from concurrent.futures import ThreadPoolExecutor
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix='writer')
        self.futures, self.pending = [], pending

    def submit(self, fn, *args) -> None:
        self.futures.append(self.pool.submit(fn, *args))
        while len(self.futures) > self.pending:
            self.futures.pop(0).result()

    def close(self) -> None:
        """Wait for every write; re-raise the first error."""
        try:
            for future in self.futures:
                future.result()
        finally:
            self.pool.shutdown(wait=True)

    def abort(self) -> None:
        """After an error elsewhere: drop what has not started, wait for the rest, raise nothing."""
        self.pool.shutdown(wait=True, cancel_futures=True)
