"""The pictures predict and norm-test --viz draw, and predict's index.html."""
import numpy as np
from PIL import Image

from utils.viz import BAR_WIDTH, CHAR_WIDTH, colour_bar, index_html, overlay_picture, wrap


def test_overlay_has_a_wrapped_banner_a_marked_colour_bar_and_a_filled_mask():
    image = Image.new('RGB', (100, 80), (0, 0, 0))
    anomaly_map = np.zeros((16, 16), np.float32)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    banner = 'DEFECTIVE: score 1.92 > t_I 0.922; mask: A > t_M 1.62 (stored thresholds, epoch 3)'
    picture = np.asarray(overlay_picture(image, anomaly_map, mask, vmax=2.0, marks=[(1.0, 't_I')], banner=banner,
                                         alarm=True))
    lines = wrap(banner, 100 + BAR_WIDTH - 4)
    assert len(lines) >= 2 and all(len(line) * CHAR_WIDTH <= 100 + BAR_WIDTH for line in lines)
    top = picture.shape[0] - 80
    assert picture.shape[1] == 100 + BAR_WIDTH and top == 12 * len(lines) + 4
    assert tuple(picture[1, -1]) == (170, 20, 20)  # a red banner for a defective decision
    inside, outside = picture[top + 32, 31], picture[top + 70, 90]  # mask cell (row 6, col 5) vs far away
    assert inside.astype(int).mean() > outside.astype(int).mean() + 60  # the translucent white fill
    assert tuple(picture[top + 20, 25]) == (255, 255, 255)  # its outline (top-left corner of the mask)


def test_colour_bar_puts_each_threshold_at_its_value():
    bar = np.asarray(colour_bar(101, vmax=2.0, marks=[(1.0, 't_I'), (1.5, 't_M')]))
    black = (bar[:, 5] == 0).all(axis=1)
    rows = np.flatnonzero(black)
    assert any(abs(r - 50) <= 1 for r in rows) and any(abs(r - 25) <= 1 for r in rows)


def test_index_lists_every_input_defective_first_with_relative_links():
    from html.parser import HTMLParser
    rows = [{'source': 'in/a.png', 'frame': '', 'score': '0.5', 'decision': 'good', 'overlay': 'overlays/a.png.png'},
            {'source': 'in/b.png', 'frame': '', 'score': '2.0', 'decision': 'defective',
             'overlay': 'overlays/b.png.png'},
            {'source': 'in/c d.png', 'frame': '', 'score': '3.0', 'decision': 'defective',
             'overlay': 'overlays/c d.png.png'},
            {'source': 'in/e.png', 'frame': '', 'score': '0.9', 'decision': 'good', 'overlay': 'overlays/e.png.png'}]
    page = index_html(rows, 'title <x>', 1.0)

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.tags = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == 'img':
                self.images.append(dict(attrs)['src'])
    parser = Parser()
    parser.feed(page)
    assert parser.images == ['overlays/c%20d.png.png', 'overlays/b.png.png', 'overlays/e.png.png',
                             'overlays/a.png.png']
    assert 'script' not in parser.tags and 'http' not in page and 'title &lt;x&gt;' in page


def test_the_mask_threshold_follows_the_image_peak_and_never_drops_below_t_p():
    from utils.calibration import MASK_PEAK_SHARE, mask_threshold
    calibration = {'image_threshold': 1.0, 'pixel_threshold': 0.5}
    assert MASK_PEAK_SHARE == 0.7
    assert mask_threshold(2.0, calibration) == 1.0 + 0.7 * 1.0  # a strong image: a tight mask near its peak
    assert mask_threshold(1.1, calibration) == 1.0 + 0.7 * 0.1 < 1.1  # a faint one: still below its peak
    assert mask_threshold(1.1, {'image_threshold': 1.0, 'pixel_threshold': 1.09}) == 1.09
    assert mask_threshold(2.0, {**calibration, 'mask_peak_share': 0.5}) == 1.5  # a file's own share wins


def test_the_banner_never_breaks_a_label_from_its_value(monkeypatch):
    import utils.viz as viz
    seen = []
    monkeypatch.setattr(viz, 'wrap', lambda text, width: seen.append(wrap(text, width)) or seen[-1])
    for width in (96, 128, 192, 256):
        viz.decision_picture(Image.new('RGB', (width, 64)), np.zeros((8, 8), np.float32), np.zeros((8, 8), bool),
                             vmax=2.0, score=1.88, t_image=0.919, t_mask=1.59, defective=True,
                             which='stored thresholds (calibration), epoch 3')
    for lines in seen:
        text = '\n'.join(lines)
        assert 'score 1.88 > t_I 0.919' in text and 'mask: A > t_M 1.59' in text, lines
        assert '\u00a0' not in text  # drawn with ordinary spaces
    assert len(seen) == 4 and any(len(lines) >= 3 for lines in seen)  # the narrow pictures did wrap
