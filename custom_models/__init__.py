"""Encoders, flows, scoring and the deployable model. Import-light: the architecture names for
``--help`` and flag checks, and ``load_model`` (which imports torch only when called)."""
from custom_models.architectures import DECODER_ARCHS, ENCODER_ARCHS, MOBILENETS, RESNETS  # noqa: F401


def load_model(path, device='cpu', runtime=None, **options):
    """A calibrated model file, ready to ``.predict(inputs)`` (``custom_models/detector.py``)."""
    from custom_models.detector import load_model as load
    return load(path, device=device, runtime=runtime, **options)
