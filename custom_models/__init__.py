"""Encoders, flows, scoring and the deployable model. Import-light: the architecture names for
``--help`` and flag checks, and ``load_model`` (which imports torch only when called)."""
from custom_models.architectures import DECODER_ARCHS, ENCODER_ARCHS, MOBILENETS, RESNETS  # noqa: F401


def load_model(path, device='cpu', runtime=None, **options):
    """A calibrated model file, ready to ``.predict(inputs)``: CFLOW's (``custom_models/detector.py``), or a
    calibrated DifferNet's (``custom_models/differnet_detector.py``)."""
    import os
    from custom_models.differnet_detector import (differnet_detector, differnet_onnx_detector, is_differnet_export,
                                                  is_differnet_file)
    if is_differnet_export(os.fspath(path)):
        return differnet_onnx_detector(os.fspath(path), options.get('threads', 0), options.get('image_threshold'),
                                       options.get('sensitivity'), runtime)
    if is_differnet_file(os.fspath(path)):
        if options.get('pixel_threshold') is not None:
            from utils.errors import CflowError
            raise CflowError('--pixel-threshold: a DifferNet mask is relative to its map\'s peak, it has no pixel '
                             'threshold; drop it')
        return differnet_detector(os.fspath(path), device, options.get('image_threshold'),
                                  options.get('sensitivity'), runtime)
    from custom_models.detector import load_model as load
    return load(path, device=device, runtime=runtime, **options)
