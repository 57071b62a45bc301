"""The models and data the sections measure: seeded random-init models (speed does not depend on the
weights, and nothing is downloaded), calibrated and trained the way the commands do it."""
import contextlib
import io
import os
from typing import List, Tuple

import numpy as np
import torch

from actions import calibration_on_images
from custom_datasets.common import list_images
from custom_datasets.folder import list_split
from custom_datasets.loaders import LoaderOptions
from custom_datasets.synthetic import make_demo_class
from custom_models.anomaly_model import AnomalyModel
from custom_models.encoders import build_encoder
from custom_models.flows import build_decoders
from custom_models.preprocessing import published_input
from custom_models.scoring import ScoreOptions, deployable
from utils.images import IMAGENET_MEAN, IMAGENET_STD, read_mask, resize_mask


def build_model(enc_arch: str, pool_layers: int, coupling_blocks: int, device: str):
    """A seeded random-init encoder and flows (weights moved off their init) on ``device``."""
    torch.manual_seed(0)
    np.random.seed(0)
    encoder = build_encoder(enc_arch, pool_layers, 'none').to(device)
    decoders = build_decoders('freia-cflow', encoder.pool_dims, coupling_blocks)
    with torch.no_grad():  # move weights off their init, so no path benefits from special values
        for d in decoders:
            for p in d.parameters():
                p.add_(0.02 * torch.randn_like(p))
    decoders = [d.to(device).eval() for d in decoders]
    if device.startswith('cuda'):
        encoder = encoder.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return encoder, decoders


def model_settings(arch: str, decoders, input_size: int) -> dict:
    """The settings a model file records, for ``arch`` fed as the published code feeds it (MVTec's ImageNet
    normalisation for torchvision encoders, timm's size and constants for timm's: custom_models.preprocessing)."""
    fed = published_input(arch, input_size, IMAGENET_MEAN, IMAGENET_STD)
    return {'enc_arch': arch, 'dec_arch': 'freia-cflow', 'pool_layers': len(decoders),
            'coupling_blocks': len(decoders[0].module_list), 'input_size': fed.size, 'norm_mean': list(fed.mean),
            'norm_std': list(fed.std)}


def calibrated_model(arch: str, encoder, decoders, input_size: int, folder: str,
                     images: int = 8) -> Tuple[AnomalyModel, dict, dict]:
    """(deployable model, settings, calibration): calibrated on ``images`` good images of ``folder`` by the
    calibration pass the commands run (``actions.calibration_on_images``)."""
    settings = model_settings(arch, decoders, input_size)
    calibration = calibration_on_images(encoder, decoders, settings, list_images(folder)[:images], 'bench',
                                        ScoreOptions(device='cpu'), LoaderOptions(batch_size=images))
    return deployable(encoder, decoders, settings, calibration).eval(), settings, calibration


def trained_demo_style_class(work: str, seed: int, encoder_seed: int = 0) -> Tuple[str, str, str]:
    """(class folder, calibration folder, checkpoint) of a demo-style class of data seed ``seed``: resnet18
    (random init, seed ``encoder_seed``) at 128 px, the demo's 4 x 4 epochs, 64 training images, calibrated
    on 32 other good images, 64 good and 32 defective test images; trained by the norm-train command."""
    from main import main as run_main
    class_dir = make_demo_class(work, 'textile', seed=seed, n_train=64, n_test_good=64, n_test_defect=32)
    calibration_dir = os.path.join(make_demo_class(os.path.join(work, 'calibration'), 'textile', seed=seed + 1000,
                                                   n_train=32, n_test_good=1, n_test_defect=1), 'train', 'good')
    argv = ['--dataset', 'folder', '--data-path', work, '--class-name', 'textile', '-enc', 'resnet18',
            '-inp', '128', '--meta-epochs', '4', '--sub-epochs', '4', '--encoder-weights', 'none', '--no-cuda',
            '--workers', '2', '--seed', str(encoder_seed), '--output-dir', os.path.join(work, 'out'),
            '--calibration-path', calibration_dir]
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(argv) == 0, f'training for seed {seed} failed'
    (checkpoint,) = os.listdir(os.path.join(work, 'out', 'weights'))
    return class_dir, calibration_dir, os.path.join(work, 'out', 'weights', checkpoint)


def labelled_test_set(class_dir: str) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """(test image paths, their true masks at each image's own size, image labels) of a class folder, as the
    folder dataset lists them (``custom_datasets.folder.list_split``)."""
    paths, labels, mask_paths = list_split(class_dir, train=False)
    truth = [np.asarray(read_mask(m)) > 0 if m else None for m in mask_paths]
    shape = next(t.shape for t in truth if t is not None)
    truth = np.stack([t if t is not None else np.zeros(shape, bool) for t in truth])
    return paths, truth, np.asarray(labels, bool)


def at_side(truth: np.ndarray, side: int) -> np.ndarray:
    """Masks resized to side x side with nearest neighbours (the model's resolution)."""
    return np.stack([resize_mask(t, (side, side)) for t in truth])
