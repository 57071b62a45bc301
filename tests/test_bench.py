"""The benchmark runs its sections and what it reports agrees: the exact paths give the same maps, AUPRO
equals the definition, ONNX equals PyTorch. The rows are read as data (``benchmarks.rows.Row``)."""
import os
import subprocess
import sys
import tempfile

from tests.conftest import ROOT


def bench_in_a_process(argv):
    """The bench's rows, run in its own process (``python bench.py``, as the README says): several OpenVINO
    models compiled in the suite's process left it crashing (SIGSEGV) in a later test's subprocess call."""
    from benchmarks.rows import read_rows
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'rows.json')
        run = subprocess.run([sys.executable, 'bench.py', *argv, '--rows-json', out], cwd=ROOT, capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        rows = read_rows(out)
    names = [r.name for r in rows]
    assert all(name in run.stdout for name in names)  # every row printed
    return {r.name: r for r in rows}


def is_timed(row, baseline=False):
    """A timed row: a positive median inside its [min, max], and (unless it is the baseline) its paired ratio."""
    lo, hi = row.spread
    timed = row.unit == 'img/s' and 0 < lo <= row.value <= hi
    if baseline:
        return timed and row.baseline and row.ratio is None
    return timed and not row.baseline and row.ratio_spread[0] <= row.ratio <= row.ratio_spread[1]


def test_bench_reports_interleaved_speeds_ratios_and_exact_paths_agree():
    rows = bench_in_a_process(['-enc', 'resnet18', '-inp', '64', '-bs', '2', '-cb', '2', '--batches', '1', '--rounds', '2',
                               '--device', 'cpu', '--pro-maps', '12', '--pro-size', '32', '--loader-images', '4',
                               '--loader-image-size', '64', '--workers', '0', '--predict-images', '4',
                               '--predict-image-size', '96', '--only', 'pipeline,aupro,loader,predict,train',
                               '--train-encoders', 'resnet18', '--train-batch', '8', '--train-rounds', '1',
                               '--quantize-scopes', 'encoder'])
    assert is_timed(rows['authors 256-fiber loop'], baseline=True) and is_timed(rows['encoder only'])
    for name in ('ours: FrEIA, all fibers', 'ours: fused (default)'):
        assert is_timed(rows[name])
        assert rows[name].data['log_p_diff'] <= 1e-5 and rows[name].data['map_diff'] <= 1e-5  # exact to round-off
    (ours,) = [r for name, r in rows.items() if name.startswith('AUPRO ours')]
    assert ours.data['diff'] <= 1e-6 and ours.ratio > 0
    assert any(name.startswith('loader, 0 workers') for name in rows)
    assert rows['checkpoint size'].unit == 'MB' and rows['checkpoint size'].value > 0
    for batch in (1, 8):
        for runtime in ('onnxruntime', 'OpenVINO'):  # the exported graph = PyTorch to 1e-4 of the map's range
            row = rows[f'predict model, {runtime} (batch {batch})']
            assert is_timed(row) and row.data['max_diff_vs_pytorch'] <= 1e-4
        versus = rows[f'predict model, OpenVINO (batch {batch})'].data['x_onnxruntime']
        assert versus['min'] <= versus['median'] <= versus['max']
        int8 = rows[f'predict model, OpenVINO INT8 encoder (batch {batch})']  # issue 24's ratio
        assert is_timed(int8) and int8.data['x_fp32_openvino']['median'] > 0
    # OpenVINO's op times split encoder / flows: the INT8 encoder's convolutions run an int8 kernel, its flows do not
    int8_kernel = lambda name: any(mark in name.lower() for mark in ('i8', 'u8'))  # e.g. jit_avx2_I8
    for name in ('fp32', 'INT8 encoder'):
        row = rows[f'OpenVINO op times, {name}']
        assert row.data['encoder_ms'] > 0 and row.data['flows_ms'] > 0
        assert abs(row.value - row.data['encoder_ms'] - row.data['flows_ms']) <= 1e-9
    assert not int8_kernel(rows['OpenVINO op times, fp32'].data['encoder_kernel'])
    assert int8_kernel(rows['OpenVINO op times, INT8 encoder'].data['encoder_kernel'])
    assert not int8_kernel(rows['OpenVINO op times, INT8 encoder'].data['flows_kernel'])
    for name in ('predict command, PyTorch', 'predict command, onnxruntime', 'predict command, OpenVINO',
                 'predict command, OpenVINO, --scores-only', 'loading only (2 workers)'):
        assert rows[name].unit == 'img/s' and rows[name].value > 0
    assert is_timed(rows['train resnet18 published loop (default Adam kernel)'], baseline=True)
    for name in ('train resnet18 --adam fused (default)', 'train resnet18 --adam deferred'):
        assert is_timed(rows[name]) and rows[name].data['final_weights_diff'] <= 1e-3


def test_the_throughput_model_adds_up_the_stages_and_names_the_command_rate():
    rows = bench_in_a_process(['-enc', 'resnet18', '-inp', '64', '-cb', '1', '--device', 'cpu', '--stage-images', '3',
                               '--stage-sizes', '96', '--stage-rounds', '1',
                               '--only', 'stages'])
    shared = {name: r.data['core_ms'] for name, r in rows.items() if name.startswith('stage 96px') and 'model' not in name}
    assert len(shared) == 7 and all(v >= 0 for v in shared.values()) and sum(shared.values()) > 0
    cores = os.cpu_count()
    for runtime in ('onnxruntime', 'OpenVINO'):
        (model,) = [r.data['core_ms'] for name, r in rows.items() if name.startswith(f'stage 96px: model ({runtime}')]
        limit = rows[f'limit 96px, {runtime}, overlays']
        assert abs(limit.value - cores / ((model + sum(shared.values())) / 1000)) <= 1e-6 * limit.value
        assert rows[f'limit 96px, {runtime}, --scores-only'].value > limit.value  # fewer stages
        assert is_timed(rows[f'96px {runtime}: model alone, one image on every thread'], baseline=True)
        for label in ('overlays', '--scores-only'):
            row = rows[f'96px {runtime}: predict command, {label}']
            assert is_timed(row)
            assert abs(row.data['of_limit'] - row.value / rows[f'limit 96px, {runtime}, {label}'].value) <= 1e-9
            assert row.data['cold_img_s'] > 0
        assert any(name.startswith(f'96px {runtime}: Python load_model(streams=') for name in rows)


def test_the_encoders_section_times_each_encoder_against_the_first():
    rows = bench_in_a_process(['-cb', '1', '--device', 'cpu', '--rounds', '1', '--compare-encoders',
                               'resnet18,mobilenet_v3_small', '--compare-size', '64', '--compare-images', '2',
                               '--only', 'encoders'])
    assert is_timed(rows['resnet18: norm-test pipeline (batch 2)'], baseline=True)
    for arch in ('resnet18', 'mobilenet_v3_small'):
        row = rows[f'{arch}: predict model, OpenVINO (batch 1)']
        assert is_timed(row) and row.data['max_diff_vs_pytorch'] <= 1e-4 and row.data['fed_size'] == 64


def test_a_section_the_bench_does_not_have_is_refused():
    run = subprocess.run([sys.executable, 'bench.py', '--skip', 'pipline'], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and '--skip names no section pipline' in run.stderr
    run = subprocess.run([sys.executable, 'bench.py', '--only', 'servce'], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and '--only names no section servce' in run.stderr


def test_the_segmentation_section_measures_what_it_says():
    rows = bench_in_a_process(['--only', 'segmentation', '--seg-images', '3', '--seg-size', '120x90',
                               '--seg-baseline-images', '4'])
    ours = next(r for name, r in rows.items() if name.startswith('AU-PRO, ours'))
    assert ours.data['diff'] <= 1e-9 and ours.ratio > 0 and ours.data['peak_mb'] > 0
    assert rows['MVTec AD 2 metrics, 3 images 120 x 90 px'].data['SEG_AUPRO@0.05'] >= 0

