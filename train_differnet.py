"""``--model differnet``: norm-train and norm-test of DifferNet as its authors' code runs them.

Training: meta epochs of sub-epochs over the defect-free images, each image as ``--transforms`` random views
(4), ``-bs`` images (24) a step, Adam on the flow (custom_models/differnet.py); after each meta epoch the test
images are scored, each over ``--test-transforms`` views (64: seeded random rotations by default, as the
published test draws random ones; ``--fixed-rotations``: i * 360 / 64) and the image AUROC reported. The
final weights are written as the authors' ``save_weights`` writes them (a ``model.state_dict()``), so either
code loads the other's files; ``--viz`` writes the gradient maps of the defective test images.
"""
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from actions import data_options, record_stop
from custom_datasets import build_datasets
from custom_datasets.loaders import SeededShuffle
from custom_datasets.rotated_views import RotatedViews, views_batch
from utils.views import fixed_angles, rotated_views
from custom_models.differnet import (DifferNet, build_alexnet, differnet_optimizer, gradient_maps, image_scores,
                                     load_differnet, train_step)
from utils.atomic import atomic_write
from utils.errors import CflowError
from utils.images import read_rgb
from utils.metrics import detection_auroc
from utils.progress import count, progress
from utils.results import ScoreObserver, reserve_run, write_results


def build(c) -> DifferNet:
    torch.manual_seed(c.seed)
    np.random.seed(c.seed)
    if c.checkpoint:
        print(f'Loading weights from {c.checkpoint}')
        return load_differnet(c.checkpoint, c.seed).to(c.device)
    return DifferNet(build_alexnet(c.encoder_source, c.seed), c.coupling_blocks, c.flow_width).to(c.device)


def train_loader(c, train_set) -> DataLoader:
    views = RotatedViews(list(train_set.x), list(train_set.y), c.input_size, c.transforms)
    sampler = SeededShuffle(len(views), torch.Generator().manual_seed(c.seed))
    return DataLoader(views, batch_size=c.batch_size, sampler=sampler, num_workers=c.workers,
                      collate_fn=views_batch, persistent_workers=c.workers > 0)


def test_images_per_batch(c) -> int:
    """The authors' ``batch_size * n_transforms // n_transforms_test`` images (1 at the defaults), at least 1."""
    return max(1, c.batch_size * c.transforms // c.test_transforms)


def score_test_set(c, model: DifferNet, test_set) -> np.ndarray:
    """Per test image, the mean of z^2 over its views and the 768 dims."""
    views = RotatedViews(list(test_set.x), list(test_set.y), c.input_size, c.test_transforms,
                         fixed=c.fixed_rotations, seed=c.seed)
    loader = DataLoader(views, batch_size=test_images_per_batch(c), num_workers=c.workers, collate_fn=views_batch)
    scores = []
    model.eval()
    with torch.inference_mode():
        for batch, _ in progress(loader, total=len(loader), desc='test'):
            z, _ = model(batch.to(c.device))
            scores.append(image_scores(z, c.test_transforms).cpu().numpy())
    return np.concatenate(scores)


def train_meta_epoch(c, model: DifferNet, optimizer, loader) -> float:
    model.train()
    losses = []
    for sub_epoch in range(c.sub_epochs):
        for views, _ in loader:
            losses.append(train_step(model, optimizer, views.to(c.device)))
        print(f'Epoch {sub_epoch}: mean train loss {np.mean(losses):.6f}')
    return float(np.mean(losses))


def write_gradient_maps(c, model: DifferNet, test_set, folder: str) -> str:
    """--viz: each defective test image's gradient map (fixed views), min-max normalised, as a PNG."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    angles = fixed_angles(c.test_transforms)
    for path, label in zip(test_set.x, test_set.y):
        if not label:
            continue
        views = rotated_views(read_rgb(path), c.input_size, angles).to(c.device)
        grad = gradient_maps(model, views, angles).numpy()
        picture = (255 * (grad - grad.min()) / max(float(np.ptp(grad)), 1e-30)).astype(np.uint8)
        name = f'{os.path.basename(os.path.dirname(path))}_{os.path.splitext(os.path.basename(path))[0]}.png'
        atomic_write(os.path.join(folder, name), lambda tmp: Image.fromarray(picture).save(tmp, 'PNG'))
    return folder


def run_differnet(c) -> dict:
    train_set, test_set = build_datasets(data_options(c))
    if test_set is None:
        raise CflowError(f'{c.data_path}/{c.class_name} has no labelled defective test images, which DifferNet\'s '
                         f'metric (image AUROC) needs')
    model = build(c)
    training = c.action_type == 'norm-train'
    optimizer, loader = (differnet_optimizer(model.nf, c.lr), train_loader(c, train_set)) if training else (None, None)
    print(f'Model {c.model} on {c.device}: DifferNet, {len(model.nf.module_list) // 2} coupling blocks, '
          f'{count(len(train_set) if training else 0, "train image")} x {c.transforms} views / '
          f'{count(len(test_set), "test image")} x {c.test_transforms} views')
    run_files = reserve_run(c.output_dir, c.model, c.run_date)
    observers, history, checkpoints = {'DET_AUROC': ScoreObserver('DET_AUROC')}, [], []
    try:
        for epoch in range(c.meta_epochs):
            loss = train_meta_epoch(c, model, optimizer, loader) if training else None
            scores = score_test_set(c, model, test_set)
            auroc = 100.0 * detection_auroc(np.asarray(test_set.y), scores)
            observers['DET_AUROC'].update(auroc, epoch)
            history.append({'epoch': epoch, 'train_loss': loss, 'DET_AUROC': auroc})
            write_results(c.items(), run_files, observers, history, checkpoints, status='running')
        if training:
            path = run_files.checkpoint('_final')
            atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
            checkpoints.append(path)
            print(f'Saving final weights to {path}')
    except BaseException as exc:  # Ctrl-C or an error: keep what was done, marked as not complete
        record_stop(c, exc, run_files, observers, history, checkpoints)
        raise
    extra = {'test_scores': [{'path': p, 'label': int(y), 'score': float(s)}
                             for p, y, s in zip(test_set.x, test_set.y, scores)],
             'rotations': 'fixed i * 360 / n' if c.fixed_rotations else f'seeded random (seed {c.seed})'}
    files = write_results(c.items(), run_files, observers, history, checkpoints, extra=extra)
    if c.viz:
        files['viz'] = write_gradient_maps(c, model, test_set, run_files.viz_dir)
    print(f'Results in {", ".join(files[k] for k in ("text", "json") if k in files)}')
    return {'observers': observers, 'history': history, 'scores': scores, 'files': files, 'checkpoints': checkpoints}
