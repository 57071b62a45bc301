"""The inspection service: a calibrated model behind HTTP (FastAPI on uvicorn) and a web page.

``python main.py --action-type serve --checkpoint FILE`` (``serve.py``) builds ``ServiceOptions`` and runs
``service.app.create_app``. Modules: ``options`` (what the service is told), ``uploads`` (an upload
checked and decoded, off the event loop), ``batching`` (requests arriving together scored together,
a bounded queue), ``models`` (the model file, loaded, warmed and swapped atomically), ``records``
(decisions.jsonl, saved defective images), ``telemetry`` (Prometheus metrics), ``page`` (the page at ``/``).
"""
