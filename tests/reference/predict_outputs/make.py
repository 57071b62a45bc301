"""predict's outputs on the demo's test images, as files: what ``tests/test_predict_outputs.py`` compares
byte for byte, so that a change that should not change predict cannot change it.

    python tests/reference/predict_outputs/make.py MODEL.pt WORK_DIR    # prints {file: sha256} as JSON

MODEL.pt: the cflow_r18 fixture's checkpoint (its seeded encoder and the authors' flows). In WORK_DIR:
the demo class (seed 0) is generated, the model calibrated on its training images, and predict run on
its test images (relative paths, so the files name no temporary folder). Run in a process pinned to
AVX2 kernels, oneDNN included (``tests/conftest.py: PINNED_KERNELS``), so the bits do not depend on the CPU.
"""
import contextlib
import hashlib
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

# timing is the only thing in predict's files that may change from run to run
TIMING_KEYS = ('seconds', 'images_per_second')


def outputs(model: str, work: str) -> dict:
    from custom_datasets.synthetic import make_demo_class
    from main import main
    os.makedirs(work, exist_ok=True)
    os.chdir(work)
    make_demo_class('data')
    shutil.copy(model, 'model.pt')
    common = ['--no-cuda', '--workers', '0']
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the digests only
        assert main(['--action-type', 'calibrate', '--checkpoint', 'model.pt', '-enc', 'resnet18', '-inp', '128',
                     '-cb', '4', '-pl', '3', '--calibration-path', 'data/textile/train/good',
                     '--output', 'calibrated.pt'] + common) == 0
        assert main(['--action-type', 'predict', '--checkpoint', 'calibrated.pt', '--input', 'data/textile/test',
                     '--output-dir', 'predictions'] + common) == 0
    report = json.load(open('predictions/predictions.json'))
    for key in TIMING_KEYS:
        report['summary'].pop(key)
    with open('predictions/predictions.json', 'w') as f:
        json.dump(report, f, indent=1, sort_keys=True)
    digests = {}
    for folder, _, files in os.walk('predictions'):
        for name in files:
            path = os.path.join(folder, name)
            digests[path] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
    return dict(sorted(digests.items()))


if __name__ == '__main__':
    print(json.dumps(outputs(os.path.abspath(sys.argv[1]), sys.argv[2]), indent=1))
