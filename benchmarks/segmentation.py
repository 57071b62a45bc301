"""MVTec AD 2's evaluation of multi-megapixel images (``utils/segmentation_benchmark.py``: images added one at a
time, float16 maps binned): time and peak memory for ``--seg-images`` maps of ``--seg-size``, against the
official computation holding every map at once (``benchmarks/official_pro.py``) on ``--seg-baseline-images``
of them, where it fits; their AU-PRO values compared on those."""
import time
import tracemalloc

import numpy as np

from benchmarks.official_pro import official_au_pro
from benchmarks.rows import Row
from utils.segmentation_benchmark import SegmentationBenchmark


def image(rng: np.random.Generator, height: int, width: int, defective: bool):
    """(float16 map, thresholded map, ground truth) of one synthetic image: noise, and a defect disc raising it."""
    truth = np.zeros((height, width), bool)
    if defective:
        y, x = rng.integers(0, height), rng.integers(0, width)
        r = rng.integers(height // 40 + 1, height // 10 + 2)
        rows, cols = np.ogrid[:height, :width]
        truth = (rows - y) ** 2 + (cols - x) ** 2 <= r * r
    anomaly_map = (rng.random((height, width), dtype=np.float32) + 0.6 * truth).astype(np.float16)
    return anomaly_map, anomaly_map > 1.2, truth


def measured(run):
    """(seconds, peak MB traced: numpy's buffers included) of ``run()``, and its result."""
    tracemalloc.start()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return seconds, peak, result


def ours(n: int, height: int, width: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    benchmark = SegmentationBenchmark((0.05, 0.3))
    for i in range(n):
        anomaly_map, thresholded, truth = image(rng, height, width, i % 2 == 1)
        benchmark.add(anomaly_map, thresholded, i % 2 == 1, truth)
    return benchmark.metrics()


def official(n: int, height: int, width: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    maps, truths = zip(*[image(rng, height, width, i % 2 == 1)[::2] for i in range(n)])
    return {f'SEG_AUPRO@{limit:g}': 100 * official_au_pro(maps, truths, limit) for limit in (0.05, 0.3)}


def run(a):
    width, height = (int(v) for v in a.seg_size.split('x'))
    label = f'{width} x {height} px'
    rows = []
    if a.seg_baseline_images:
        n = a.seg_baseline_images
        base_s, base_mb, base = measured(lambda: official(n, height, width))
        our_s, our_mb, same = measured(lambda: ours(n, height, width))
        diff = max(abs(base[k] - same[k]) for k in base)
        rows.append(Row(f'AU-PRO, official (all maps at once), {n} images {label}', base_s, 's', baseline=True,
                        notes=f'peak {base_mb:.0f} MB', data={'peak_mb': base_mb, **base}))
        rows.append(Row(f'AU-PRO, ours (image by image), {n} images {label}', our_s, 's', ratio=base_s / our_s,
                        notes=f'peak {our_mb:.0f} MB ({base_mb / our_mb:.1f}x less); AU-PRO |diff| {diff:.1e} pt',
                        data={'peak_mb': our_mb, 'diff': diff, **same}))
    seconds, peak, metrics = measured(lambda: ours(a.seg_images, height, width))
    rows.append(Row(f'MVTec AD 2 metrics, {a.seg_images} images {label}', seconds, 's',
                    notes=f'peak {peak:.0f} MB; {1000 * seconds / a.seg_images:.0f} ms per image; all four metrics',
                    data={'peak_mb': peak, **metrics}))
    return rows
