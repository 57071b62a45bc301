"""Training: seconds per image batch (encoder + every fiber step of every decoder) of each --adam mode against
the published loop (torch's default Adam kernel over all decoders at every step), interleaved; then per mode
the largest relative difference of the final weights from the published loop's after two sub-epochs from the
same start and seed. Also what the time per image means for table B."""
import contextlib
import copy
import io

import numpy as np
import torch

from benchmarks.timing import interleaved, speed_rows
from custom_models.encoders import build_encoder
from custom_models.flows import build_decoders
from custom_models.training import TrainOptions, train_meta_epoch

MODES = {'published': 'published loop (default Adam kernel)', 'fused': '--adam fused (default)',
         'deferred': '--adam deferred'}
# MVTec AD training images per class and the input size of its table-B command (tables.md, C).
MVTEC_TRAIN = {'bottle': (209, 512), 'cable': (224, 256), 'capsule': (219, 256), 'carpet': (280, 512),
               'grid': (264, 512), 'hazelnut': (391, 256), 'leather': (245, 512), 'metal_nut': (220, 256),
               'pill': (267, 256), 'screw': (320, 512), 'tile': (230, 512), 'toothbrush': (60, 512),
               'transistor': (213, 128), 'wood': (247, 512), 'zipper': (240, 512)}


def table_b_hours(seconds_per_image_at_256: float) -> float:
    """Training time of table B (15 classes x 4 runs x 25 x 8 sub-epochs, -bs 32, drop_last), from the
    time per training image at 256 px; fiber steps grow with the input area, so (inp / 256)^2."""
    images = sum((n // 32) * 32 * (inp / 256) ** 2 for n, inp in MVTEC_TRAIN.values())
    return 4 * 25 * 8 * images * seconds_per_image_at_256 / 3600


class UnitScaleTaps(torch.nn.Module):
    """The encoder's taps, each scaled to unit std: a random-init encoder's raw taps (std up to 35
    for WRN50) make the flows diverge (losses ~1e7), a regime ImageNet features never reach."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, images):
        return [t / t.std() for t in self.encoder(images)]


def trainer(a, mode: str, encoder, start, loader):
    """(one training batch past the warm-up, the decoders it trains) of one --adam mode."""
    decoders = [d.to(a.device) for d in copy.deepcopy(start)]
    optimizer = torch.optim.Adam([p for d in decoders for p in d.parameters()], lr=2e-4)
    options = TrainOptions(sub_epochs=1, device=a.device, adam=mode)

    def one_batch(epoch=5):  # past the warm-up: every decoder already holds a gradient
        with contextlib.redirect_stdout(io.StringIO()):
            train_meta_epoch(options, epoch, loader, encoder, decoders, optimizer)
    return one_batch, decoders


def final_weights(a, mode, encoder, start, loader):
    run_batch, decoders = trainer(a, mode, encoder, start, loader)
    torch.manual_seed(0)
    run_batch(0)  # the warm-up epoch: per-step rates, decoders starting one after the other
    run_batch(1)
    return [p.detach().double() for d in decoders for p in d.parameters() if p.requires_grad]


def run(a):
    rows = []
    for enc in a.train_encoders.split(','):
        torch.manual_seed(0)
        np.random.seed(0)
        raw = build_encoder(enc, a.pool_layers, 'none')
        encoder = UnitScaleTaps(raw).to(a.device).eval()
        start = build_decoders('freia-cflow', raw.pool_dims, a.coupling_blocks)
        loader = [(torch.randn(a.train_batch, 3, a.input_size, a.input_size), None, None)]
        seconds = interleaved({name: trainer(a, mode, encoder, start, loader)[0] for mode, name in MODES.items()},
                              a.train_rounds, a.device)
        finals = {mode: final_weights(a, mode, encoder, start, loader) for mode in MODES}
        notes, data = {}, {}
        for mode, name in MODES.items():
            per_image = float(np.median(seconds[name])) / a.train_batch * (256 / a.input_size) ** 2
            data[name] = {'table_b_hours': table_b_hours(per_image)}
            notes[name] = f'table B ~{data[name]["table_b_hours"]:.0f} h of training steps here'
            if mode != 'published':
                worst = max(((f - e).abs().max() / e.abs().max()).item()
                            for e, f in zip(finals['published'], finals[mode]))
                data[name]['final_weights_diff'] = worst
                notes[name] += f'; final weights {worst:.1e} from the published loop\'s'
        for row in speed_rows(seconds, a.train_batch, MODES['published'], notes, data):
            row.name = f'train {enc} {row.name}'
            rows.append(row)
    return rows
