"""``--action-type calibrate``: per-layer constants and thresholds from defect-free images.

    python main.py --action-type calibrate --checkpoint FILE --calibration-path DIR [--output FILE]

Scores every image under DIR (recursively, any supported format; none of them used for
training), computes the constants and thresholds of ``utils/calibration.py`` and writes the
model with them: an authors'-format checkpoint with an extra ``calibration`` key (it still
loads wherever the authors' checkpoints load), or a compact ``.safetensors`` file. After
``norm-train`` the same runs on ``--calibration-path`` or, without it, on the training images.
"""
import os
from typing import List, Optional

from custom_datasets.common import LabelledImages, check_readable, list_images_recursive
from custom_datasets.loaders import make_loader
from utils.calibration import CALIBRATION_KEY, calibrate_from_log_probs
from utils.checkpoint import save_checkpoint
from utils.errors import CflowError
from utils.progress import count
from utils.model_file import LoadedModel, model_settings, read_model, save_compact

OPTIMISTIC = ('training images: the flows were fitted to them, so this threshold is optimistic '
              '(more false alarms on new good images than calibrated); pass --calibration-path')


def calibration_images(folder: str) -> List[str]:
    """Every image under ``folder``, checked readable; one-line errors for an empty or missing folder."""
    if not os.path.isdir(folder):
        raise CflowError(f'--calibration-path {folder} is not a folder: pass a folder of defect-free images')
    paths = list_images_recursive(folder)
    if len(paths) < 2:
        raise CflowError(f'--calibration-path {folder} holds {len(paths)} images (png/jpg/jpeg/bmp/tif): '
                         f'calibration needs at least 2 defect-free images, 20 or more for a useful threshold')
    check_readable(paths)
    return paths


def calibrate_model(c, encoder, decoders, paths: List[str], source: str) -> dict:
    """Score ``paths`` (defect-free) and return the calibration record for this model."""
    from train import score_test_set  # the same scoring as every test pass
    dataset = LabelledImages(paths, [0] * len(paths), [None] * len(paths), c.input_size, train=False,
                             mean=c.norm_mean, std=c.norm_std)
    scores = score_test_set(c, make_loader(c, dataset, train=False), encoder, decoders)
    calibration = calibrate_from_log_probs(scores.log_probs, c.crp_size, source, model_settings(c))
    print(f'Calibrated on {count(len(paths), "image")} ({source}): image threshold {calibration["image_threshold"]:.4g}, '
          f'pixel threshold {calibration["pixel_threshold"]:.4g}')
    return calibration


def calibrate_on_folder(c, encoder, decoders) -> dict:
    """Calibrate on the defect-free images under ``--calibration-path``."""
    return calibrate_model(c, encoder, decoders, calibration_images(c.calibration_path),
                           f'images under {c.calibration_path}')


def calibrate_after_training(c, encoder, decoders, train_set, paths: Optional[List[str]] = None) -> dict:
    """After norm-train: on ``paths`` (--calibration-path, listed and checked before training, or a
    good-only class's ``train_set.calibration_images``), else on the training images."""
    if c.calibration_path:
        return calibrate_model(c, encoder, decoders, paths or calibration_images(c.calibration_path),
                               f'images under {c.calibration_path}')
    if paths:
        return calibrate_model(c, encoder, decoders, paths, train_set.calibration_source)
    print(f'Notice: calibrating on the {OPTIMISTIC}')
    return calibrate_model(c, encoder, decoders, list(train_set.x), OPTIMISTIC.split(':')[0])


def calibrate_command(c, checkpoint: str) -> str:
    """The command that calibrates ``checkpoint`` (made with these settings) later."""
    folder = c.calibration_path or 'DIR_OF_GOOD_IMAGES'
    dataset = ' --dataset stc' if c.dataset == 'stc' else ''  # its normalisation
    return (f'python main.py --action-type calibrate --checkpoint {checkpoint} --calibration-path {folder}'
            f'{dataset} -enc {c.enc_arch} -dec {c.dec_arch} -pl {c.pool_layers} -cb {c.coupling_blocks} '
            f'-inp {c.input_size}')


def load_for_inference(c) -> LoadedModel:
    """The model of ``--checkpoint`` with its settings applied to ``c`` (input size, normalisation)."""
    from config import apply_file_settings
    model = read_model(c.checkpoint, model_settings(c))
    apply_file_settings(c, model.settings, c.checkpoint)
    c.crp_size = (c.input_size, c.input_size)
    model.encoder.to(c.device)
    model.decoders = [d.to(c.device) for d in model.decoders]
    return model


def default_output(checkpoint: str, suffix: str, ext: str) -> str:
    stem, _ = os.path.splitext(checkpoint)
    return f'{stem}{suffix}{ext}'


def run_calibrate(c) -> dict:
    if not c.calibration_path:
        raise CflowError('--action-type calibrate needs --calibration-path DIR (defect-free images not used '
                         'for training)')
    model = load_for_inference(c)
    model.calibration = calibrate_on_folder(c, model.encoder, model.decoders)
    ext = '.safetensors' if c.checkpoint.endswith('.safetensors') else '.pt'
    output = c.output or default_output(c.checkpoint, '_calibrated', ext)
    write_model(output, model)
    print(f'Calibrated model written to {output}')
    return {'output': output, 'calibration': model.calibration}


def write_model(path: str, model: LoadedModel) -> None:
    """An authors'-format .pt (calibration as an extra key) or a compact .safetensors, by extension."""
    if path.endswith('.safetensors'):
        save_compact(path, model)
    elif path.endswith(('.pt', '.pth')):
        extra = {CALIBRATION_KEY: model.calibration} if model.calibration is not None else None
        save_checkpoint(path, model.encoder, model.decoders, extra=extra)
    else:
        raise CflowError(f'--output {path}: name it .pt (authors\' format) or .safetensors (compact)')
