"""predict's files on the demo are the same bytes as before: tables, masks, overlays (the refactors of the
library must not change what a user gets). The expected digests were written by
``tests/reference/predict_outputs/make.py`` with the code before the options refactor (issue 32)."""
import json
import os
import subprocess
import sys

from tests.conftest import PINNED_KERNELS, ROOT, reference_checkpoint

FIXTURE = os.path.join(ROOT, 'tests', 'reference', 'predict_outputs')


def test_predict_writes_the_same_files_as_before(tmp_path):
    expected = json.load(open(os.path.join(FIXTURE, 'expected.json')))
    run = subprocess.run([sys.executable, os.path.join(FIXTURE, 'make.py'), reference_checkpoint('cflow_r18'),
                          str(tmp_path / 'work')], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, **PINNED_KERNELS})
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout)
    assert sorted(found) == sorted(expected)  # the same files, under the same names
    changed = [name for name in expected if found[name] != expected[name]]
    assert not changed, f'{len(changed)} of {len(expected)} files differ: {changed[:5]}'
    csv = (tmp_path / 'work' / 'predictions' / 'predictions.csv').read_text().splitlines()
    assert len(csv) == 41 and sum(',defective,' in line for line in csv) == 12  # 40 images, as when made
