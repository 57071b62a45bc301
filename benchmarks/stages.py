"""predict's throughput model (the -enc model at batch 1), for onnxruntime (an .onnx's default runtime) and
OpenVINO: per image the core-seconds of each stage measured alone, the model as the command runs it
(``--streams``: images scored at once, one thread each), and the rate the stages allow on this machine's
cores (cores / sum of core-seconds: every stage overlapped perfectly, none idle). Then, interleaved in
rounds: the predict command with overlays and with --scores-only, the Python API on the same files, and the
model alone one image at a time on every thread (the baseline), each as a rate and a ratio to it."""
import os
import pickle
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks.commands import command
from benchmarks.models import build_model, calibrated_model
from benchmarks.rows import Row
from benchmarks.timing import Timer, interleaved, speed_rows, time_each
from custom_datasets.common import list_images
from custom_datasets.inputs import ImageFiles
from custom_datasets.synthetic import make_demo_class
from custom_models import load_model
from utils.export_onnx import export_onnx
from utils.pipeline import automatic_streams
from utils.prediction_files import PredictionTable, save_png
from utils.viz import decision_picture

RUNTIMES = ('onnxruntime', 'OpenVINO')


def picture(item, result, t):
    """predict's overlay of one image (``utils.viz.decision_picture``, as the command draws it)."""
    return decision_picture(item[2], result.model_map, result.mask, 2 * t.image, result.score, t.image,
                            result.thresholds['mask_threshold'], result.defective, 'thresholds: stored')


def stage_seconds(files, items, scored, detector, out: str) -> dict:
    """Per stage of predict other than the model: (seconds per image measured alone, cores it keeps busy,
    whether --scores-only runs it too)."""
    t = detector.thresholds
    results = [(item, detector.result(maps[0], scores[0], item[3])) for _, item, (maps, scores) in scored]
    pictures = [(item, r, picture(item, r, t)) for item, r in results]
    table = PredictionTable(os.path.join(out, 'table.csv'))
    row = {'source': 'x', 'frame': '', 'score': 1.0, 'decision': 'good', 'defect_pixels': 0,
           'defect_fraction': 0.0, 'overlay': 'o', 'mask': 'm'}
    return {
        'decode + resize + display copy': (time_each(lambda i: files[i], list(range(len(files)))), 1, True),
        'hand-over to the main process (pickle)': (
            time_each(lambda item: pickle.loads(pickle.dumps(item)), items), 1, True),
        'decision + full-size mask': (time_each(lambda s: detector.result(s[2][0][0], s[2][1][0], s[1][3]),
                                                scored), 1, True),
        'table row (appended, fsync)': (time_each(lambda _: table.append([row]), items), 1, True),
        'overlay composition': (time_each(lambda p: picture(p[0], p[1], t), pictures), 1, False),
        'overlay PNG encode + write': (time_each(lambda p: save_png(os.path.join(out, 'o.png'), p[2]),
                                                 pictures), 1, False),
        'mask PNG encode + write': (time_each(lambda p: save_png(os.path.join(out, 'm.png'), Image.fromarray(
            (p[1].mask * 255).astype(np.uint8))), pictures), 1, False),
    }


def limit_rows(side: int, streamed: dict, shared: dict, batches: list, streams: int):
    """(rows, limits): the model as the command runs it per runtime, and the rate the stages allow."""
    cores = os.cpu_count() or 1
    rows, limits = [], {}
    for runtime, detector in streamed.items():
        list(detector.score_batches(batches[:2 * streams]))  # warm-up: every stream's request
        start = time.perf_counter()
        for _ in detector.score_batches(batches):
            pass
        model = (time.perf_counter() - start) / len(batches)  # wall per image, every core busy
        rows.append(Row(f'stage {side}px: model ({runtime}, {streams} streams)', 1000 * model, 'ms',
                        notes=f'{1000 * model * cores:.2f} core-ms ({cores} cores busy)',
                        data={'core_ms': 1000 * model * cores}))
        for label, scores_only in (('overlays', False), ('--scores-only', True)):
            core_seconds = model * cores + sum(sec * busy for sec, busy, both in shared.values()
                                               if both or not scores_only)
            limits[runtime, label] = cores / core_seconds
            rows.append(Row(f'limit {side}px, {runtime}, {label}', limits[runtime, label], 'img/s',
                            notes=f'{cores} cores / {1000 * core_seconds:.2f} core-ms per image',
                            data={'core_ms': 1000 * core_seconds}))
    return rows, limits


def command_rows(a, side, root, folder, paths, onnx_path, alone, streamed, streams, batches, limits) -> list:
    """The interleaved rounds at one image size: the predict command (overlays, --scores-only), the Python
    API and the model alone, per runtime, as rates and ratios to the model alone."""
    cores = os.cpu_count() or 1
    cache = os.path.join(root, 'openvino-cache')
    timed, first, rows = {}, {}, []
    for runtime in RUNTIMES:
        timed[f'{runtime}: model alone, one image on every thread'] = (
            lambda d=alone[runtime]: [d.score_images(x) for x, _ in batches])
        for label, extra in (('overlays', []), ('--scores-only', ['--scores-only'])):
            timed[f'{runtime}: predict command, {label}'] = command(
                ['--action-type', 'predict', '--checkpoint', onnx_path, '--runtime', runtime.lower(),
                 '--input', folder, '--no-cuda', '--workers', str(min(2, cores)), '-bs', '1',
                 '--output-dir', os.path.join(root, f'command{side}')] + extra +
                (['--openvino-cache', cache] if runtime == 'OpenVINO' else []))
        timed[f'{runtime}: Python load_model(streams={streams}).predict(paths)'] = (
            lambda d=streamed[runtime]: d.predict(paths, batch_size=1))
    for name, fn in timed.items():  # a command's first run: the cold start (OpenVINO's cache empty)
        if 'command' in name:
            with Timer() as cold:
                fn()
            first[name] = cold.seconds
    seconds = interleaved(timed, a.stage_rounds, 'cpu')
    for runtime in RUNTIMES:
        baseline = f'{runtime}: model alone, one image on every thread'
        for row in speed_rows({k: v for k, v in seconds.items() if k.startswith(runtime)}, len(paths), baseline):
            row.notes = f'{len(paths)} PNG files {side}px, batch 1'
            if row.name in first:
                row.data = {'of_limit': row.value / limits[runtime, row.name.rsplit(', ', 1)[-1]],
                            'cold_img_s': len(paths) / first[row.name]}
                row.notes += (f'; {row.data["of_limit"]:.2f}x of the limit; first run (cold cache) '
                              f'{row.data["cold_img_s"]:.1f} img/s')
            row.name = f'{side}px {row.name}'
            rows.append(row)
    return rows


def run(a):
    encoder, decoders = build_model(a.enc_arch, a.pool_layers, a.coupling_blocks, 'cpu')
    streams = automatic_streams(a.stage_images > 1)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        make_demo_class(root, 'calibration', image_size=a.input_size, n_train=8, n_test_good=1, n_test_defect=1)
        model, _, _ = calibrated_model(a.enc_arch, encoder, decoders, a.input_size,
                                       os.path.join(root, 'calibration', 'train', 'good'))
        onnx_path = os.path.join(root, 'model.onnx')
        export_onnx(model, onnx_path)
        alone = {name: load_model(onnx_path, runtime=name.lower()) for name in RUNTIMES}
        streamed = {name: load_model(onnx_path, runtime=name.lower(), streams=streams) for name in RUNTIMES}
        for side in [int(v) for v in a.stage_sizes.split(',')]:
            make_demo_class(root, f'stages{side}', image_size=side, n_train=a.stage_images, n_test_good=1,
                            n_test_defect=1)
            folder = os.path.join(root, f'stages{side}', 'train', 'good')
            paths = list_images(folder)
            files = ImageFiles(paths, a.input_size)
            items = [files[i] for i in range(len(files))]
            scored = [(x, item, alone['OpenVINO'].score_images(x[None])) for x, item in items]
            out = os.path.join(root, f'out{side}')
            os.makedirs(out)
            shared = stage_seconds(files, items, scored, alone['OpenVINO'], out)
            rows += [Row(f'stage {side}px: {name}', 1000 * seconds, 'ms', notes=f'{1000 * seconds:.2f} core-ms',
                         data={'core_ms': 1000 * seconds * busy}) for name, (seconds, busy, _) in shared.items()]
            batches = [(x[None], None) for x, _ in items]
            limits_rows, limits = limit_rows(side, streamed, shared, batches, streams)
            rows += limits_rows
            rows += command_rows(a, side, root, folder, paths, onnx_path, alone, streamed, streams, batches, limits)
    return rows
