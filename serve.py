"""``--action-type serve``: the calibrated model behind HTTP (``service/``), until SIGTERM or Ctrl-C.

    python main.py --action-type serve --checkpoint FILE [--host 127.0.0.1] [--port 8000] [--runtime NAME]

Any model file predict takes (.pt, .safetensors, .onnx, an INT8 .xml), with predict's threshold flags.
Binds 127.0.0.1 unless told otherwise; another host needs an API key (--api-key or CFLOW_API_KEY). On
SIGTERM it stops accepting, answers the requests it accepted, then exits; SIGHUP reloads the model file.
"""
import os

from service.options import LOCAL_HOSTS, ServiceOptions
from utils.errors import CflowError
from utils.model_kinds import is_exported


def service_options(c) -> ServiceOptions:
    """The command line's settings as the service's options."""
    return ServiceOptions(checkpoint=c.checkpoint, host=c.host, port=c.port, runtime=c.runtime, device=c.device,
                          threads=c.threads or 0, image_threshold=c.image_threshold, pixel_threshold=c.pixel_threshold,
                          sensitivity=c.sensitivity, max_batch=c.max_batch, max_wait_ms=c.max_wait_ms,
                          max_queue=c.max_queue, max_upload_mb=c.max_upload_mb,
                          api_key=c.api_key or os.environ.get('CFLOW_API_KEY') or None, log_dir=c.log_dir,
                          save_defective=c.save_defective, max_image_pixels=c.max_image_pixels)


def check_service(c, options: ServiceOptions) -> None:
    if options.host not in LOCAL_HOSTS and not options.api_key:
        raise CflowError(f'--host {options.host} opens the service to other machines: give it a key with --api-key '
                         f'KEY (or CFLOW_API_KEY), or keep the default --host 127.0.0.1')
    if not is_exported(c.checkpoint) and c.calibration is None:
        raise CflowError(f'{c.checkpoint} has no calibration, which the service\'s decisions need: calibrate it first '
                         f'(--action-type calibrate --checkpoint {c.checkpoint} --calibration-path DIR)')


def run_serve(c) -> None:
    import uvicorn
    from service.app import create_app
    options = service_options(c)
    check_service(c, options)
    uvicorn.run(create_app(options), host=options.host, port=options.port, log_level='warning',
                timeout_graceful_shutdown=60)
