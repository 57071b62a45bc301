"""The command line as a new user meets it: help, demo defaults, typos, progress in logs, hints that name the
fix, and the installed API and `cflow-ad` command from another folder."""
import io
import os
import shutil
import subprocess
import sys

import pytest

from config import DEFAULT_WORKERS, parse_config
from main import main
from utils.progress import progress

from tests.conftest import reference_checkpoint, ROOT
from tests.test_errors import assert_one_line_error, run_cli


def test_help_needs_neither_torch_nor_torchvision():
    code = ('import sys, contextlib, io; sys.argv = ["main.py", "--help"]; import main\n'
            'with contextlib.redirect_stdout(io.StringIO()) as out:\n'
            '    try: main.main(["--help"])\n'
            '    except SystemExit: pass\n'
            'print("torch" in sys.modules, "torchvision" in sys.modules, "--calibration-path" in out.getvalue())')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ['False', 'False', 'True']


def test_help_placeholders_say_what_they_take():
    result = subprocess.run([sys.executable, 'main.py', '--help'], cwd=ROOT, capture_output=True, text=True)
    text = ' '.join(result.stdout.split())
    for fragment in ('--checkpoint FILE', '-inp PX', '--workers N', '--scorer NAME',
                     'number of encoder taps (pool layers)'):
        assert fragment in text


def test_no_arguments_says_the_class_name_is_missing(capsys):
    rc, err = run_cli(capsys, [])
    assert_one_line_error(rc, err, '--dataset mvtec needs -cl/--class-name NAME', 'bottle', '--dataset demo')


def test_demo_refuses_a_mistyped_class(capsys, tmp_path):
    rc, err = run_cli(capsys, ['--dataset', 'demo', '--class-name', 'textle', '--data-path', str(tmp_path)])
    assert_one_line_error(rc, err, "unknown demo class 'textle'", 'textile')
    assert not os.listdir(tmp_path)  # nothing was generated


def test_demo_has_small_defaults_unless_flags_are_given(capsys):
    c = parse_config(['--dataset', 'demo', '--no-cuda'])
    assert (c.enc_arch, c.input_size, c.meta_epochs, c.sub_epochs) == ('resnet18', 128, 4, 4)
    assert 'Demo defaults: -enc resnet18 -inp 128 --meta-epochs 4 --sub-epochs 4' in capsys.readouterr().out
    c = parse_config(['--dataset', 'demo', '--no-cuda', '-inp', '64', '--meta-epochs', '2'])
    assert (c.enc_arch, c.input_size, c.meta_epochs, c.sub_epochs) == ('resnet18', 64, 2, 4)
    c = parse_config(['--dataset', 'mvtec', '--class-name', 'bottle', '--no-cuda'])  # published defaults elsewhere
    assert (c.enc_arch, c.input_size, c.meta_epochs, c.sub_epochs) == ('wide_resnet50_2', 256, 25, 8)


def test_default_workers_fit_the_machine():
    assert 1 <= DEFAULT_WORKERS <= min(4, os.cpu_count() or 1)


def test_progress_prints_lines_with_an_estimate_when_no_terminal_is_attached():
    log = io.StringIO()  # not a tty, like a log file
    assert list(progress(range(4), total=4, desc='train epoch 0.0', interval=0, stream=log)) == [0, 1, 2, 3]
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith('train epoch 0.0: 1/4 (25%), elapsed 0:00:00, about ')
    assert lines[-1].startswith('train epoch 0.0: 4/4 (100%)')


def test_coupling_block_mismatch_names_the_value_to_pass(capsys, demo_root):
    rc, err = run_cli(capsys, ['--action-type', 'norm-test', '--checkpoint', reference_checkpoint('cflow_r18'),
                               '--no-cuda', '--dataset', 'demo', '--data-path', demo_root,
                               '-enc', 'resnet18', '-cb', '8'])
    assert_one_line_error(rc, err, '4 coupling blocks', 'pass -cb 4')


def test_checkpoint_named_for_another_input_size_is_refused(capsys, tmp_path, demo_root):
    named = tmp_path / 'mvtec_resnet18_freia-cflow_pl3_cb4_inp128_run0_bottle_2021-01-01-00-00-00.pt'
    shutil.copy(reference_checkpoint('cflow_r18'), named)
    rc, err = run_cli(capsys, ['--action-type', 'norm-test', '--checkpoint', str(named), '--no-cuda', '--dataset',
                               'demo', '--data-path', demo_root, '-enc', 'resnet18', '-cb', '4', '-inp', '256'])
    assert_one_line_error(rc, err, 'is named inp128 but -inp is 256', 'pass -inp 128')


def test_the_installed_api_and_command_work_from_another_folder(tmp_path):
    """After the README's install (`pip install -c constraints.txt -e .`), a script anywhere imports the
    library, and `cflow-ad` is `python main.py`."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    code = 'import custom_models, os; print(os.path.dirname(os.path.dirname(custom_models.__file__)))'
    found = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert os.path.samefile(found.stdout.strip(), ROOT)
    # every top-level module and package is installed (the verbs import actions, the bench its package)
    modules = sorted(n[:-3] for n in os.listdir(ROOT) if n.endswith('.py')) + sorted(
        n for n in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, n, '__init__.py')) and n != 'tests')
    every = subprocess.run([sys.executable, '-c', f'import {", ".join(modules)}'], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert every.returncode == 0, every.stderr[-500:]
    command = os.path.join(os.path.dirname(sys.executable), 'cflow-ad')
    result = subprocess.run([command, '--dataset', 'nope'], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: unknown --dataset 'nope'")
