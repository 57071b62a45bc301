"""bench.py runs, and what it reports agrees: same maps for the exact paths, same AUPRO."""
import re

import bench


def test_bench_reports_ratios_and_exact_paths_agree():
    rows = bench.main(['-enc', 'resnet18', '-inp', '64', '-bs', '2', '-cb', '2', '--batches', '1', '--device', 'cpu',
                       '--pro-maps', '12', '--pro-size', '32', '--loader-images', '4', '--loader-image-size', '64',
                       '--workers', '0'])
    by_name = {name: (speed, ratio, notes) for name, speed, ratio, notes in rows}
    assert by_name['authors 256-fiber loop'][1] == '1.00x'
    for name in ('ours: FrEIA, all fibers', 'ours: fused (default)'):
        speed, ratio, notes = by_name[name]
        assert re.fullmatch(r'[\d.]+ img/s', speed) and re.fullmatch(r'[\d.]+x', ratio)
        log_p, maps = (float(v) for v in re.findall(r'(?:log p|map) ([\d.e+-]+)', notes))
        assert log_p <= 1e-5 and maps <= 1e-5  # the default path is exact to float32 round-off
    aupro_rows = [r for r in rows if r[0].startswith('AUPRO ours')]
    assert aupro_rows and float(aupro_rows[0][3].split()[-1]) <= 1e-6
    assert any(name.startswith('loader, 0 workers') for name in by_name)
    assert re.fullmatch(r'[\d.]+ MB', by_name['checkpoint size'][0])
