"""Nothing a user keeps is left half-written: a failure mid-write leaves the previous file."""
import errno
import json
import os

import pytest

from config import parse_config
from utils import atomic
from utils.atomic import atomic_write, create_exclusive
from utils.errors import CflowError
from utils.results import METRIC_NAMES, ScoreObserver, reserve_run, write_results


def test_a_writer_that_dies_halfway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / 'results.json'
    path.write_text('{"old": true}')

    def dies_halfway(tmp):
        with open(tmp, 'w') as f:
            f.write('{"new": ')
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), dies_halfway)
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ['results.json']


def test_results_on_a_full_disk_fail_in_one_line_and_keep_the_last_epoch(tmp_path, monkeypatch):
    c = parse_config(['--dataset', 'demo', '--output-dir', str(tmp_path), '--no-cuda'])
    reserve_run(c)
    observers = {name: ScoreObserver(name) for name in METRIC_NAMES}
    observers['DET_AUROC'].update(90.0, 0)
    history = [{'epoch': 0, 'DET_AUROC': 90.0}]
    files = write_results(c, observers, history, [], status='running')
    before = open(files['json']).read()

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(atomic.os, 'replace', disk_full)
    with pytest.raises(CflowError, match='No space left on device.*free some disk space'):
        write_results(c, observers, history + [{'epoch': 1, 'DET_AUROC': 95.0}], [], status='complete')
    monkeypatch.undo()
    assert open(files['json']).read() == before and not json.loads(before)['complete']
    assert sorted(os.listdir(tmp_path / 'results')) == sorted(os.path.basename(f) for f in files.values())


def test_create_exclusive_never_replaces_a_file(tmp_path):
    path = str(tmp_path / 'a.json')
    assert create_exclusive(path, 'first') and not create_exclusive(path, 'second')
    assert open(path).read() == 'first' and os.listdir(tmp_path) == ['a.json']


def test_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(CflowError, match='cannot write into .*pass a writable --output-dir'):
        atomic_write(str(blocker / 'sub' / 'out.json'), lambda tmp: None)
