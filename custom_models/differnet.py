"""DifferNet (Rudolph, Wandt, Rosenhahn, WACV 2021: "Same Same But DifferNet"), as its authors' code computes it
(github.com/marco-rudolph/differnet; every rule below is theirs, quirks included):

    x_0 = x (448 x 448, ImageNet-normalised), x_s = interpolate(x, size = 448 / 2^s) (nearest: x[::2^s, ::2^s])
    y   = cat over s = 0, 1, 2 of mean over H, W of alexnet.features(x_s)            (768 values)
    z   = flow(y): 8 x (fixed permutation k, then a glow coupling), log|det J| summed over couplings
    coupling:  x1, x2 = halves;  s2, t2 = split(s2net(x2));  y1 = e(s2) x1 + t2
               s1, t1 = split(s1net(y1));  y2 = e(s1) x2 + t1;  out = clamp(cat(y1, y2), -1e6, 1e6)
               log e(s) = clamp * 0.636 * atan(s / clamp)   (0.636, not 2/pi; clamp 3)
    loss  = mean over the batch of (0.5 sum(z^2) - log|det J|) / 768
    score = mean over an image's views (64 rotations) and the 768 dims of z^2    (not the NLL)

The module keeps the authors' state-dict keys (``feature_extractor.*``: a whole torchvision AlexNet, of which
only ``.features`` runs; ``nf.module_list.{2k+2}.{s1,s2}.{fc1,fc2,fc2b,fc3,bn}.*``), so a file their
``save_weights`` wrote loads as it is; block count and width are read from the file.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

N_SCALES = 3
N_FEAT = 256 * N_SCALES
ATAN_SCALE = 0.636   # the authors' constant (2 / pi would be 0.6366...)
OUTPUT_CLAMP = 1e6


def permutation(seed: int, n: int = N_FEAT) -> np.ndarray:
    """The authors' ``np.random.seed(k); np.random.permutation(n)`` (numpy's legacy generator, seeded)."""
    return np.random.RandomState(seed).permutation(n)


class FullyConnected(nn.Module):
    """``F_fully_connected``: fc1, ReLU, fc2, ReLU, fc2b, ReLU, fc3 (dropout 0). Its ``bn`` is never called;
    it is kept because the authors' files hold its parameters."""

    def __init__(self, size_in: int, size_out: int, internal: int):
        super().__init__()
        self.fc1 = nn.Linear(size_in, internal)
        self.fc2 = nn.Linear(internal, internal)
        self.fc2b = nn.Linear(internal, internal)
        self.fc3 = nn.Linear(internal, size_out)
        self.bn = nn.BatchNorm1d(size_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2b(F.relu(self.fc2(F.relu(self.fc1(x)))))))


class GlowCoupling(nn.Module):
    def __init__(self, dims: int, internal: int, clamp: float):
        super().__init__()
        self.half, self.clamp = dims // 2, clamp
        self.s1 = FullyConnected(self.half, 2 * self.half, internal)
        self.s2 = FullyConnected(dims - self.half, 2 * self.half, internal)

    def log_e(self, s: torch.Tensor) -> torch.Tensor:
        return self.clamp * ATAN_SCALE * torch.atan(s / self.clamp)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(output, log|det J| per sample)."""
        x1, x2 = x[:, :self.half], x[:, self.half:]
        r2 = self.s2(x2)
        s2, t2 = r2[:, :self.half], r2[:, self.half:]
        y1 = torch.exp(self.log_e(s2)) * x1 + t2
        r1 = self.s1(y1)
        s1, t1 = r1[:, :self.half], r1[:, self.half:]
        y2 = torch.exp(self.log_e(s1)) * x2 + t1
        log_det = self.log_e(s1).sum(dim=1) + self.log_e(s2).sum(dim=1)
        return torch.clamp(torch.cat([y1, y2], dim=1), -OUTPUT_CLAMP, OUTPUT_CLAMP), log_det


class Permutation(nn.Module):
    """A fixed permutation of the features (no parameters; not in the state dict, as in the authors' files)."""

    def __init__(self, seed: int, dims: int):
        super().__init__()
        self.register_buffer('perm', torch.from_numpy(permutation(seed, dims)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.perm]


class DifferNetFlow(nn.Module):
    """``nf``: node 0 is the input (no module), then permutation k (node 2k + 1) and coupling k (node 2k + 2)."""

    def __init__(self, blocks: int = 8, internal: int = 2048, clamp: float = 3.0, dims: int = N_FEAT):
        super().__init__()
        layers: List[nn.Module] = [nn.Identity()]
        for k in range(blocks):
            layers += [Permutation(k, dims), GlowCoupling(dims, internal, clamp)]
        self.module_list = nn.ModuleList(layers)

    def forward(self, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(z, log|det J|) of a batch of feature vectors."""
        log_det = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for layer in self.module_list[1:]:
            if isinstance(layer, GlowCoupling):
                y, block = layer(y)
                log_det = log_det + block
            else:
                y = layer(y)
        return y, log_det


def multiscale_features(features: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """y: the spatial means of ``features`` at the input's size, half and quarter (nearest), concatenated."""
    side = x.shape[-1]
    out = []
    for s in range(N_SCALES):
        scaled = x if s == 0 else F.interpolate(x, size=side // 2 ** s)
        out.append(features(scaled).mean(dim=(2, 3)))
    return torch.cat(out, dim=1)


class DifferNet(nn.Module):
    def __init__(self, feature_extractor: nn.Module, blocks: int = 8, internal: int = 2048, clamp: float = 3.0):
        super().__init__()
        self.feature_extractor = feature_extractor  # a torchvision AlexNet; only .features runs
        self.nf = DifferNetFlow(blocks, internal, clamp)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(z, log|det J|) of normalised images."""
        return self.nf(multiscale_features(self.feature_extractor.features, x))


def differnet_loss(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """mean over the batch of (0.5 sum(z^2) - log|det J|) / dims (no log 2 pi)."""
    return torch.mean(0.5 * torch.sum(z ** 2, dim=1) - log_det) / z.shape[1]


def image_scores(z: torch.Tensor, views: int) -> torch.Tensor:
    """Per image, the mean of z^2 over its ``views`` consecutive rows and the dims."""
    return (z ** 2).reshape(-1, views, z.shape[1]).mean(dim=(1, 2))


def flow_shape(state: dict, prefix: str = 'nf.') -> Tuple[int, int]:
    """(coupling blocks, internal width) of a flow state dict (the authors' keys, with ``prefix``)."""
    blocks = {int(k[len(prefix):].split('.')[1]) for k in state if k.startswith(prefix + 'module_list.')}
    width = state[f'{prefix}module_list.{min(blocks)}.s1.fc1.weight'].shape[0]
    return len(blocks), width




def gradient_maps(model: DifferNet, views: torch.Tensor, angles: List[float]) -> torch.Tensor:
    """The authors' localization of one image from its rotated views (V x 3 x H x W, normalised, at
    ``angles``): the input gradient of the loss over all views, each view's gradient rotated back
    (``scipy.ndimage.rotate``, reshape False), smoothed (``gaussian_filter``, sigma 0, 3, 3), then the
    mean over views and channels of |.|, squared: an H x W map (larger = more anomalous)."""
    from scipy.ndimage import gaussian_filter, rotate
    views = views.detach().clone().requires_grad_(True)
    z, log_det = model(views)
    grad, = torch.autograd.grad(differnet_loss(z, log_det), views)
    total = np.zeros(views.shape[-2:], dtype=np.float64)
    for g, angle in zip(grad.cpu().numpy(), angles):
        back = rotate(np.transpose(g, (1, 2, 0)), -angle, reshape=False)
        total += np.abs(gaussian_filter(np.transpose(back, (2, 0, 1)), sigma=(0, 3, 3))).sum(axis=0)
    return torch.from_numpy((total / (3 * len(angles))) ** 2)


def build_alexnet(weights: str = 'imagenet', seed: int = 0) -> nn.Module:
    """The feature extractor: torchvision's AlexNet with ``weights`` 'imagenet' (IMAGENET1K_V1: the published
    ``alexnet(pretrained=True)``), 'none' (``torch.manual_seed(seed)`` then a random init, as the fixture's) or a
    state-dict file. Frozen: only the flow trains (the authors' optimizer holds the flow alone)."""
    import torchvision
    from custom_models.weights import read_state_file, torchvision_imagenet_state
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torchvision.models.alexnet(weights=None)
    if weights == 'imagenet':
        net.load_state_dict(torchvision_imagenet_state('alexnet'))
    elif weights != 'none':
        net.load_state_dict(read_state_file(weights, '--encoder-weights file'))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def differnet_optimizer(flow: nn.Module, lr: float = 2e-4) -> torch.optim.Optimizer:
    """The authors' Adam over the flow: betas (0.8, 0.8), eps 1e-4, L2 weight decay 1e-5 (not AdamW)."""
    return torch.optim.Adam(flow.parameters(), lr=lr, betas=(0.8, 0.8), eps=1e-4, weight_decay=1e-5)


def train_step(model: DifferNet, optimizer: torch.optim.Optimizer, views: torch.Tensor) -> float:
    """One published step on a batch of views (images x transforms, image-major): the loss, backward, Adam."""
    optimizer.zero_grad()
    z, log_det = model(views)
    loss = differnet_loss(z, log_det)
    loss.backward()
    optimizer.step()
    return loss.item()


def read_differnet_file(path: str) -> Tuple[dict, Optional[dict]]:
    """(the state dict's tensors, the calibration record or None) of a DifferNet file, read once (the published
    flow's file is about 700 MB)."""
    from custom_models.weights import read_state_file
    from utils.calibration import CALIBRATION_KEY
    from utils.errors import CflowError
    raw = read_state_file(path, 'DifferNet weights file')
    if not any(isinstance(k, str) and k.startswith('nf.module_list.') for k in raw):
        hint = (' (a CFLOW checkpoint: drop --model differnet)' if 'decoder_state_dict' in raw else
                ': it holds no nf.module_list.* keys (the authors\' save_weights writes them)')
        raise CflowError(f'{path} is not a DifferNet weights file{hint}')
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}, raw.get(CALIBRATION_KEY)


def load_differnet(path: str, seed: int = 0, state: Optional[dict] = None) -> DifferNet:
    """A DifferNet from a file the authors' ``save_weights`` wrote (``model.state_dict()``), or ours (the same
    format, a calibration beside it): block count and width read from the file, AlexNet's weights from the file
    too. ``state``: the file's tensors when the caller read them already (``read_differnet_file``)."""
    from utils.errors import CflowError
    state = read_differnet_file(path)[0] if state is None else state
    blocks, width = flow_shape(state)
    model = DifferNet(build_alexnet('none', seed), blocks, width)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CflowError(f'{path} does not match DifferNet ({len(missing)} missing keys, e.g. '
                         f'{(missing or unexpected)[0]}; {len(unexpected)} unexpected)')
    for p in model.feature_extractor.parameters():
        p.requires_grad_(False)
    return model.eval()


class DifferNetScorer(nn.Module):
    """The exportable part of DifferNet: B x V x 3 x S x S normalised views -> (B x S x S zeros, B scores). The
    gradient map needs autograd, which an exported graph does not carry: its map output is zeros (predict and
    ``load_model`` draw no mask from it). ``calibration`` travels in the exported file's metadata."""

    def __init__(self, model: DifferNet, calibration: dict):
        super().__init__()
        self.model, self.calibration = model.eval(), calibration
        self.input_size = int(calibration['settings']['input_size'])
        self.views = int(calibration['settings']['test_transforms'])

    def example_input(self) -> torch.Tensor:
        return torch.rand(2, self.views, 3, self.input_size, self.input_size)

    def forward(self, views: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        batch, count = views.shape[0], views.shape[1]
        z, _ = self.model(views.reshape(batch * count, *views.shape[2:]))
        scores = (z ** 2).reshape(batch, count, z.shape[1]).mean(dim=(1, 2))
        return views.new_zeros(batch, views.shape[-2], views.shape[-1]), scores
