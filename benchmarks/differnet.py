"""DifferNet's test (``--model differnet``) against its authors' test loop on the same CPU and inputs: per image
its 64 rotated views in one batch through AlexNet at 3 scales and the flow; the authors' loop also runs
``jacobian(run_forward=False)`` for the test loss, a second pass of every coupling's subnetworks. Then DifferNet
beside CFLOW (ResNet-18) on the demo class, trained by the commands with the same small budget, in one run:
image AUROC and wall time."""
import glob
import json
import os
import tempfile

import torch

from benchmarks.commands import command
from benchmarks.rows import Row
from benchmarks.timing import Timer, interleaved, speed_rows
from custom_datasets.synthetic import make_demo_class
from custom_models.differnet import DifferNet, build_alexnet, image_scores, multiscale_features


def test_paths(a, model: DifferNet, views: torch.Tensor) -> dict:
    """name -> one pass over ``a.differnet_images`` images of 64 views each."""
    def ours():
        with torch.inference_mode():
            for _ in range(a.differnet_images):
                z, _ = model(views)
                image_scores(z, views.shape[0])

    def authors():
        with torch.inference_mode():
            for _ in range(a.differnet_images):
                features = multiscale_features(model.feature_extractor.features, views)
                z, _ = model.nf(features)
                model.nf(features)  # jacobian(run_forward=False): the subnetworks once more, for the test loss
                (z ** 2).mean(dim=1).mean().item()
    return {"authors' test loop (64 views, + jacobian pass)": authors, 'ours (64 views, one pass)': ours}


def demo_runs(a, root: str) -> list:
    """DifferNet and CFLOW (ResNet-18) trained on the demo class by the commands: image AUROC and time."""
    rows = []
    common = ['--dataset', 'demo', '--data-path', os.path.join(root, 'data'), '--encoder-weights', 'none', '--no-cuda',
              '--workers', '2', '--meta-epochs', str(a.differnet_meta_epochs), '--sub-epochs', '2']
    for name, flags in (('DifferNet', ['--model', 'differnet', '-inp', '256', '-bs', '8', '--transforms', '4',
                                       '--test-transforms', '16', '--flow-width', '512']),
                        ('CFLOW ResNet-18', ['-enc', 'resnet18', '-inp', '128', '-cb', '8'])):
        out = os.path.join(root, name.replace(' ', '_'))
        with Timer() as t:
            command(common + flags + ['--output-dir', out])()
        (path,) = glob.glob(os.path.join(out, 'results', '*.json'))
        auroc = json.load(open(path))['last']['DET_AUROC']
        rows.append(Row(f'demo class, {name}: image AUROC {auroc:.2f}', t.seconds, 's',
                        notes=f'train + test; {" ".join(flags)}', data={'auroc': auroc, 'seconds': t.seconds}))
    return rows


def run(a):
    torch.manual_seed(0)
    model = DifferNet(build_alexnet('none', 0)).eval()
    views = torch.randn(64, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    paths = test_paths(a, model, views)
    seconds = interleaved(paths, a.rounds, 'cpu')
    rows = speed_rows(seconds, a.differnet_images, next(iter(paths)),
                      {n: 'the published flow (8 blocks, width 2048), 448 px' for n in paths})
    with tempfile.TemporaryDirectory() as root:
        make_demo_class(os.path.join(root, 'data'))
        rows += demo_runs(a, root)
    return rows
