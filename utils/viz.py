"""``--viz`` output: per test image a PNG (image, ground truth, heat-map overlay,
segmentation at the F1-optimal pixel threshold) and a histogram of image scores."""
import os

import matplotlib
matplotlib.use('Agg')  # files only: no display is needed or wanted
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.metrics import precision_recall_curve

from custom_datasets.common import read_rgb

_JET = (plt.get_cmap('jet')(np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # colour lookup table


def heat_overlay(image: Image.Image, anomaly_map: np.ndarray, vmax: float, mask: np.ndarray = None,
                 alpha: float = 0.45) -> Image.Image:
    """``image`` blended with the map in jet colours on a fixed scale 0 .. ``vmax`` (the same for every
    image, so colours compare across images), the defect mask's outline in white."""
    heat = np.clip(np.asarray(anomaly_map, dtype=np.float32) / max(vmax, 1e-12), 0, 1)
    heat = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    coloured = _JET[np.asarray(heat)]
    blended = (1 - alpha) * np.asarray(image.convert('RGB'), dtype=np.float32) + alpha * coloured
    out = blended.astype(np.uint8)
    if mask is not None and mask.any():
        edge = Image.fromarray((mask * 255).astype(np.uint8)).resize(image.size, Image.NEAREST)
        edge = np.asarray(edge) > 0
        border = edge & ~(np.roll(edge, 1, 0) & np.roll(edge, -1, 0) & np.roll(edge, 1, 1) & np.roll(edge, -1, 1))
        out[border] = 255
    return Image.fromarray(out)


def annotate(image: Image.Image, text: str, alarm: bool) -> Image.Image:
    """A caption bar above the image: red for a defective decision, dark grey otherwise."""
    from PIL import ImageDraw
    bar = 14
    canvas = Image.new('RGB', (image.width, image.height + bar), (170, 20, 20) if alarm else (40, 40, 40))
    canvas.paste(image, (0, bar))
    ImageDraw.Draw(canvas).text((3, 1), text, fill=(255, 255, 255))
    return canvas


def f1_optimal_threshold(masks: np.ndarray, maps: np.ndarray) -> float:
    """The pixel threshold maximising F1 over the whole test set (labels: mask != 0)."""
    precision, recall, thresholds = precision_recall_curve(masks.ravel().astype(bool), maps.ravel())
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros_like(precision), where=(precision + recall) > 0)
    return float(thresholds[np.argmax(f1[:-1])])


def display_image(path: str, size) -> np.ndarray:
    """The test image as shown to the model (resized on both sides), without normalisation."""
    return np.asarray(read_rgb(path).resize((size[1], size[0]), Image.LANCZOS))


def save_visualizations(c, dataset, maps: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                        masks: np.ndarray, epoch: int) -> str:
    """Write the figures of the test pass of ``epoch`` into ``c.viz_dir`` and return it.

    Maps are those of the published test-set normalisation; an image's score is the max of
    its map, so scores and the pixel threshold are on one scale (the colour bar's).
    """
    from matplotlib.ticker import MaxNLocator
    os.makedirs(c.viz_dir, exist_ok=True)
    has_defects = masks.any()
    threshold = f1_optimal_threshold(masks, maps) if has_defects else float(np.quantile(maps, 0.99))
    threshold_name = 'F1-optimal on this test set' if has_defects else '99% quantile of the maps'
    vmin, vmax = float(maps.min()), float(maps.max())
    for i, path in enumerate(dataset.x):
        image = display_image(path, maps.shape[1:])
        fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
        panels = [(image, 'image', {}), (masks[i], 'ground truth', {'cmap': 'gray', 'vmin': 0, 'vmax': 1})]
        for ax, (data, title, kw) in zip(axes, panels):
            ax.imshow(data, **kw)
            ax.set_title(title)
        axes[2].imshow(image)
        heat = axes[2].imshow(maps[i], cmap='jet', alpha=0.5, vmin=vmin, vmax=vmax)
        axes[2].set_title(f'anomaly map, score {scores[i]:.3g}')
        bar = fig.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.04)
        bar.ax.axhline(threshold, color='black', linewidth=2)
        segmented = image.copy()
        segmented[maps[i] > threshold] = (0.5 * segmented[maps[i] > threshold] + [127, 0, 0]).astype(np.uint8)
        axes[3].imshow(segmented)
        axes[3].contour(maps[i] > threshold, levels=[0.5], colors='red', linewidths=0.8)
        axes[3].set_title(f'pixels above {threshold:.3g}')
        for ax in axes:
            ax.axis('off')
        fig.suptitle(f'{c.model}, epoch {epoch}: score = max of the map; the black line on the colour bar is the '
                     f'pixel threshold ({threshold_name}), on the same scale', fontsize=8)
        fig.tight_layout()
        defect = os.path.basename(os.path.dirname(path))
        name = os.path.splitext(os.path.basename(path))[0]
        save_figure(fig, os.path.join(c.viz_dir, f'{i:04d}_{defect}_{name}.png'))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    bins = np.linspace(min(scores.min(), threshold), max(scores.max(), threshold), 30)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f'good ({int((labels == 0).sum())})')
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f'defective ({int((labels == 1).sum())})')
    ax.axvline(threshold, color='black', linestyle='--', label=f'pixel threshold {threshold:.3g} ({threshold_name})')
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('image anomaly score (max of the map)')
    ax.set_ylabel('images')
    ax.set_title(f'{c.class_name}: image scores at epoch {epoch}')
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, os.path.join(c.viz_dir, 'score_histogram.png'))
    return c.viz_dir


def save_figure(fig, path: str) -> None:
    """A figure written atomically, then closed."""
    from utils.atomic import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format='png'))
    plt.close(fig)
