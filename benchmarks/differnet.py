"""DifferNet's test (``--model differnet``) against its authors' test loop on the same CPU and inputs: per image
its 64 rotated views in one batch through AlexNet at 3 scales and the flow; the authors' loop also runs
``jacobian(run_forward=False)`` for the test loss, a second pass of every coupling's subnetworks. Then DifferNet
beside CFLOW (ResNet-18), trained by the commands with the same small budget, in one run: image AUROC and wall
time, on the demo class and on MTD-style data (the demo generator's grey tiles laid out as Magnetic Tile Defects,
the authors' 761 training names included: ``--dataset mtd``)."""
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


def mtd_style(root: str) -> str:
    """A Magnetic-Tile-Defects layout of generated grey tiles: MT_Free holds the authors' 761 training names and
    20 more; stains stand in MT_Blowhole, scratches in MT_Crack (with their masks); the other defect folders empty."""
    import shutil
    from PIL import Image
    from custom_datasets.mtd import DEFECTS, FREE, training_names
    names = training_names()
    source = make_demo_class(os.path.join(root, 'source'), 'tiles', seed=7, n_train=len(names), n_test_good=20,
                             n_test_defect=16)
    data = os.path.join(root, 'mtd')
    for folder in (FREE,) + DEFECTS:
        os.makedirs(os.path.join(data, folder, 'Imgs'))
    grey = lambda src, dst: Image.open(src).convert('L').save(dst)
    for name, i in zip(names, range(len(names))):
        grey(os.path.join(source, 'train', 'good', f'{i:03d}.png'), os.path.join(data, FREE, 'Imgs', name))
    for i in range(20):
        grey(os.path.join(source, 'test', 'good', f'{i:03d}.png'), os.path.join(data, FREE, 'Imgs', f'extra_{i}.jpg'))
    for defect, folder in (('stain', 'MT_Blowhole'), ('scratch', 'MT_Crack')):
        for i in range(16):
            grey(os.path.join(source, 'test', defect, f'{i:03d}.png'), os.path.join(data, folder, 'Imgs', f'd_{i}.jpg'))
            shutil.copy(os.path.join(source, 'ground_truth', defect, f'{i:03d}_mask.png'),
                        os.path.join(data, folder, 'Imgs', f'd_{i}.png'))
    return data


def demo_runs(a, root: str, dataset: list, label: str) -> list:
    """DifferNet and CFLOW (ResNet-18) trained by the commands on ``dataset`` (its flags): image AUROC and time."""
    rows = []
    common = dataset + ['--encoder-weights', 'none', '--no-cuda', '--workers', '2', '--meta-epochs',
                        str(a.differnet_meta_epochs), '--sub-epochs', '2']
    for name, flags in (('DifferNet', ['--model', 'differnet', '-inp', '256', '-bs', '8', '--transforms', '4',
                                       '--test-transforms', '16', '--flow-width', '512']),
                        ('CFLOW ResNet-18', ['-enc', 'resnet18', '-inp', '128', '-cb', '8'])):
        out = os.path.join(root, f'{label}_{name}'.replace(' ', '_'))
        with Timer() as t:
            command(common + flags + ['--output-dir', out])()
        (path,) = glob.glob(os.path.join(out, 'results', '*.json'))
        auroc = json.load(open(path))['last']['DET_AUROC']
        rows.append(Row(f'{label}, {name}: image AUROC {auroc:.2f}', t.seconds, 's',
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
        rows += demo_runs(a, root, ['--dataset', 'demo', '--data-path', os.path.join(root, 'data')], 'demo class')
        if a.differnet_mtd:
            rows += demo_runs(a, root, ['--dataset', 'mtd', '--data-path', mtd_style(root)], 'MTD-style tiles')
    return rows
