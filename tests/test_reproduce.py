"""reproduce.py on demo stand-ins: distinct seeded runs, resume after a kill, redo of truncated
results, submitit's local executor, and a report equal to the per-run JSON files."""
import csv
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pytest

import reproduce
from config import parse_config
from tests.conftest import ROOT
from utils.errors import CflowError
from utils.presets import PRESETS
from utils.results import read_results

CLASSES = ['bottle', 'cable']
PRESET = 'r18-cb8-pl3-256'


def runner_args(out, *extra):
    return ['--preset', PRESET, '--dataset', 'demo', '--classes', ','.join(CLASSES), '--runs', '2', '-inp', '64',
            '-bs', '64', '--meta-epochs', '1', '--sub-epochs', '1', '--encoder-weights', 'none', '--workers', '0',
            '--no-cuda', '--output-dir', str(out), '--data-path', str(out / 'data'), *extra]


def complete_results(out):
    found = {}
    for path in glob.glob(str(out / 'results' / '*.json')):
        report = read_results(path)  # None for a truncated file
        if report and report.get('complete'):
            found[path] = report
    return found


@pytest.fixture(scope='module')
def resumed(tmp_path_factory):
    """The runner killed (SIGKILL) after its first finished run, then run again to the end."""
    out = tmp_path_factory.mktemp('reproduce')
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'reproduce.py')] + runner_args(out),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not complete_results(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # its running child gets SIGTERM (parent-death signal) and marks itself interrupted
    before = {path: (os.path.getmtime(path), open(path).read()) for path in complete_results(out)}
    assert 1 <= len(before) < 4
    assert reproduce.main(runner_args(out)) == 0
    return out, before


def test_killed_runner_resumes_without_redoing_finished_runs(resumed):
    out, before = resumed
    for path, (mtime, text) in before.items():
        assert os.path.getmtime(path) == mtime and open(path).read() == text
    reports = list(complete_results(out).values())
    assert sorted(r['model'] for r in reports) == sorted(
        f'demo_resnet18_freia-cflow_pl3_cb8_inp64_run{r}_{c}' for c in CLASSES for r in range(2))
    # the run that was killed left a results file marked interrupted (or nothing, if killed before its first epoch)
    others = [json.load(open(p)) for p in glob.glob(str(out / 'results' / '*.json'))
              if p not in complete_results(out)]
    assert all(not r['complete'] and r['status'] in ('interrupted', 'starting', 'running') for r in others)


def test_runs_differ_by_seed_and_record_it(resumed):
    out, _ = resumed
    by_model = {r['model']: r for r in complete_results(out).values()}
    for c in CLASSES:
        run0, run1 = (by_model[f'demo_resnet18_freia-cflow_pl3_cb8_inp64_run{r}_{c}'] for r in range(2))
        assert (run0['seed'], run1['seed']) == (0, 1)
        assert run0['epochs'][0]['train_loss'] != run1['epochs'][0]['train_loss']


def test_seed_follows_the_run_number_unless_given():
    assert parse_config(['--dataset', 'demo', '-run', '3', '--no-cuda']).seed == 3
    assert parse_config(['--dataset', 'demo', '-run', '3', '--seed', '7', '--no-cuda']).seed == 7


def test_report_equals_mean_and_std_of_the_run_files(resumed):
    out, _ = resumed
    rows = list(csv.DictReader(open(out / 'report.csv')))
    by_key = {(r['class'], r['metric']): r for r in rows}
    reports = list(complete_results(out).values())
    published = json.load(open(os.path.join(ROOT, 'utils', 'published.json')))['tables'][PRESET]['SEG_AUROC']
    for metric in ('DET_AUROC', 'SEG_AUROC'):
        class_means = []
        for c in CLASSES:
            best = [r['max'][metric]['value'] for r in reports if r['settings']['class_name'] == c]
            last = [r['last'][metric] for r in reports if r['settings']['class_name'] == c]
            row = by_key[(c, metric)]
            assert int(row['runs']) == 2
            assert float(row['max_mean']) == pytest.approx(statistics.mean(best), abs=1e-9)
            assert float(row['max_std']) == pytest.approx(statistics.stdev(best), abs=1e-9)
            assert float(row['last_mean']) == pytest.approx(statistics.mean(last), abs=1e-9)
            class_means.append(statistics.mean(best))
            if metric == 'SEG_AUROC':
                assert float(row['published']) == published[c]
                assert float(row['diff_max']) == pytest.approx(statistics.mean(best) - published[c], abs=1e-9)
        assert float(by_key[('average', metric)]['max_mean']) == pytest.approx(statistics.mean(class_means))
    # a subset of the table's classes is compared with the paper's values for those classes
    assert float(by_key[('average', 'SEG_AUROC')]['published']) == pytest.approx(
        statistics.mean(published[c] for c in CLASSES))
    md = open(out / 'report.md').read()
    assert '| bottle | 2 |' in md and 'not the published setting' in md
    assert open(out / 'report_diff.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_truncated_results_file_is_redone(resumed, tmp_path, capsys):
    out = tmp_path / 'copy'
    shutil.copytree(resumed[0], out)
    victim = sorted(complete_results(out))[0]
    model = json.load(open(victim))['model']
    text = open(victim).read()
    open(victim, 'w').write(text[:len(text) // 2])  # as a crash in the middle of a plain write would leave it
    args = runner_args(out)
    args[args.index('--data-path') + 1] = str(resumed[0] / 'data')  # the data the runs recorded (a setting)
    assert reproduce.main(args) == 0
    assert '3 already complete, 1 to do' in capsys.readouterr().out
    assert [r['model'] for r in complete_results(out).values()].count(model) == 1


def test_submitit_local_executor_runs_the_same_jobs(tmp_path, capsys):
    pytest.importorskip('submitit')
    argv = runner_args(tmp_path, '--cluster', 'local')
    argv[argv.index('--classes') + 1] = 'bottle'
    argv[argv.index('--runs') + 1] = '1'
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert 'submitted bottle run 0' in out and '[1/1 runs] finished bottle run 0' in out
    assert len(complete_results(tmp_path)) == 1 and os.path.isfile(tmp_path / 'report.md')
    assert reproduce.main(argv) == 0  # resumable the same way: nothing left to do
    assert '1 already complete, 0 to do' in capsys.readouterr().out


def test_released_checkpoints_are_tested_with_the_settings_their_names_state(tmp_path, capsys):
    from tests.conftest import reference_checkpoint
    folder = tmp_path / 'released'
    folder.mkdir()
    fixture = reference_checkpoint('cflow_r18')  # resnet18, -pl 3, -cb 4
    shutil.copy(fixture, folder / 'mvtec_resnet18_freia-cflow_pl3_cb4_inp128_run0_metal_nut_2021-01-01-00:00:00.pt')
    shutil.copy(fixture, folder / 'mvtec_resnet18_freia-cflow_pl3_cb8_inp128_run1_metal_nut.pt')  # name is wrong
    argv = ['--preset', 'mnv3-released', '--checkpoints', str(folder), '--dataset', 'demo', '--no-cuda',
            '--workers', '0', '--output-dir', str(tmp_path / 'out'), '--data-path', str(tmp_path / 'data')]
    a = reproduce.parse_args(argv)
    jobs = reproduce.plan_jobs(a, PRESETS['mnv3-released'])
    assert [(j.class_name, j.run) for j in jobs] == [('metal_nut', 0), ('metal_nut', 1)]
    flags = dict(zip(jobs[0].argv[::2], jobs[0].argv[1::2]))
    assert flags['-enc'] == 'resnet18' and flags['-cb'] == '4' and flags['-inp'] == '128'
    assert reproduce.main(argv) == 1  # the run whose name is wrong fails, the other completes
    out = capsys.readouterr().out
    assert 'FAILED metal_nut run 1' in out and '4 coupling blocks' in out and 'expects' in out
    assert [r['model'] for r in complete_results(tmp_path / 'out').values()] == [
        'demo_resnet18_freia-cflow_pl3_cb4_inp128_run0_metal_nut']
    (folder / 'notes.pt').write_text('x')
    with pytest.raises(CflowError, match='cannot read the settings from the name'):
        reproduce.plan_jobs(a, PRESETS['mnv3-released'])


def test_one_run_per_visible_gpu_or_the_cpu(monkeypatch):
    import torch
    a = reproduce.parse_args(['--preset', PRESET])
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 3)
    assert reproduce.device_slots(a) == [['--gpu', '0'], ['--gpu', '1'], ['--gpu', '2']]
    assert reproduce.device_slots(reproduce.parse_args(['--preset', PRESET, '--gpus', '2,0'])) == [
        ['--gpu', '2'], ['--gpu', '0']]
    assert reproduce.device_slots(reproduce.parse_args(['--preset', PRESET, '--no-cuda'])) == [['--no-cuda']]
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert reproduce.device_slots(a) == [['--no-cuda']]
