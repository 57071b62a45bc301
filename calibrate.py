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
from custom_models.differnet_detector import is_differnet_file
from utils.progress import progress


def default_output(checkpoint: str) -> str:
    """Beside the input: model.pt -> model_calibrated.pt (the input is never overwritten)."""
    stem, _ = os.path.splitext(checkpoint)
    return stem + '_calibrated' + ('.safetensors' if checkpoint.endswith('.safetensors') else '.pt')


def calibrate_differnet(c, paths) -> dict:
    """A DifferNet file: the scores of the good images over their fixed views give t_I (utils/calibration.py);
    written as the authors' state dict plus a ``calibration`` key."""
    import numpy as np
    import torch
    from custom_models.differnet import load_differnet, read_differnet_file
    from custom_models.differnet_detector import DifferNetRunner
    from utils.atomic import atomic_write
    from utils.calibration import CALIBRATION_KEY, score_calibration
    from utils.images import read_rgb
    from utils.views import FixedViews
    settings = {'model': 'differnet', 'input_size': c.input_size, 'test_transforms': c.test_transforms,
                'norm_mean': list(c.norm_mean), 'norm_std': list(c.norm_std)}
    state, _ = read_differnet_file(c.checkpoint)
    runner = DifferNetRunner(load_differnet(c.checkpoint, c.seed, state), c.device, c.test_transforms, maps=False)
    views = FixedViews(c.input_size, c.test_transforms, c.norm_mean, c.norm_std)
    scores = np.concatenate([runner(views(read_rgb(p))[None])[1] for p in progress(paths, desc='calibrate')])
    calibration = score_calibration(scores, f'images under {c.calibration_path}', settings)
    output = c.output or default_output(c.checkpoint)
    atomic_write(output, lambda tmp: torch.save({**state, CALIBRATION_KEY: calibration}, tmp))
    print(f'Calibrated on {len(paths)} images: image threshold {calibration["image_threshold"]:.4g}; calibrated '
          f'DifferNet written to {output}')
    return {'output': output, 'calibration': calibration}


def run_calibrate(c) -> dict:
    if not c.calibration_path:
        raise CflowError('--action-type calibrate needs --calibration-path DIR (defect-free images not used '
                         'for training)')
    paths = calibration_images(c.calibration_path)  # a missing or unreadable image fails before the model loads
    if c.model_type == 'differnet':
        return calibrate_differnet(c, paths)
    if is_differnet_file(c.checkpoint):
        raise CflowError(f'{c.checkpoint} is a DifferNet model: pass --model differnet (its views and input size)')
    model = read_model(c.checkpoint, model_settings(c)).to(c.device)
    model.calibration = calibrate_on_folder(c, model.encoder, model.decoders, paths)
    output = c.output or default_output(c.checkpoint)
    write_model(output, model)
    print(f'Calibrated model written to {output}')
    return {'output': output, 'calibration': model.calibration}
