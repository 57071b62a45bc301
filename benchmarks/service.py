"""The inspection service against the commands on the same images (ResNet-18 at --input-size, calibrated,
PNG files of --service-image-size): per runtime (the .pt on PyTorch, the exported .onnx on OpenVINO), the
predict command with --scores-only (its own rate: the model load excluded) and ``load_model().predict``,
then the running service (start-up excluded) with 1, 4 and 8 clients, each client one keep-alive
connection sending the files as raw bodies; latency p50/p99 at 1 client; and two service processes of
one thread each with 8 clients spread over them (what any load balancer in front of N processes does).
Paths interleaved over --service-rounds rounds; ratios to predict --scores-only in the same round."""
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks.commands import command
from benchmarks.models import build_model, calibrated_model
from benchmarks.rows import Row
from benchmarks.timing import Timer
from custom_datasets.common import list_images
from custom_datasets.synthetic import make_demo_class
from custom_models import load_model
from custom_models.model_file import LoadedModel, write_model
from utils.export_onnx import export_onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_server(model: str, runtime_flags: list, threads: int = 0) -> tuple:
    """(process, port) of ``main.py --action-type serve``, once /health answers."""
    port = free_port()
    argv = ['main.py', '--action-type', 'serve', '--checkpoint', model, '--port', str(port), '--no-cuda', *runtime_flags]
    process = subprocess.Popen([sys.executable, *argv] + (['--threads', str(threads)] if threads else []),
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            connection = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
            connection.request('GET', '/health')
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f'the service on port {port} did not start')


def clients(ports: list, images: list, n_clients: int) -> list:
    """Each image sent once, by ``n_clients`` clients (client k: images k, k + n, ...; ports in turn);
    returns every request's latency in seconds."""
    latencies, errors = [], []

    def client(k):
        connection = http.client.HTTPConnection('127.0.0.1', ports[k % len(ports)], timeout=120)
        for data in images[k::n_clients]:
            start = time.perf_counter()
            connection.request('POST', '/predict', body=data, headers={'Content-Type': 'application/octet-stream'})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                errors.append(body)
            latencies.append(time.perf_counter() - start)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if errors:
        raise RuntimeError(f'the service answered {len(errors)} requests with an error: {errors[0][:200]}')
    return latencies


def predict_rate(model: str, folder: str, out: str, runtime_flags: list) -> float:
    """predict --scores-only's own images/s (its summary: from the first batch on, the model load excluded)."""
    command(['--action-type', 'predict', '--checkpoint', model, '--input', folder, '--scores-only', '--no-cuda',
             '--output-dir', out, '--workers', str(min(2, os.cpu_count() or 1)), *runtime_flags])()
    return json.load(open(os.path.join(out, 'predictions.json')))['summary']['images_per_second']


def runtime_paths(a, model: str, runtime_flags: list, folder: str, tmp: str, servers: dict) -> dict:
    """name -> function returning (images per second, latencies or None) of one measured path."""
    paths = list_images(folder)
    images = [open(p, 'rb').read() for p in paths]
    detector = load_model(model, runtime=runtime_flags[-1] if runtime_flags else None)
    one, several = servers['one'][1], [port for name, (_, port) in servers.items() if name != 'one']

    def served(ports, n):
        def measure():
            with Timer() as t:
                latencies = clients(ports, images, n)
            return len(images) / t.seconds, latencies
        return measure

    def api():
        with Timer() as t:
            detector.predict(paths, batch_size=8)
        return len(paths) / t.seconds, None
    return {'predict --scores-only': lambda: (predict_rate(model, folder, os.path.join(tmp, 'out'), runtime_flags),
                                              None),
            'load_model().predict (batch 8)': api, 'service, 1 client': served([one], 1),
            'service, 4 clients': served([one], 4), 'service, 8 clients': served([one], 8),
            **({f'service, {len(several)} processes x 1 thread, 8 clients': served(several, 8)} if several else {})}


def measure_runtime(a, name: str, model: str, runtime_flags: list, folder: str, tmp: str) -> list:
    servers = {'one': start_server(model, runtime_flags),
               **{f'single-thread {k}': start_server(model, runtime_flags, threads=1)
                  for k in range(a.service_processes)}}
    try:
        paths = runtime_paths(a, model, runtime_flags, folder, tmp, servers)
        names = list(paths)
        for n in names:
            paths[n]()  # warm-up
        rates, latencies = {n: [] for n in names}, []
        for r in range(a.service_rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                rate, lat = paths[n]()
                rates[n].append(rate)
                if n == 'service, 1 client':
                    latencies += lat
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(60)
    base = rates['predict --scores-only']
    rows = []
    for n in names:
        ratios = [v / b for v, b in zip(rates[n], base)]
        rows.append(Row(f'{name}: {n}', float(np.median(rates[n])), 'img/s', (min(rates[n]), max(rates[n])),
                        baseline=n == 'predict --scores-only',
                        ratio=None if n == 'predict --scores-only' else float(np.median(ratios)),
                        ratio_spread=None if n == 'predict --scores-only' else (min(ratios), max(ratios))))
    p50, p99 = (1000 * float(np.percentile(latencies, q)) for q in (50, 99))
    rows.append(Row(f'{name}: service latency, 1 client', p50, 'ms', notes=f'p50; p99 {p99:.1f} ms over '
                                                                          f'{len(latencies)} requests',
                    data={'p50_ms': p50, 'p99_ms': p99}))
    return rows


def run(a):
    encoder, decoders = build_model('resnet18', 3, a.coupling_blocks, 'cpu')
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_demo_class(tmp, 'service', image_size=a.service_image_size, n_train=a.service_images, n_test_good=1,
                        n_test_defect=1)
        folder = os.path.join(tmp, 'service', 'train', 'good')
        model, settings, calibration = calibrated_model('resnet18', encoder, decoders, a.input_size, folder)
        checkpoint, onnx_path = os.path.join(tmp, 'model.pt'), os.path.join(tmp, 'model.onnx')
        write_model(checkpoint, LoadedModel(encoder, decoders, settings, calibration))
        export_onnx(model, onnx_path)
        runtimes = {'torch': ('PyTorch (.pt)', checkpoint, []),
                    'openvino': ('OpenVINO (.onnx)', onnx_path, ['--runtime', 'openvino'])}
        for runtime in a.service_runtimes.split(','):
            rows += measure_runtime(a, *runtimes[runtime], folder, tmp)
    return rows
