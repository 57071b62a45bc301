"""``--action-type calibrate``: per-layer constants and thresholds from defect-free images.

    python main.py --action-type calibrate --checkpoint FILE --calibration-path DIR [--output FILE]

Scores every image under DIR (recursively, any supported format; none of them used for
training), computes the constants and thresholds of ``utils/calibration.py`` and writes the
model with them: an authors'-format checkpoint with an extra ``calibration`` key (it still
loads wherever the authors' checkpoints load), or a compact ``.safetensors`` file. After
``norm-train`` the same runs on ``--calibration-path`` or, without it, on the training images.
"""
import os

from custom_datasets.common import calibration_images
from utils.errors import CflowError
from custom_models.model_file import read_model, write_model
from actions import calibrate_on_folder, model_settings


def default_output(checkpoint: str) -> str:
    """Beside the input: model.pt -> model_calibrated.pt (the input is never overwritten)."""
    stem, _ = os.path.splitext(checkpoint)
    return stem + '_calibrated' + ('.safetensors' if checkpoint.endswith('.safetensors') else '.pt')


def run_calibrate(c) -> dict:
    if not c.calibration_path:
        raise CflowError('--action-type calibrate needs --calibration-path DIR (defect-free images not used '
                         'for training)')
    paths = calibration_images(c.calibration_path)  # a missing or unreadable image fails before the model loads
    model = read_model(c.checkpoint, model_settings(c)).to(c.device)
    model.calibration = calibrate_on_folder(c, model.encoder, model.decoders, paths)
    output = c.output or default_output(c.checkpoint)
    write_model(output, model)
    print(f'Calibrated model written to {output}')
    return {'output': output, 'calibration': model.calibration}
