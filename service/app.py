"""The HTTP service (``create_app``): FastAPI routes over the model holder and the batcher.

    POST /predict      the image as multipart field "image" or as the body; ?mask=1, ?overlay=1, ?sensitivity=S
    GET  /health       200 once the model is loaded and warmed (uvicorn answers nothing before)
    GET  /model        the file, its SHA-256, settings, thresholds, precision, runtime
    GET  /metrics      Prometheus text
    POST /reload       the file again, or ?path=FILE: loaded, warmed, swapped in; the old one serves meanwhile
    GET  /             the page (service/page.py)

Bad input is a 4xx with a one-line JSON ``error`` and the service goes on; a 5xx is a real fault, logged.
"""
import asyncio
import base64
import hmac
import io
import logging
import signal
import time
from contextlib import asynccontextmanager
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from service.batching import Batcher, Overloaded, Scored
from service.models import ModelHolder
from service.options import ServiceOptions
from service.page import PAGE
from service.records import Records
from service.telemetry import Telemetry
from service.uploads import BadUpload, Upload, decode
from utils.errors import CflowError, user_message
from utils.viz import display_copy, prediction_picture

log = logging.getLogger('cflow.service')
OPEN_PATHS = ('/health', '/')  # without the API key: readiness, and the page (static: it holds no data)
ROUTES = ('/predict', '/health', '/model', '/metrics', '/reload', '/')  # metric labels: these, or 'other'


def error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status, headers=headers)


DRAIN_BYTES = 256 * 2 ** 20  # of a body over the limit, read and dropped so the client gets its 413 cleanly


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes: never kept beyond it. The rest is read and dropped
    (up to ``DRAIN_BYTES``), since a client still sending would otherwise see a broken connection, not the 413."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit + DRAIN_BYTES:
            break
    if size > limit:
        raise BadUpload(413, f'upload over {limit / 2 ** 20:g} MB: send a smaller image, or start the service '
                             f'with a larger --max-upload-mb')
    return b''.join(chunks)


async def upload_of(request: Request, body: bytes, limit: int) -> Upload:
    """The image of a multipart upload (field "image") or of a raw body."""
    if not request.headers.get('content-type', '').startswith('multipart/form-data'):
        return Upload(body, request.headers.get('x-filename', 'body'))

    async def stream():
        yield body
    try:
        form = await MultiPartParser(request.headers, stream(), max_part_size=limit).parse()
    except MultiPartException as exc:
        raise BadUpload(400, f'malformed multipart upload ({exc.message})') from None
    field = form.get('image')
    if field is None or isinstance(field, str):
        fields = ', '.join(form.keys()) or 'none'
        raise BadUpload(400, f'multipart upload without a file in the field "image" (fields: {fields}): '
                             f'send the image as image=@FILE')
    return Upload(await field.read(), field.filename or 'image')


def query_options(request: Request):
    """(mask, overlay, sensitivity) of ?mask=1&overlay=1&sensitivity=S."""
    q = request.query_params
    flags = {}
    for name in ('mask', 'overlay'):
        value = q.get(name, '0').lower()
        if value not in ('0', '1', 'true', 'false'):
            raise BadUpload(400, f'?{name}={value}: pass 1 or 0')
        flags[name] = value in ('1', 'true')
    sensitivity = q.get('sensitivity')
    if sensitivity is not None:
        try:
            sensitivity = float(sensitivity)
        except ValueError:
            sensitivity = -1.0
        if not 0 < sensitivity < float('inf'):
            raise BadUpload(400, f'?sensitivity={q.get("sensitivity")}: pass a number above 0 (1 = stored thresholds)')
    return flags['mask'], flags['overlay'], sensitivity


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG', compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode('ascii')


def answer(scored: Scored, upload: Upload, image: Image.Image, want_mask: bool, want_overlay: bool,
           decode_ms: float) -> dict:
    """The JSON of one scored image (off the event loop: masks and overlays are encoded here)."""
    p = scored.prediction
    pixels = int(np.count_nonzero(p.mask))
    body = {'source': upload.name, 'score': p.score, 'defective': p.defective, 'thresholds': p.thresholds,
            'defect_area': {'pixels': pixels, 'fraction': pixels / max(p.mask.size, 1)}, 'size': list(p.size),
            'model_sha256': scored.version.sha256, 'batch_size': scored.batch_size,
            'timing_ms': {'decode': decode_ms, 'queue': scored.queue_ms, 'model': scored.model_ms}}
    if want_mask:
        body['mask_png'] = png_base64(Image.fromarray((p.mask * 255).astype(np.uint8)))
    if want_overlay:
        picture = prediction_picture(display_copy(image, minimum=256), p, scored.thresholds,
                                     scored.version.detector.precision)
        body['overlay_png'] = png_base64(picture)
    return body


class Service:
    """What one service process holds: the model, the batcher, the records and the metrics."""

    def __init__(self, options: ServiceOptions):
        self.options = options
        self.holder = ModelHolder(options)
        self.telemetry = Telemetry()
        self.records = Records(options.log_dir, options.save_defective)
        self.batcher = Batcher(self.holder, options.max_batch, options.max_wait_ms, options.max_queue, self.on_batch)

    def on_batch(self, version, jobs, predictions) -> None:
        self.telemetry.batches.observe(len(jobs))
        for p in predictions:
            self.telemetry.decisions.labels('defective' if p.defective else 'good').inc()
        self.records.batch(version, jobs, predictions)

    async def reload(self, path: Optional[str] = None):
        """(version, None) after a swap, or (None, why) with the old version still serving."""
        try:
            version = await run_in_threadpool(self.holder.load, path)
        except Exception as exc:  # any reason the file did not load: the old model keeps serving
            self.telemetry.reloads.labels('failed').inc()
            why = (user_message(exc) or type(exc).__name__).splitlines()[0]
            return None, f'{path or self.holder.current.path} did not load ({why}); {self.holder.current.path} still serves'
        self.telemetry.reloads.labels('loaded').inc()
        print(f'Reloaded {version.path} (SHA-256 {version.sha256[:12]})', flush=True)
        return version, None

    async def predict(self, request: Request) -> Response:
        """POST /predict: admitted (or 503), read, decoded off the event loop, batched, answered."""
        started = time.perf_counter()
        try:
            self.batcher.admit()
        except Overloaded:
            return error(503, f'busy: {self.options.max_queue} requests are being scored; retry in a moment',
                         {'Retry-After': '1'})
        self.telemetry.queue.inc()
        try:
            want_mask, want_overlay, sensitivity = query_options(request)
            upload = await upload_of(request, await read_body(request, self.options.max_upload_bytes),
                                     self.options.max_upload_bytes)
            image = await run_in_threadpool(decode, upload)
            version = self.holder.current
            tensor = await run_in_threadpool(model_input, version.detector, image)
            decode_ms = 1000 * (time.perf_counter() - started)
            scored = await self.batcher.score(image, tensor, sensitivity, upload.name, version)
            body = await run_in_threadpool(answer, scored, upload, image, want_mask, want_overlay, decode_ms)
            body['timing_ms']['total'] = 1000 * (time.perf_counter() - started)
            self.telemetry.latency.observe(time.perf_counter() - started)
            return JSONResponse(body)
        except BadUpload as exc:
            return error(exc.status, exc.message)
        finally:
            self.batcher.release()
            self.telemetry.queue.dec()


def model_input(detector, image):
    """The image as the model takes it; an image a tiled model's tiles do not fit is the client's to fix (422)."""
    try:
        return detector.model_input(image)
    except CflowError as exc:
        raise BadUpload(422, str(exc)) from None


def key_refused(request: Request, key: Optional[str]) -> Optional[JSONResponse]:
    """401 unless the request carries the service's key (compared in constant time); None when it may pass."""
    if key is None or request.url.path in OPEN_PATHS:
        return None
    given = request.headers.get('x-api-key', '')
    if hmac.compare_digest(given.encode(), key.encode()):
        return None
    return error(401, 'missing or wrong X-API-Key header: this service needs its key (--api-key / CFLOW_API_KEY)')


def create_app(options: ServiceOptions) -> FastAPI:
    service = Service(options)

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.holder.load)  # loaded and warmed before uvicorn accepts a connection
        service.batcher.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(service.reload()))
        version = service.holder.current
        print(f'Serving {version.path} (SHA-256 {version.sha256[:12]}, {version.detector.runtime}) on '
              f'http://{options.host}:{options.port}', flush=True)
        yield
        await service.batcher.stop()
        service.records.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.middleware('http')
    async def guard_and_count(request: Request, call_next):
        response = key_refused(request, options.api_key)
        if response is None:
            try:
                response = await call_next(request)
            except Exception:  # a real fault: logged with its traceback, answered 500, the service goes on
                log.exception('error while answering %s %s', request.method, request.url.path)
                response = error(500, 'internal error (logged by the service)')
        path = request.url.path if request.url.path in ROUTES else 'other'
        service.telemetry.requests.labels(path, str(response.status_code)).inc()
        return response

    add_routes(app, service)
    return app


def add_routes(app: FastAPI, service: Service) -> None:
    @app.post('/predict')
    async def predict(request: Request):
        return await service.predict(request)

    @app.get('/health')
    async def health():
        return {'status': 'ready', 'model_sha256': service.holder.current.sha256}

    @app.get('/model')
    async def model():
        return service.holder.current.describe()

    @app.get('/metrics')
    async def metrics():
        return Response(service.telemetry.text(), media_type='text/plain; version=0.0.4')

    @app.post('/reload')
    async def reload(path: Optional[str] = None):
        version, why = await service.reload(path)
        return error(400, why) if version is None else {'status': 'reloaded', **version.describe()}

    @app.get('/')
    async def page():
        return HTMLResponse(PAGE)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, f'{exc.detail}: {request.method} {request.url.path}; the service answers '
                                      f'POST /predict, GET /health, /model, /metrics, POST /reload and GET /')
