"""The table runner and its results files: runs matched by their settings, not their name; missing metrics
missing, not zero; an interrupted run never looks finished; its slots run at once."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import reproduce
from utils.errors import CflowError
from utils.report import missing_notes, summarise
from utils.results import run_signature

from tests.conftest import ROOT


PRESET = 'r18-cb8-pl3-256'


def runner_args(out, *extra):
    return ['--preset', PRESET, '--dataset', 'demo', '--classes', 'bottle', '--runs', '1', '-inp', '64',
            '--meta-epochs', '2', '--encoder-weights', 'none', '--no-cuda', '--output-dir', str(out),
            '--data-path', str(out / 'data'), *extra]


def fake_result(out, job, complete=True, **changed):
    """A results JSON as main.py writes it for ``job``, with some settings changed."""
    settings = {**job.signature, **changed}
    os.makedirs(out / 'results', exist_ok=True)
    path = out / 'results' / f'{job.model}_2026-01-01-00-00-0{len(os.listdir(out / "results"))}.json'
    metrics = {'DET_AUROC': 90.0, 'SEG_AUROC': 95.0, 'SEG_AUPRO': None}
    path.write_text(json.dumps({'model': job.model, 'date': path.stem[-19:], 'complete': complete,
                                'status': 'complete' if complete else 'interrupted', 'settings': settings,
                                'max': {k: {'value': 0.0 if v is None else v, 'epoch': 0} for k, v in metrics.items()},
                                'last': metrics}))
    return path


def plan(out):
    a = reproduce.parse_args(runner_args(out))
    reproduce.absolute_paths(a)
    from utils.presets import get_preset
    return a, get_preset(a.preset), reproduce.plan_jobs(a, get_preset(a.preset))


def test_a_run_with_the_same_name_but_other_settings_is_not_taken(tmp_path):
    a, preset, (job,) = plan(tmp_path)
    assert job.signature['meta_epochs'] == 2 and job.signature['seed'] == 0  # derived by main.py's own code
    results = str(tmp_path / 'results')
    fake_result(tmp_path, job, meta_epochs=1)                # a smoke run under the same name
    fake_result(tmp_path, job, action_type='norm-test')       # a released-checkpoint test of the same model
    fake_result(tmp_path, job, pro=True)                      # a table-B run (AUPRO) under this name
    assert not reproduce.is_complete(results, job)
    with pytest.raises(CflowError) as error:
        reproduce.write_preset_report(a, preset, results, str(tmp_path))
    message = str(error.value)
    assert "--meta-epochs 1 (expected 2)" in message and "--action-type 'norm-test'" in message
    assert '--pro True (expected False)' in message
    fake_result(tmp_path, job, complete=False)                # the right settings, but interrupted
    assert not reproduce.is_complete(results, job)
    fake_result(tmp_path, job)
    assert reproduce.is_complete(results, job)
    files = reproduce.write_preset_report(a, preset, results, str(tmp_path))
    md = open(files['md']).read()
    # the note comes from what the runs recorded: stand-in data, a short schedule
    assert 'stand-in data' in md and 'meta-epochs 2 (published 25)' in md and 'random-init encoder' in md


def test_the_note_follows_what_the_runs_recorded_not_the_flags(tmp_path):
    """A run that recorded ImageNet weights and the published schedule gets no warning."""
    a, preset, (job,) = plan(tmp_path)
    published = dict(encoder_weights=None, encoder_source='imagenet', meta_epochs=25, sub_epochs=8, dataset='mvtec',
                     input_size=256)
    job.signature.update(published)
    fake_result(tmp_path, job)
    notes = reproduce.not_published_notes({('bottle', 0): json.load(open(next((tmp_path / 'results').iterdir())))},
                                          preset)
    assert notes == []
    job.signature.update(encoder_source='none')
    fake_result(tmp_path, job)
    runs = {('bottle', 0): json.load(open(sorted((tmp_path / 'results').iterdir())[-1]))}
    (note,) = reproduce.not_published_notes(runs, preset)
    assert 'random-init encoder' in note


def test_paths_in_the_signature_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_signature({'data_path': 'data'})['data_path'] == str(tmp_path / 'data')
    assert run_signature({'encoder_weights': 'none'})['encoder_weights'] == 'none'
    assert run_signature({})['adam'] == 'published'  # files from before --adam ran the published kernel


def report(cls, run, aupro):
    last = {'DET_AUROC': 90.0 + run, 'SEG_AUROC': 95.0, 'SEG_AUPRO': aupro}
    return {'settings': {'class_name': cls}, 'date': '1', 'last': last,
            'max': {k: {'value': 0.0 if v is None else v, 'epoch': 0} for k, v in last.items()}}


def test_runs_without_aupro_are_absent_from_its_rows_not_zero():
    runs = {('bottle', 0): report('bottle', 0, 90.0), ('bottle', 1): report('bottle', 1, None),
            ('cable', 0): report('cable', 0, None), ('cable', 1): report('cable', 1, None)}
    rows = {(r['class'], r['metric']): r for r in summarise(runs, ['bottle', 'cable'], {})}
    assert rows[('bottle', 'SEG_AUPRO')]['runs'] == 1 and rows[('bottle', 'SEG_AUPRO')]['max_mean'] == 90.0
    assert rows[('bottle', 'SEG_AUPRO')]['missing'] == 1
    assert rows[('cable', 'SEG_AUPRO')]['runs'] == 0 and np.isnan(rows[('cable', 'SEG_AUPRO')]['max_mean'])
    assert rows[('average', 'SEG_AUPRO')]['max_mean'] == 90.0  # over the class that has it, not (90 + 0) / 2
    assert rows[('average', 'DET_AUROC')]['max_mean'] == pytest.approx(90.5)
    (note,) = missing_notes(list(rows.values()), 2)
    assert 'SEG_AUPRO: missing in 3 run(s)' in note and '1 of 2 classes' in note


def test_sigterm_leaves_an_interrupted_run_without_the_published_line(tmp_path, demo_root):
    out = tmp_path / 'out'
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py'), '--dataset', 'demo', '--data-path',
                             demo_root, '-enc', 'resnet18', '-inp', '64', '-bs', '64', '-cb', '1', '--meta-epochs',
                             '50', '--sub-epochs', '1', '--workers', '0', '--no-cuda', '--encoder-weights', 'none',
                             '--output-dir', str(out)], cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first tested epoch
        found = list((out / 'results').glob('*.json')) if (out / 'results').is_dir() else []
        if found and json.loads(found[0].read_text() or '{}').get('epochs'):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    (result,) = (out / 'results').glob('*.json')
    record = json.loads(result.read_text())
    assert record['status'] == 'interrupted' and record['complete'] is False and record['epochs']
    assert not list((out / 'results').glob('*.txt'))  # the authors' collection script finds nothing
    assert 'Run interrupted after' in output and 'no results .txt line' in output


TRAIN = ['--dataset', 'demo', '-enc', 'resnet18', '-inp', '64', '-bs', '64', '-cb', '1', '--meta-epochs', '1',
         '--sub-epochs', '1', '--workers', '0', '--no-cuda', '--encoder-weights', 'none']


def test_two_slots_run_two_jobs_at_the_same_time(tmp_path, monkeypatch):
    script = tmp_path / 'fake_main.py'
    script.write_text('import sys, time\nstart = time.time()\ntime.sleep(1.5)\n'
                      'print(sys.argv[1], start, time.time())\n')
    monkeypatch.setattr(reproduce, 'MAIN', str(script))
    jobs = [reproduce.Job('a', 0, 'job-a', ['a']), reproduce.Job('b', 0, 'job-b', ['b'])]
    progress = reproduce.Progress(len(jobs))
    reproduce.run_local(jobs, [['--no-cuda'], ['--no-cuda']], str(tmp_path / 'logs'), progress, poll=0.05)
    spans = {}
    for name in ('job-a', 'job-b'):
        label, start, end = (tmp_path / 'logs' / f'{name}.log').read_text().split()
        spans[label] = (float(start), float(end))
    (a0, a1), (b0, b1) = spans['a'], spans['b']
    assert a0 < b1 and b0 < a1  # the two intervals overlap
    assert progress.done == 2 and not progress.failed
