import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
REFERENCE = os.path.join(SHARED, 'reference')


@pytest.fixture(scope='session')
def demo_root(tmp_path_factory):
    """The demo class, generated once per test session (seed 0, as the README's demo)."""
    from custom_datasets.synthetic import make_demo_class
    root = str(tmp_path_factory.mktemp('demo'))
    make_demo_class(root)
    return root


TRAIN = ['--dataset', 'demo', '-enc', 'resnet18', '-inp', '64', '-bs', '64', '-cb', '2', '--meta-epochs', '1',
         '--sub-epochs', '1', '--workers', '0', '--no-cuda', '--encoder-weights', 'none', '--pro']


@pytest.fixture(scope='session')
def trained(tmp_path_factory, demo_root):
    """A tiny demo model, calibrated on 16 good images that are neither training nor test images."""
    from custom_datasets.synthetic import make_demo_class
    from main import main
    root = tmp_path_factory.mktemp('deploy')
    calibration = root / 'calibration'
    # other good images of the same kind (another data seed): none of them is in the test set
    other = make_demo_class(str(root / 'other'), seed=1234, n_train=16, n_test_good=1, n_test_defect=1)
    shutil.copytree(os.path.join(other, 'train', 'good'), calibration / 'day1')
    assert main(TRAIN + ['--data-path', demo_root, '--output-dir', str(root / 'out'),
                         '--calibration-path', str(calibration)]) == 0
    (checkpoint,) = (root / 'out' / 'weights').iterdir()
    return root, str(checkpoint), demo_root


@pytest.fixture(scope='session')
def exported(trained, tmp_path_factory):
    from main import main
    _, checkpoint, _ = trained
    out = tmp_path_factory.mktemp('export')
    assert main(['--action-type', 'export', '--checkpoint', checkpoint, '--output', str(out / 'model.onnx')]) == 0
    assert main(['--action-type', 'export', '--checkpoint', checkpoint, '--output', str(out / 'model.safetensors')]) == 0
    return out, checkpoint
