"""bench.py runs, and what it reports agrees: same maps for the exact paths, same AUPRO, ONNX = PyTorch."""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SPEED = r'[\d.]+ img/s \[[\d.]+-[\d.]+\]'
RATIO = r'[\d.]+x \[[\d.]+-[\d.]+\]'


def test_bench_reports_interleaved_speeds_ratios_and_exact_paths_agree():
    rows = bench_in_a_process(['-enc', 'resnet18', '-inp', '64', '-bs', '2', '-cb', '2', '--batches', '1', '--rounds', '2',
                       '--device', 'cpu', '--pro-maps', '12', '--pro-size', '32', '--loader-images', '4',
                       '--loader-image-size', '64', '--workers', '0', '--predict-images', '4',
                       '--predict-image-size', '96', '--skip', 'sizes,threads,masks,stages,encoders,quantize', '--train-encoders', 'resnet18',
                       '--train-batch', '8', '--train-rounds', '1', '--quantize-scopes', 'encoder'])
    by_name = {name: (speed, ratio, notes) for name, speed, ratio, notes in rows}
    assert by_name['authors 256-fiber loop'][1] == 'baseline'
    assert re.fullmatch(SPEED, by_name['encoder only'][0]) and re.fullmatch(RATIO, by_name['encoder only'][1])
    for name in ('ours: FrEIA, all fibers', 'ours: fused (default)'):
        speed, ratio, notes = by_name[name]
        assert re.fullmatch(SPEED, speed) and re.fullmatch(RATIO, ratio)
        log_p, maps = (float(v) for v in re.findall(r'(?:log p|map) ([\d.e+-]+)', notes))
        assert log_p <= 1e-5 and maps <= 1e-5  # the default path is exact to float32 round-off
    aupro_rows = [r for r in rows if r[0].startswith('AUPRO ours')]
    assert aupro_rows and float(aupro_rows[0][3].split()[-1]) <= 1e-6
    assert any(name.startswith('loader, 0 workers') for name in by_name)
    assert re.fullmatch(r'[\d.]+ MB', by_name['checkpoint size'][0])
    for batch in (1, 8):
        for runtime in ('onnxruntime', 'OpenVINO'):  # the exported graph = PyTorch to 1e-4 of the map's range
            speed, ratio, notes = by_name[f'predict model, {runtime} (batch {batch})']
            assert re.fullmatch(SPEED, speed) and re.fullmatch(RATIO, ratio)
            assert float(re.search(r'max diff vs PyTorch ([\d.e+-]+)', notes).group(1)) <= 1e-4
        assert re.search(r'; [\d.]+x onnxruntime', by_name[f'predict model, OpenVINO (batch {batch})'][2])
        speed, _, notes = by_name[f'predict model, OpenVINO INT8 encoder (batch {batch})']  # issue 24's ratio
        assert re.fullmatch(SPEED, speed) and re.search(r'^[\d.]+x fp32 OpenVINO \[[\d.]+-[\d.]+\]', notes)
    # OpenVINO's op times split encoder / flows: the INT8 encoder's convolutions run an int8 kernel, its flows do not
    op_times = {}
    for name in ('fp32', 'INT8 encoder'):
        total, _, notes = by_name[f'OpenVINO op times, {name}']
        parts = re.fullmatch(r'encoder ([\d.]+) ms \((\S+)\); flows ([\d.]+) ms \((\S+)\)', notes)
        assert parts and float(parts[1]) > 0 and float(parts[3]) > 0
        assert float(total.split()[0]) == pytest.approx(float(parts[1]) + float(parts[3]), abs=0.11)
        op_times[name] = parts[2], parts[4]
    int8_kernel = re.compile(r'[iu]8', re.IGNORECASE)  # OpenVINO names a kernel after its precision: jit_avx2_I8
    assert not int8_kernel.search(op_times['fp32'][0]) and int8_kernel.search(op_times['INT8 encoder'][0])
    assert not int8_kernel.search(op_times['INT8 encoder'][1])
    for name in ('predict command, PyTorch', 'predict command, onnxruntime', 'predict command, OpenVINO',
                 'predict command, OpenVINO, --scores-only', 'loading only (2 workers)'):
        assert re.fullmatch(SPEED, by_name[name][0])
    train = {name: row for name, row in by_name.items() if name.startswith('train resnet18')}
    assert train['train resnet18 published loop (default Adam kernel)'][1] == 'baseline'
    for name in ('train resnet18 --adam fused (default)', 'train resnet18 --adam deferred'):
        speed, ratio, notes = train[name]
        assert re.fullmatch(SPEED, speed) and re.fullmatch(RATIO, ratio)
        assert float(re.search(r'final weights ([\d.e+-]+)', notes).group(1)) <= 1e-3


def bench_in_a_process(argv):
    """bench.py's rows, run in its own process: several OpenVINO models compiled in the suite's process left it
    crashing (SIGSEGV) in a later test's subprocess call, on this machine."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'rows.json')
        subprocess.run([sys.executable, 'bench.py', *argv, '--rows-json', out], cwd=ROOT, check=True,
                       capture_output=True)
        return [tuple(row) for row in json.load(open(out))]


def test_the_throughput_model_adds_up_the_stages_and_names_the_command_rate():
    rows = bench_in_a_process(['-enc', 'resnet18', '-inp', '64', '-cb', '1', '--device', 'cpu', '--stage-images', '3',
                               '--stage-sizes', '96', '--stage-rounds', '1',
                               '--skip', 'pipeline,aupro,loader,predict,encoders,sizes,train,threads,masks,quantize'])
    by_name = {name: (speed, ratio, notes) for name, speed, ratio, notes in rows}
    shared = {name: float(notes.split()[0]) for name, (_, _, notes) in by_name.items()
              if name.startswith('stage 96px') and 'model' not in name}
    assert len(shared) == 7 and all(v >= 0 for v in shared.values()) and sum(shared.values()) > 0
    cores = os.cpu_count()
    for runtime in ('onnxruntime', 'OpenVINO'):
        (model,) = [float(notes.split()[0]) for name, (_, _, notes) in by_name.items()
                    if name.startswith(f'stage 96px: model ({runtime}')]
        limit = float(by_name[f'limit 96px, {runtime}, overlays'][0].split()[0])
        assert abs(limit - cores / ((model + sum(shared.values())) / 1000)) <= 0.06 * limit  # printed rounded
        assert float(by_name[f'limit 96px, {runtime}, --scores-only'][0].split()[0]) > limit  # fewer stages
        assert by_name[f'96px {runtime}: model alone, one image on every thread'][1] == 'baseline'
        for label in ('overlays', '--scores-only'):
            speed, ratio, notes = by_name[f'96px {runtime}: predict command, {label}']
            assert re.fullmatch(SPEED, speed) and re.fullmatch(RATIO, ratio)
            assert re.search(r'[\d.]+x of the limit; first run \(cold cache\) [\d.]+ img/s', notes)
        assert any(name.startswith(f'96px {runtime}: Python load_model(streams=') for name in by_name)


def test_the_encoders_section_times_each_encoder_against_the_first():
    rows = bench_in_a_process(['-cb', '1', '--device', 'cpu', '--rounds', '1', '--compare-encoders', 'resnet18,mobilenet_v3_small',
                       '--compare-size', '64', '--compare-images', '2',
                       '--skip', 'pipeline,aupro,loader,predict,stages,sizes,train,threads,masks,quantize'])
    by_name = {name: (speed, ratio, notes) for name, speed, ratio, notes in rows}
    assert by_name['resnet18: norm-test pipeline (batch 2)'][1] == 'baseline'
    for arch in ('resnet18', 'mobilenet_v3_small'):
        speed, ratio, notes = by_name[f'{arch}: predict model, OpenVINO (batch 1)']
        assert re.fullmatch(SPEED, speed) and re.fullmatch(RATIO, ratio)
        assert float(re.search(r'max diff vs PyTorch ([\d.e+-]+)', notes).group(1)) <= 1e-4
