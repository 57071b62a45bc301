import atexit
import functools
import json
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The authors' reference files, slimmed (tests/reference/slim.py): nothing outside the repository.
REFERENCE = os.path.join(ROOT, 'tests', 'reference')
# predict --runtime openvino keeps compiled models in a cache (predict.openvino_cache): the suite's go in a
# folder of its own, removed at the end, never in the user's ~/.cache (subprocesses inherit it)
os.environ['CFLOW_CACHE_DIR'] = tempfile.mkdtemp(prefix='cflow-test-cache-')
atexit.register(shutil.rmtree, os.environ['CFLOW_CACHE_DIR'], True)


def reference_fixture(name):
    """(fixture.json, folder) of one reference fixture."""
    folder = os.path.join(REFERENCE, name)
    return json.load(open(os.path.join(folder, 'fixture.json'))), folder


# The fixtures' seeded encoders were drawn where torch's random fills ran their AVX2 kernels and MKL its SSE4.2
# ones (an AVX2 CPU MKL does not tune for); an AVX-512 CPU rounds some draws differently in the last bit. The
# encoder is therefore drawn in a child process pinned to those kernels: the same bits on any x86-64 CPU.
# oneDNN's convolutions are pinned to AVX2 too, for tests that compare a whole pipeline's bytes.
PINNED_KERNELS = {'ATEN_CPU_CAPABILITY': 'avx2', 'MKL_ENABLE_INSTRUCTIONS': 'SSE4_2', 'ONEDNN_MAX_CPU_ISA': 'AVX2'}
_DRAW = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from slim import draw_encoder_state
torch.save(draw_encoder_state(sys.argv[2], sys.argv[3], int(sys.argv[4])), sys.argv[5])
"""


def seeded_encoder_state(fixture):
    """The fixture's encoder, rebuilt as ``encoder_init`` says (a seeded random init), checked by SHA-256.

    A different torch/torchvision/timm release may initialise differently: then the test fails saying so,
    before any number is compared."""
    import subprocess
    import torch
    sys.path.insert(0, REFERENCE)
    from slim import state_sha256
    init = fixture['encoder_init']
    path = os.path.join(_CHECKPOINTS, f"{fixture['enc_arch']}-seed{init['seed']}-encoder.pt")
    subprocess.run([sys.executable, '-c', _DRAW, REFERENCE, init['how'], fixture['enc_arch'], str(init['seed']), path],
                   check=True, env={**os.environ, **PINNED_KERNELS})
    state = torch.load(path, weights_only=True)
    if init['how'].startswith('torch.manual_seed(seed) then timm'):
        import timm
        made_with = f"timm {init['timm']}, torch {init['torch']}; here timm {timm.__version__}"
    else:
        made_with = f"torch {init['torch']}; here {torch.__version__}"
    if state_sha256(state) != init['state_sha256']:
        pytest.fail(f"the rebuilt {fixture['enc_arch']} init ({init['how']}, seed {init['seed']}) is not the one the "
                    f"fixture was made with ({made_with}): install the versions in requirements.txt")
    return state


_CHECKPOINTS = tempfile.mkdtemp(prefix='cflow-reference-')
atexit.register(shutil.rmtree, _CHECKPOINTS, True)


@functools.lru_cache(maxsize=None)
def reference_checkpoint(name):
    """Path of the fixture's checkpoint in the authors' ``save_weights`` format, rebuilt once per session:
    the seeded encoder under ``encoder_state_dict`` and each decoder's ``w_perm_inv`` (exactly ``w_perm``
    transposed) put back beside ``w_perm``."""
    import torch
    fixture, folder = reference_fixture(name)
    decoders = torch.load(os.path.join(folder, 'decoders.pt'), map_location='cpu', weights_only=True)
    states = []
    for state in decoders['decoder_state_dict']:
        full = {}
        for key, value in state.items():
            full[key] = value
            if key.endswith('.w_perm'):
                full[key + '_inv'] = value.t().contiguous()
        states.append(full)
    path = os.path.join(_CHECKPOINTS, f'{name}.pt')
    torch.save({'encoder_state_dict': seeded_encoder_state(fixture), 'decoder_state_dict': states}, path)
    return path


@pytest.fixture(scope='session')
def demo_root(tmp_path_factory):
    """The demo class, generated once per test session (seed 0, as the README's demo)."""
    from custom_datasets.synthetic import make_demo_class
    root = str(tmp_path_factory.mktemp('demo'))
    make_demo_class(root)
    return root


@pytest.fixture
def demo_copy(demo_root, tmp_path):
    """A copy of the demo class, for a test to break."""
    root = tmp_path / 'data'
    shutil.copytree(demo_root, root)
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


# Nothing the suite runs may write into the repository (results/, weights/, a stray file): every test writes
# below pytest's temporary folders. Checked once, at the end of the session, against the files at its start.
IGNORED_IN_REPOSITORY = ('.git', '__pycache__', '.pytest_cache', 'cflow_ad.egg-info')


def repository_files():
    found = set()
    for root, dirs, files in os.walk(ROOT):
        # a virtual environment made inside the checkout (the README's .venv) is the user's, not the suite's
        dirs[:] = [d for d in dirs if d not in IGNORED_IN_REPOSITORY
                   and not os.path.isfile(os.path.join(root, d, 'pyvenv.cfg'))]
        found.update(os.path.relpath(os.path.join(root, f), ROOT) for f in files)
    return found


_AT_START = set()


def pytest_sessionstart(session):
    _AT_START.update(repository_files())


def pytest_sessionfinish(session, exitstatus):
    written = sorted(repository_files() - _AT_START) if _AT_START else []
    if written:
        print(f'\nThe suite wrote into the repository (tests must write below tmp_path): {", ".join(written[:10])}')
        session.exitstatus = 1
