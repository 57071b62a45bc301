"""Predict's pipelining (issue 23): streams, read-ahead, the OpenVINO cache, cheaper overlays, the fast
metadata read. Every speed-up must leave the outputs as they were: tables and masks byte for byte."""
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from main import main
from tests.conftest import ROOT


@pytest.fixture(scope='module')
def inputs(trained, tmp_path_factory):
    _, _, demo_root = trained
    folder = tmp_path_factory.mktemp('speed_inputs')
    shutil.copytree(os.path.join(demo_root, 'textile', 'test', 'good'), folder / 'good')
    shutil.copytree(os.path.join(demo_root, 'textile', 'test', 'scratch'), folder / 'scratch')
    (folder / 'good' / 'broken.png').write_bytes(b'not an image')
    return folder


def predict_argv(model, folder, out, *extra):
    return ['--action-type', 'predict', '--checkpoint', str(model), '--input', str(folder), '--output-dir', str(out),
            '--no-cuda', '-bs', '1', *extra]


def predict_in_a_process(argv):
    """OpenVINO runs in its own process: several OpenVINO models compiled in the suite's process left it
    crashing in a later subprocess call (tests/test_bench.py)."""
    done = subprocess.run([sys.executable, 'main.py', *argv], cwd=ROOT, capture_output=True, text=True)
    return done.returncode, done.stderr


def files_of(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), 'rb').read()
            for d, _, names in os.walk(folder) for f in names}


def assert_same_outputs(a, b):
    """The table and every mask and overlay the same bytes; predictions.json the same rows."""
    assert open(a / 'predictions.csv', 'rb').read() == open(b / 'predictions.csv', 'rb').read()
    for sub in ('masks', 'overlays'):
        files = files_of(a / sub)
        assert files and files == files_of(b / sub)
    assert json.load(open(a / 'predictions.json'))['predictions'] == json.load(open(b / 'predictions.json'))['predictions']


@pytest.fixture(scope='module')
def one_stream(exported, inputs, tmp_path_factory):
    """onnxruntime, one image at a time on every thread: the outputs every other way must reproduce."""
    out = tmp_path_factory.mktemp('one_stream')
    assert main(predict_argv(exported[0] / 'model.onnx', inputs, out, '--streams', '1', '--workers', '0')) == 0
    return out


def test_two_streams_write_the_same_bytes_as_one(exported, inputs, one_stream, tmp_path):
    assert main(predict_argv(exported[0] / 'model.onnx', inputs, tmp_path, '--streams', '2', '--workers', '2')) == 0
    assert_same_outputs(one_stream, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / 'predictions.csv')))
    assert len(rows) == 16 + 12 and [r['source'] for r in rows] == sorted(r['source'] for r in rows)


def test_openvino_streams_and_its_cache_write_the_same_bytes(exported, inputs, tmp_path):
    model = exported[0] / 'model.onnx'
    cache = tmp_path / 'cache'
    runs = {}
    for name, extra in (('one stream', ['--streams', '1', '--openvino-cache', 'none']),
                        ('two streams, cold cache', ['--streams', '2', '--openvino-cache', str(cache)]),
                        ('two streams, warm cache', ['--streams', '2', '--openvino-cache', str(cache)])):
        runs[name] = tmp_path / name.replace(' ', '_').replace(',', '')
        rc, err = predict_in_a_process(predict_argv(model, inputs, runs[name], '--runtime', 'openvino', '--workers', '2',
                                                    *extra))
        assert rc == 0, err
        if name == 'one stream':
            assert not cache.exists()
        else:
            assert any(cache.iterdir())  # the compiled model was stored, and read back by the next run
    for name in ('two streams, cold cache', 'two streams, warm cache'):
        assert_same_outputs(runs['one stream'], runs[name])


def test_scores_only_gives_the_rows_of_the_full_run(exported, inputs, one_stream, tmp_path):
    assert main(predict_argv(exported[0] / 'model.onnx', inputs, tmp_path, '--scores-only', '--workers', '2')) == 0
    full = list(csv.DictReader(open(one_stream / 'predictions.csv')))
    quick = list(csv.DictReader(open(tmp_path / 'predictions.csv')))
    keys = ('source', 'frame', 'score', 'decision', 'defect_pixels', 'defect_fraction')
    assert [[r[k] for k in keys] for r in quick] == [[r[k] for k in keys] for r in full]
    assert not (tmp_path / 'overlays').exists() and not (tmp_path / 'masks').exists()


def test_jpeg_overlays_look_like_the_png_ones_and_masks_stay_png(exported, inputs, one_stream, tmp_path):
    assert main(predict_argv(exported[0] / 'model.onnx', inputs, tmp_path, '--overlay-format', 'jpg',
                             '--workers', '0')) == 0
    rows = list(csv.DictReader(open(tmp_path / 'predictions.csv')))
    png_rows = list(csv.DictReader(open(one_stream / 'predictions.csv')))
    assert files_of(tmp_path / 'masks') == files_of(one_stream / 'masks')
    html = open(tmp_path / 'index.html').read()
    for row, png_row in zip(rows, png_rows):
        assert row['overlay'] == png_row['overlay'][:-len('png')] + 'jpg' and row['overlay'] in html
        with Image.open(tmp_path / row['overlay']) as jpeg, Image.open(one_stream / png_row['overlay']) as png:
            assert jpeg.format == 'JPEG' and jpeg.size == png.size
            difference = np.abs(np.asarray(jpeg, dtype=np.float32) - np.asarray(png.convert('RGB'), dtype=np.float32))
            assert difference.mean() < 4  # quality 90, no chroma subsampling: the same picture to the eye


def test_python_api_streams_give_the_same_predictions(exported, inputs):
    from custom_models import load_model
    from utils.errors import CflowError
    paths = sorted(str(p) for p in (inputs / 'scratch').iterdir())[:6] + sorted(
        str(p) for p in (inputs / 'good').iterdir() if p.name != 'broken.png')[:5]
    one = load_model(exported[0] / 'model.onnx').predict(paths, batch_size=2)
    two = load_model(exported[0] / 'model.onnx', streams=2).predict(paths, batch_size=2)
    assert [p.score for p in one] == [p.score for p in two] and any(p.defective for p in one)
    assert all(np.array_equal(p.mask, q.mask) and np.array_equal(p.model_map, q.model_map) for p, q in zip(one, two))
    with pytest.raises(CflowError, match='broken.png'):  # read ahead on a thread, raised where it happened
        load_model(exported[0] / 'model.onnx', streams=2).predict(paths[:3] + [str(inputs / 'good' / 'broken.png')])


@pytest.mark.parametrize('extra, message', [
    (['--streams', '0'], '--streams 0: pass 1 or more'),
    (['--openvino-cache', '{file}/sub', '--runtime', 'openvino'], 'cannot write into --openvino-cache'),
])
def test_bad_speed_options_are_one_line_errors(exported, inputs, tmp_path, capsys, extra, message):
    (tmp_path / 'file').write_text('x')
    extra = [e.replace('{file}', str(tmp_path / 'file')) for e in extra]
    assert main(predict_argv(exported[0] / 'model.onnx', inputs, tmp_path / 'out', *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_streams_need_an_onnx_file(exported, inputs, tmp_path, capsys):
    assert main(predict_argv(exported[1], inputs, tmp_path, '--streams', '2')) == 2
    assert '--streams is for an exported .onnx' in capsys.readouterr().err


def test_metadata_is_read_without_parsing_the_graph(exported, tmp_path):
    import onnx
    from utils.errors import CflowError
    from utils.export_onnx import metadata_props, onnx_metadata
    model = exported[0] / 'model.onnx'
    expected = {e.key: e.value for e in onnx.load(str(model), load_external_data=False).metadata_props}
    assert metadata_props(str(model)) == expected and 'cflow_calibration' in expected
    data = model.read_bytes()
    for name, content in (('truncated.onnx', data[:len(data) // 2]), ('noise.onnx', bytes(range(256)) * 64)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CflowError, match='cannot load ONNX model|not an ONNX export of this project'):
            onnx_metadata(str(tmp_path / name))
    # the predict command never imports onnx to read it
    code = (f'import sys; from utils.export_onnx import onnx_metadata; onnx_metadata({str(model)!r}); '
            f'print("onnx" in sys.modules)')
    done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == 'False'


def test_ordered_map_keeps_the_order_and_runs_calls_at_once():
    from utils.pipeline import ordered_map
    running, most = [0], [0]
    lock = threading.Lock()

    def slow(x):  # later items finish first
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 * (5 - x))
        with lock:
            running[0] -= 1
        return x * x
    assert list(ordered_map(slow, range(5), 2)) == [(x, x * x) for x in range(5)]
    assert most[0] == 2

    def failing(x):
        if x == 3:
            raise ValueError('item 3')
        return x
    seen = []
    with pytest.raises(ValueError, match='item 3'):
        for item, _ in ordered_map(failing, range(6), 2):
            seen.append(item)
    assert seen == [0, 1, 2]


def test_read_ahead_raises_where_the_producer_failed_and_stops_with_the_consumer():
    from utils.pipeline import read_ahead
    made = []

    def produce(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise OSError(f'cannot read item {i}')
            made.append(i)
            yield i
    got = []
    with pytest.raises(OSError, match='item 4'):
        for item in read_ahead(produce(10, fail_at=4), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3]
    made.clear()
    for item in read_ahead(produce(1000), depth=2):
        if item == 2:
            break
    time.sleep(0.05)
    # consumed 3, 2 waiting in the queue, at most 2 more made while it drained: a few ahead, not 1000
    assert len(made) <= 3 + 2 + 2
