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
    run = reserve_run(c.output_dir, c.model, c.run_date)
    observers = {name: ScoreObserver(name) for name in METRIC_NAMES}
    observers['DET_AUROC'].update(90.0, 0)
    history = [{'epoch': 0, 'DET_AUROC': 90.0}]
    files = write_results(c.items(), run, observers, history, [], status='running')
    before = open(files['json']).read()

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(atomic.os, 'replace', disk_full)
    with pytest.raises(CflowError, match='No space left on device.*free some disk space'):
        write_results(c.items(), run, observers, history + [{'epoch': 1, 'DET_AUROC': 95.0}], [], status='complete')
    monkeypatch.undo()
    assert open(files['json']).read() == before and not json.loads(before)['complete']
    # nothing half-written, and no published .txt line: the run never completed
    assert sorted(os.listdir(tmp_path / 'results')) == [os.path.basename(files['json'])]


def test_create_exclusive_never_replaces_a_file(tmp_path):
    path = str(tmp_path / 'a.json')
    assert create_exclusive(path, 'first') and not create_exclusive(path, 'second')
    assert open(path).read() == 'first' and os.listdir(tmp_path) == ['a.json']


def test_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(CflowError, match='cannot write into .*pass a writable --output-dir'):
        atomic_write(str(blocker / 'sub' / 'out.json'), lambda tmp: None)


def test_atomic_writes_never_touch_the_process_umask(tmp_path, monkeypatch):
    """The predict writer thread writes while the main thread may create files: no umask flip-flop."""
    def no_umask(mask):
        raise AssertionError('os.umask called during a write')
    monkeypatch.setattr(atomic.os, 'umask', no_umask)
    path = tmp_path / 'out.txt'
    atomic.atomic_write_text(str(path), 'x')
    assert path.read_text() == 'x' and (path.stat().st_mode & 0o777) == 0o666 & ~atomic.UMASK
    assert atomic.create_exclusive(str(tmp_path / 'claimed.json'), '{}')


def test_exclusive_create_without_hard_links_is_still_atomic(tmp_path, monkeypatch):
    """Where the filesystem has no hard links, the file appears complete (a replace), never empty."""
    def no_links(src, dst):
        raise OSError(1, 'Operation not permitted')
    replaced = []
    real_replace = atomic.os.replace

    def spy(src, dst):
        replaced.append((os.path.basename(src), os.path.basename(dst)))
        return real_replace(src, dst)
    monkeypatch.setattr(atomic.os, 'link', no_links)
    monkeypatch.setattr(atomic.os, 'replace', spy)
    path = tmp_path / 'run.json'
    assert atomic.create_exclusive(str(path), '{"complete": false}')
    assert path.read_text() == '{"complete": false}' and replaced and replaced[0][1] == 'run.json'
    assert not atomic.create_exclusive(str(path), 'second')
    assert path.read_text() == '{"complete": false}' and sorted(os.listdir(tmp_path)) == ['run.json']


def test_the_folder_is_synced_after_the_rename(tmp_path, monkeypatch):
    import stat
    synced = []
    real_fsync = atomic.os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)
    monkeypatch.setattr(atomic.os, 'fsync', spy)
    atomic.atomic_write_text(str(tmp_path / 'a.txt'), 'x')
    assert synced == [False, True]  # the file, then its folder (after the rename)
