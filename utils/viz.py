"""``--viz`` output: per test image a PNG (image, ground truth, heat-map overlay,
segmentation at the F1-optimal pixel threshold) and a histogram of image scores."""
import os

import matplotlib
matplotlib.use('Agg')  # files only: no display is needed or wanted
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from utils.oracle import image_f1_optimal_threshold, pixel_f1_optimal

_JET = (plt.get_cmap('jet')(np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # colour lookup table


DISPLAY_SIDE = 768  # pictures are drawn at most this large (masks keep the image's own size)
BAR_WIDTH = 58      # the colour bar strip beside the picture, with its labels
LINE_HEIGHT = 12    # one banner line in Pillow's default font
CHAR_WIDTH = 6


def display_copy(image: Image.Image, minimum: int = 0) -> Image.Image:
    """The image at a size to look at: at most ``DISPLAY_SIDE`` on its long side, and (``minimum``)
    small images enlarged so that a banner and a colour bar fit beside them."""
    long_side = max(image.size)
    scale = min(DISPLAY_SIDE / long_side, max(1.0, minimum / long_side))
    if scale == 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.BILINEAR if scale < 1 else Image.NEAREST)


def heat_overlay(image: Image.Image, anomaly_map: np.ndarray, vmax: float, mask: np.ndarray = None,
                 alpha: float = 0.45) -> Image.Image:
    """``image`` blended with the map in jet colours on a fixed scale 0 .. ``vmax`` (the same for every
    image, so colours compare across images); the defect mask as a translucent white fill with a
    white outline, so the marked region reads at a glance."""
    heat = np.clip(np.asarray(anomaly_map, dtype=np.float32) / max(vmax, 1e-12), 0, 1)
    heat = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    coloured = _JET[np.asarray(heat)]
    blended = (1 - alpha) * np.asarray(image.convert('RGB'), dtype=np.float32) + alpha * coloured
    if mask is not None and mask.any():
        inside = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize(image.size, Image.NEAREST)) > 0
        blended[inside] = 0.6 * blended[inside] + 0.4 * 255
        border = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1)
                            & np.roll(inside, -1, 1))
        blended[border] = 255
    return Image.fromarray(blended.astype(np.uint8))


def colour_bar(height: int, vmax: float, marks) -> Image.Image:
    """A vertical jet scale 0 (bottom) .. vmax (top) with its end values, and a labelled line at each
    (value, label) of ``marks`` (thresholds), on the picture's own scale."""
    from PIL import ImageDraw
    strip = Image.new('RGB', (BAR_WIDTH, height), (255, 255, 255))
    ramp = _JET[np.linspace(255, 0, height).astype(int)][:, None, :].repeat(12, axis=1)
    strip.paste(Image.fromarray(ramp), (2, 0))
    draw = ImageDraw.Draw(strip)
    draw.text((16, 0), f'{vmax:.3g}', fill=(0, 0, 0))
    draw.text((16, height - LINE_HEIGHT), '0', fill=(0, 0, 0))
    placed = [(int(round((1 - min(max(value / max(vmax, 1e-12), 0), 1)) * (height - 1))), label)
              for value, label in marks]
    label_y = LINE_HEIGHT  # labels top-down, never on each other nor on the end values
    for y, label in sorted(placed):
        draw.line([(0, y), (15, y)], fill=(0, 0, 0), width=2)
        label_y = min(max(y - LINE_HEIGHT // 2, label_y), height - 2 * LINE_HEIGHT)
        draw.text((16, label_y), label, fill=(0, 0, 0))
        label_y += LINE_HEIGHT
    return strip


KEEP = '\u00a0'  # a space wrap() never breaks at: joins a label to its value ('t_M 1.59')


def keep_together(*words) -> str:
    return KEEP.join(words)


def wrap(text: str, width: int) -> list:
    """Lines of at most ``width`` pixels in Pillow's default font, broken at plain spaces only (never
    inside a ``keep_together`` group, drawn with ordinary spaces)."""
    per_line = max(8, width // CHAR_WIDTH)
    lines, line = [], ''
    for word in (w.replace(KEEP, ' ') for w in text.split(' ') if w):
        if line and len(line) + 1 + len(word) > per_line:
            lines.append(line)
            line = word
        else:
            line = f'{line} {word}' if line else word
    return lines + [line] if line else lines


def overlay_picture(display: Image.Image, anomaly_map: np.ndarray, mask: np.ndarray, vmax: float, marks,
                    banner: str, alarm: bool) -> Image.Image:
    """The picture predict and ``norm-test --viz`` both draw: a banner (wrapped to the picture's width,
    red for a defective decision), the heat overlay with the mask, and a colour bar with the
    thresholds marked."""
    from PIL import ImageDraw
    picture = heat_overlay(display, anomaly_map, vmax, mask)
    width = picture.width + BAR_WIDTH
    lines = wrap(banner, width - 4)
    top = LINE_HEIGHT * len(lines) + 4
    canvas = Image.new('RGB', (width, picture.height + top), (170, 20, 20) if alarm else (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((3, 2 + k * LINE_HEIGHT), line, fill=(255, 255, 255))
    canvas.paste(picture, (0, top))
    canvas.paste(colour_bar(picture.height, vmax, marks), (picture.width, top))
    return canvas


def decision_picture(display: Image.Image, anomaly_map: np.ndarray, mask: np.ndarray, vmax: float, score: float,
                     t_image: float, t_mask: float, defective: bool, which: str) -> Image.Image:
    """One image's decision as predict and ``norm-test --viz`` draw it: the banner states the score
    against t_I (and the mask's t_M) and which thresholds these are; the colour bar marks them."""
    marks = [(t_image, 't_I'), (score, 'score')] + ([(t_mask, 't_M')] if defective else [])
    decision = keep_together('score', f'{score:.3g}', '>' if defective else '<=', 't_I', f'{t_image:.3g}')
    mask_rule = '; ' + keep_together('mask:', 'A', '>', 't_M', f'{t_mask:.3g}') if defective else ''
    banner = f'{"DEFECTIVE" if defective else "good"}: {decision}{mask_rule} ({which})'
    return overlay_picture(display, anomaly_map, mask, vmax, marks, banner, defective)


def prediction_picture(display: Image.Image, result, thresholds, precision: str = 'fp32') -> Image.Image:
    """predict's overlay of one ``Prediction`` (custom_models/detector.py) at ``thresholds`` (its
    ``Thresholds``), as the command and the service draw it; a quantized model is named on it."""
    which = f'thresholds: {thresholds.source}' + ('' if precision == 'fp32' else f'; {precision.upper()} model')
    # the colour scale: twice t_I for calibrated maps; a map relative to its own peak (DifferNet) runs to 1
    vmax = 1.0 if result.thresholds.get('map_scale') == 'relative' else 2 * thresholds.image
    return decision_picture(display, result.model_map, result.mask, vmax, result.score,
                            thresholds.image, result.thresholds['mask_threshold'], result.defective, which)


def save_visualizations(class_name: str, folder: str, paths, maps: np.ndarray, scores: np.ndarray,
                        labels: np.ndarray, masks: np.ndarray, epoch: int, read_image, calibration: dict = None) -> str:
    """Write the figures of the test pass of ``epoch`` (the images at ``paths``) into ``folder``; return it.

    ``read_image``: path -> RGB PIL image (the dataset's reader; utils/ imports no dataset code).

    Per image, predict's picture (``overlay_picture``) beside the ground truth. With a
    ``calibration``, ``maps`` are the calibrated ones and the picture shows the stored thresholds
    (t_I; a defective decision's mask A > t_M), as predict does; without one, the published
    test-set maps with the F1-optimal pixel and image thresholds chosen on these test labels
    (an oracle), and the picture says so. The histogram marks each image threshold by name.
    """
    from matplotlib.ticker import MaxNLocator
    from utils.calibration import decide_then_mask, mask_threshold
    os.makedirs(folder, exist_ok=True)
    labelled = bool(labels.any()) and not bool(labels.all())
    oracle_image = image_f1_optimal_threshold(labels, scores) if labelled else None
    if calibration is not None:
        t_image = calibration['image_threshold']
        which = 'stored thresholds (calibration)'
    else:
        t_image = oracle_image if oracle_image is not None else float(np.quantile(scores, 0.99))
        which = 'F1-optimal thresholds on these test labels (oracle)'
        t_pixel = pixel_f1_optimal(masks, maps)[0] if masks.any() else float(np.quantile(maps, 0.99))
    vmax = 2 * t_image if t_image > 0 else float(maps.max())
    for i, path in enumerate(paths):
        image = display_copy(read_image(path), minimum=256)
        t_mask = mask_threshold(scores[i], calibration) if calibration is not None else t_pixel
        defective, predicted = decide_then_mask(maps[i], scores[i], t_image, t_mask)
        picture = decision_picture(image, maps[i], predicted, vmax, scores[i], t_image, t_mask, defective,
                                   f'{which}, epoch {epoch}')
        truth = Image.fromarray((masks[i] * 255).astype(np.uint8)).resize(image.size, Image.NEAREST).convert('RGB')
        sheet = Image.new('RGB', (picture.width + truth.width + 6, picture.height), (255, 255, 255))
        sheet.paste(picture, (0, 0))
        sheet.paste(truth, (picture.width + 6, picture.height - truth.height))
        defect = os.path.basename(os.path.dirname(path))
        name = os.path.splitext(os.path.basename(path))[0]
        from utils.atomic import atomic_write
        atomic_write(os.path.join(folder, f'{i:04d}_{defect}_{name}.png'),
                     lambda tmp: sheet.save(tmp, format='PNG', compress_level=1))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    marks = [(t, name) for t, name in ((calibration['image_threshold'] if calibration else None,
                                        'stored image threshold t_I'),
                                       (oracle_image, 'F1-optimal image threshold (oracle, test labels)'))
             if t is not None]
    low = min([scores.min()] + [t for t, _ in marks])
    high = max([scores.max()] + [t for t, _ in marks])
    bins = np.linspace(low, high, 30)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f'good ({int((labels == 0).sum())})')
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f'defective ({int((labels == 1).sum())})')
    for (t, name), style in zip(marks, ('-', '--')):
        ax.axvline(t, color='black', linestyle=style, label=f'{name}: {t:.3g}')
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('image anomaly score (max of the ' + ('calibrated' if calibration else 'test-set normalised')
                  + ' map)')
    ax.set_ylabel('images')
    ax.set_title(f'{class_name}: image scores at epoch {epoch}')
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, os.path.join(folder, 'score_histogram.png'))
    return folder


def save_figure(fig, path: str) -> None:
    """A figure written atomically, then closed."""
    from utils.atomic import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format='png'))
    plt.close(fig)


def index_html(rows, title: str, image_threshold: float) -> str:
    """A static page of predict's results: every input with its overlay as a thumbnail (a relative
    link, opening the full overlay on click), its score and decision; defective first, then by
    score, highest first. No script, nothing from elsewhere: it opens from the folder as it is."""
    from html import escape
    from urllib.parse import quote
    ordered = sorted(rows, key=lambda r: (r['decision'] != 'defective', -float(r['score'])))
    defective = sum(r['decision'] == 'defective' for r in ordered)
    cards = []
    for r in ordered:
        link = quote(r['overlay'].replace(os.sep, '/'))
        name = r['source'] + (f' frame {r["frame"]}' if r['frame'] not in ('', None) else '')
        cards.append(f'<figure class="{escape(r["decision"])}"><a href="{link}"><img src="{link}" loading="lazy" '
                     f'alt="{escape(name)}"></a><figcaption><b>{escape(r["decision"])}</b> '
                     f'score {float(r["score"]):.4g}<br><span>{escape(name)}</span></figcaption></figure>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{escape(title)}</title><style>'
            'body{font-family:sans-serif;margin:1em}figure{display:inline-block;width:230px;margin:6px;'
            'vertical-align:top}img{width:226px;border:2px solid #444}.defective img{border-color:#b01414}'
            '.defective b{color:#b01414}figcaption{font-size:12px;word-break:break-all}</style></head><body>'
            f'<h1>{escape(title)}</h1><p>{len(ordered)} inputs, {defective} defective (score above the stored '
            f'image threshold {image_threshold:.4g}), defective first, then by score. Click a picture for the '
            f'full overlay.</p>\n' + '\n'.join(cards) + '\n</body></html>\n')
