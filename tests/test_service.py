"""The inspection service over real HTTP on 127.0.0.1: a uvicorn server started on a free port by the real
command (``main.py --action-type serve``), talked to with plain HTTP clients, and its page in headless Chromium."""
import glob
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.test_errors import assert_one_line_error, run_cli

START_SECONDS = 120  # a server that is not ready by then has failed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    """``python main.py --action-type serve ...`` in its own process, ready when /health answers."""

    def __init__(self, checkpoint, folder, *flags, host='127.0.0.1', key=None):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.key = key
        self.log = open(os.path.join(folder, f'server-{self.port}.log'), 'w')
        self.process = subprocess.Popen([sys.executable, 'main.py', '--action-type', 'serve', '--checkpoint', checkpoint,
                                         '--host', host, '--port', str(self.port), '--no-cuda', *flags],
                                        cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + START_SECONDS
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f'the server exited: {open(self.log.name).read()[-2000:]}')
            try:
                if request(self.url + '/health')[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f'the server was not ready in {START_SECONDS} s: {open(self.log.name).read()[-2000:]}')

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def predict(self, path=None, data=None, query='', raw=False, key=None):
        """POST /predict with the file at ``path`` (multipart field "image", or the raw body) or ``data``."""
        data = open(path, 'rb').read() if path is not None else data
        headers = {'X-API-Key': key or self.key} if (key or self.key) else {}
        if raw:
            return request(f'{self.url}/predict{query}', data, {**headers, 'Content-Type': 'application/octet-stream'})
        body, content_type = multipart({'image': (os.path.basename(path or 'upload.png'), data)})
        return request(f'{self.url}/predict{query}', body, {**headers, 'Content-Type': content_type})


def multipart(files: dict):
    boundary = uuid.uuid4().hex
    parts = []
    for field, (name, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b'\r\n')
    return b''.join(parts) + f'--{boundary}--\r\n'.encode(), f'multipart/form-data; boundary={boundary}'


def request(url, data=None, headers=None, method=None, timeout=60):
    """(status, parsed JSON or text, headers) of one HTTP request; 4xx/5xx are answers, not exceptions."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, body, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, body, got = exc.code, exc.read(), exc.headers
    text = body.decode('utf-8', 'replace')
    return status, (json.loads(text) if got.get('content-type', '').startswith('application/json') else text), got


@pytest.fixture(scope='module')
def model(trained):
    """(calibrated checkpoint, test images of the demo class, {path: predict's score})."""
    from custom_models import load_model
    _, checkpoint, demo_root = trained
    paths = sorted(glob.glob(os.path.join(demo_root, 'textile', 'test', '*', '*.png')))[::3]
    expected = {p: r.score for p, r in zip(paths, load_model(checkpoint).predict(paths))}
    return checkpoint, paths, expected


@pytest.fixture(scope='module')
def server(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp('service')
    running = Server(model[0], str(folder), '--max-wait-ms', '30', '--max-image-pixels', '50000', '--max-upload-mb',
                     '1', '--log-dir', str(folder / 'log'), '--save-defective', str(folder / 'defective'))
    running.folder = folder
    yield running
    running.stop()


def test_concurrent_clients_get_predicts_scores_in_batches(server, model):
    _, paths, expected = model
    results, errors = [], []

    def client(k):
        try:
            for j, path in enumerate(paths[k::4]):
                results.append((path, server.predict(path, raw=(j % 2 == 1))))
        except Exception as exc:  # a failed client fails the test below
            errors.append(exc)
    threads = [threading.Thread(target=client, args=(k % 4,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors and len(results) == 2 * len(paths)
    for path, (status, body, _) in results:
        assert status == 200, body
        assert body['score'] == pytest.approx(expected[path], rel=1e-5, abs=1e-6)
        assert body['size'] == list(Image.open(path).size) and set(body['timing_ms']) >= {'decode', 'queue', 'model'}
    assert max(body['batch_size'] for _, (_, body, _) in results) > 1  # requests arriving together, scored together


def test_bad_uploads_get_a_4xx_with_one_line_and_the_service_goes_on(server, model, tmp_path):
    _, paths, expected = model
    good = open(paths[0], 'rb').read()
    bomb = io.BytesIO()
    Image.new('RGB', (300, 300), (90, 60, 40)).save(bomb, format='PNG')  # 90,000 px > --max-image-pixels 50000
    cases = {'empty body': (server.predict(data=b'', raw=True), 400),
             'not an image': (server.predict(data=b'hello, world' * 10, raw=True), 415),
             'truncated': (server.predict(data=good[:len(good) // 2], raw=True), 400),
             'decompression bomb': (server.predict(data=bomb.getvalue()), 413),
             'over --max-upload-mb': (server.predict(data=os.urandom(2 * 2 ** 20), raw=True), 413),
             'no "image" field': (request(server.url + '/predict', *multipart({'file': ('a.png', good)})[:1],
                                          {'Content-Type': multipart({'file': ('a.png', good)})[1]}), 400),
             'bad query': (server.predict(paths[0], query='?sensitivity=-2'), 400)}
    for name, ((status, body, _), want) in cases.items():
        assert status == want, (name, status, body)
        assert isinstance(body['error'], str) and '\n' not in body['error'] and body['error'], name
    assert request(server.url + '/health')[0] == 200
    status, body, _ = server.predict(paths[0])
    assert status == 200 and body['score'] == pytest.approx(expected[paths[0]], rel=1e-5, abs=1e-6)


def test_mask_overlay_and_sensitivity(server, model):
    _, paths, expected = model
    defective = next(p for p in paths if '/good/' not in p)
    status, body, _ = server.predict(defective, query='?mask=1&overlay=1')
    assert status == 200
    mask = np.asarray(Image.open(io.BytesIO(__import__('base64').b64decode(body['mask_png']))))
    assert mask.shape == tuple(reversed(body['size'])) and (mask > 0).sum() == body['defect_area']['pixels']
    assert Image.open(io.BytesIO(__import__('base64').b64decode(body['overlay_png']))).width > body['size'][0]
    status, twice, _ = server.predict(defective, query='?sensitivity=2')
    assert twice['thresholds']['image_threshold'] == pytest.approx(body['thresholds']['image_threshold'] / 2)
    assert twice['score'] == pytest.approx(body['score'], rel=1e-5) and twice['thresholds']['thresholds'] == 'sensitivity 2'


def test_model_metrics_and_records(server, model):
    checkpoint = model[0]
    status, described, _ = request(server.url + '/model')
    import hashlib
    assert status == 200 and described['sha256'] == hashlib.sha256(open(checkpoint, 'rb').read()).hexdigest()
    assert described['thresholds']['image_threshold'] > 0 and described['runtime'] == 'torch'
    metrics = request(server.url + '/metrics')[1]
    served = sum(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith('cflow_requests_total{endpoint="/predict",status="200"}'))
    decided = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith('cflow_decisions_total'))
    assert served >= 1 and decided == served  # every 200 was one decision
    lines = [json.loads(line) for line in open(server.folder / 'log' / 'decisions.jsonl')]
    assert len(lines) == served and {'time', 'source', 'score', 'decision', 'model_sha256'} <= set(lines[0])
    assert {line['model_sha256'] for line in lines} == {described['sha256']}
    defective = sum(line['decision'] == 'defective' for line in lines)
    deadline = time.time() + 30  # written on a background thread
    while len(glob.glob(str(server.folder / 'defective' / '*.overlay.png'))) < defective and time.time() < deadline:
        time.sleep(0.1)
    assert defective and len(glob.glob(str(server.folder / 'defective' / '*.overlay.png'))) == defective


def test_a_reload_under_a_steady_client_loop_loses_no_request(server, model, exported):
    _, paths, _ = model
    other = str(exported[0] / 'model.safetensors')
    statuses, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            statuses.append(server.predict(paths[len(statuses) % len(paths)])[0])
    client = threading.Thread(target=loop)
    client.start()
    time.sleep(0.5)
    status, body, _ = request(f'{server.url}/reload?path={other}', b'', method='POST')
    assert status == 200 and body['file'] == os.path.abspath(other)
    status, body, _ = request(f'{server.url}/reload?path={other}.missing', b'', method='POST')
    assert status == 400 and 'did not load' in body['error'] and 'still serves' in body['error']
    server.process.send_signal(signal.SIGHUP)  # the file being served, read again

    def reloads():
        return [line for line in request(server.url + '/metrics')[1].splitlines()
                if line.startswith('cflow_reloads_total')]
    deadline = time.time() + 60  # the SIGHUP reload runs beside the client loop: seconds on a busy machine
    while time.time() < deadline and not any('result="loaded"} 2.0' in line for line in reloads()):
        time.sleep(0.2)
    time.sleep(0.5)  # requests go on after the swap
    stop.set()
    client.join(60)
    assert statuses and set(statuses) == {200}
    assert request(server.url + '/model')[1]['file'] == os.path.abspath(other)
    assert any('result="loaded"} 2.0' in line for line in reloads()) and any('result="failed"} 1.0' in line
                                                                              for line in reloads())


def test_a_full_queue_answers_503_with_retry_after_never_a_backlog(model, tmp_path):
    _, paths, expected = model
    busy = Server(model[0], str(tmp_path), '--max-queue', '4', '--max-batch', '8', '--max-wait-ms', '400')
    try:
        start, answers = threading.Barrier(64), []

        def client(k):
            start.wait()
            answers.append((paths[k % len(paths)], busy.predict(paths[k % len(paths)])))
        threads = [threading.Thread(target=client, args=(k,)) for k in range(64)]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
    finally:
        busy.stop()
    assert len(answers) == 64 and {status for _, (status, _, _) in answers} == {200, 503}
    for path, (status, body, headers) in answers:
        if status == 200:
            assert body['score'] == pytest.approx(expected[path], rel=1e-5, abs=1e-6)
        else:
            assert headers['Retry-After'] and 'busy' in body['error']
    assert sum(status == 200 for _, (status, _, _) in answers) >= 4


def test_another_host_needs_a_key_and_the_key_is_checked(model, tmp_path, capsys):
    checkpoint = model[0]
    assert_one_line_error(*run_cli(capsys, ['--action-type', 'serve', '--checkpoint', checkpoint, '--host', '0.0.0.0',
                                            '--no-cuda']), '--host 0.0.0.0', '--api-key')
    keyed = Server(checkpoint, str(tmp_path), '--api-key', 'k3y-for-tests', host='0.0.0.0', key='k3y-for-tests')
    try:
        assert keyed.predict(model[1][0])[0] == 200
        status, body, _ = keyed.predict(model[1][0], key='wrong')
        assert status == 401 and 'X-API-Key' in body['error']
        assert request(keyed.url + '/model')[0] == 401 and request(keyed.url + '/health')[0] == 200
    finally:
        keyed.stop()


def test_sigterm_finishes_the_requests_it_accepted(model, tmp_path):
    _, paths, expected = model
    slow = Server(model[0], str(tmp_path), '--max-wait-ms', '1500', '--max-batch', '8')
    answer = []
    client = threading.Thread(target=lambda: answer.append(slow.predict(paths[0])))
    client.start()
    deadline = time.time() + 10
    while time.time() < deadline and 'cflow_queue_depth 1.0' not in request(slow.url + '/metrics')[1]:
        time.sleep(0.05)
    slow.process.send_signal(signal.SIGTERM)
    client.join(60)
    assert slow.process.wait(60) == 0
    slow.stop()
    (status, body, _), = answer
    assert status == 200 and body['score'] == pytest.approx(expected[paths[0]], rel=1e-5, abs=1e-6)


def chromium():
    """(chromium binary, chromedriver) or None."""
    browser = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    driver = shutil.which('chromedriver') or ('/usr/lib/chromium/chromedriver'
                                              if os.path.exists('/usr/lib/chromium/chromedriver') else None)
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(chromium() is None, reason='neither chromium nor chromium-driver could be installed here '
                                               '(.ci/run installs both with apt-get)')
def test_the_page_shows_an_uploaded_images_score_in_chromium(server, model, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    _, paths, expected = model
    browser, driver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', f'--user-data-dir={tmp_path / "profile"}'):
        options.add_argument(flag)
    page = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        page.get(server.url + '/')
        WebDriverWait(page, 30).until(lambda p: 'runtime' not in p.find_element(By.ID, 'model').text or
                                      'torch' in p.find_element(By.ID, 'model').text)
        defective = next(p for p in paths if '/good/' not in p)
        page.find_element(By.ID, 'files').send_keys(defective)
        WebDriverWait(page, 60).until(lambda p: p.find_elements(By.ID, 'score'))
        assert float(page.find_element(By.ID, 'score').text) == pytest.approx(expected[defective], abs=1e-4)
        assert page.find_element(By.ID, 'decision').text in ('DEFECTIVE', 'GOOD')
        assert page.find_element(By.ID, 'overlay').get_attribute('src').startswith('data:image/png;base64,')
        assert page.find_element(By.ID, 'counts').text.startswith('1 images')
    finally:
        page.quit()
