"""AUPRO: the definition written out (1000 thresholds, ``utils.metrics.aupro_direct``) against ours, on the
same random maps; they must agree to 1e-6."""
import numpy as np

from benchmarks.rows import Row
from benchmarks.timing import Timer
from utils.metrics import aupro, aupro_direct


def random_maps(n: int, size: int, seed: int = 0):
    """(masks, maps): smooth random maps with blob-shaped defects inside every other one."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, size, size))
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(0, n, 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size, rng.uniform(0.02, 0.1) * size
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    maps += masks * rng.uniform(0.2, 0.8)
    return masks, maps


def run(a):
    n = a.pro_direct_maps or a.pro_maps
    masks, maps = random_maps(a.pro_maps, a.pro_size)
    masks, maps = masks[:n], maps[:n]
    with Timer() as fast:
        ours = aupro(masks, maps)
    with Timer() as direct:
        reference = aupro_direct(masks, maps)
    assert abs(ours - reference) <= 1e-6, (ours, reference)
    label = f'{n} maps {a.pro_size}x{a.pro_size}'
    return [Row(f'AUPRO direct definition, {label}', direct.seconds, 's', baseline=True,
                notes=f'AUPRO {reference:.6f}', data={'aupro': reference}),
            Row(f'AUPRO ours, {label}', fast.seconds, 's', ratio=direct.seconds / fast.seconds,
                notes=f'|diff| {abs(ours - reference):.1e}', data={'aupro': ours, 'diff': abs(ours - reference)})]
