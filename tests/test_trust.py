"""No silent wrong table, no lost model (issue 14): runs matched by settings, missing metrics,
interrupted runs, calibration that never costs the model, settings a model file states,
one arithmetic, FrEIA's maths checked, a normal deployable module, readable output."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import reproduce
from actions import read_settings
from config import parse_config
from main import main
from utils.errors import CflowError
from utils.report import missing_notes, summarise
from utils.results import run_signature

from tests.conftest import reference_checkpoint, ROOT
from tests.test_errors import assert_one_line_error, run_cli

PRESET = 'r18-cb8-pl3-256'
R18 = reference_checkpoint('cflow_r18')


# ----------------------------------------------------------------------------------
# 1. runs are matched by their settings, not by their name


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


# ----------------------------------------------------------------------------------
# 2. missing metrics are missing, not zero


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


# ----------------------------------------------------------------------------------
# 3. and 11. an interrupted run never looks finished (SIGTERM, as a scheduler sends it)


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


# ----------------------------------------------------------------------------------
# 4. calibration never costs the model


TRAIN = ['--dataset', 'demo', '-enc', 'resnet18', '-inp', '64', '-bs', '64', '-cb', '1', '--meta-epochs', '1',
         '--sub-epochs', '1', '--workers', '0', '--no-cuda', '--encoder-weights', 'none']


def test_a_bad_calibration_folder_fails_before_training(capsys, tmp_path, demo_root):
    rc, err = run_cli(capsys, TRAIN + ['--data-path', demo_root, '--output-dir', str(tmp_path),
                                       '--calibration-path', str(tmp_path / 'typo')])
    assert_one_line_error(rc, err, 'is not a folder')
    assert 'train epoch' not in capsys.readouterr().out and not (tmp_path / 'weights').exists()


def test_a_failed_calibration_keeps_the_trained_model_and_says_how_to_calibrate(capsys, tmp_path, demo_root,
                                                                                  monkeypatch):
    import train

    def broken(*args, **kwargs):
        raise CflowError('calibration gave non-finite constants')
    monkeypatch.setattr(train, 'calibrate_images', broken)
    assert main(TRAIN + ['--data-path', demo_root, '--output-dir', str(tmp_path)]) == 0
    err = capsys.readouterr().err
    (checkpoint,) = (tmp_path / 'weights').iterdir()
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    assert {'encoder_state_dict', 'decoder_state_dict'} <= set(state) and 'calibration' not in state
    assert f'calibrate it with: python main.py --action-type calibrate --checkpoint {checkpoint}' in err
    assert '-enc resnet18' in err and '-inp 64' in err
    (result,) = (tmp_path / 'results').glob('*.json')
    record = json.loads(result.read_text())
    assert record['complete'] and 'non-finite' in record['epochs'][-1]['calibration_error']


def test_calibration_in_bounded_chunks_equals_the_whole_array(monkeypatch):
    """Thresholds from S made a few images at a time equal those of the full N x H x W arrays."""
    import utils.anomaly_map as anomaly_map
    import utils.calibration as calibration
    from utils.anomaly_map import summed_probabilities
    torch.manual_seed(0)
    n, size = 23, (40, 40)
    log_probs = [torch.randn(n, 10, 10) * 3, torch.randn(n, 5, 5) * 3]
    made = []

    def spy(lps, *args, **kwargs):
        made.append(lps[0].shape[0])
        return summed_probabilities(lps, *args, **kwargs)
    monkeypatch.setattr(calibration, 'CHUNK_VALUES', 3 * 1600)
    monkeypatch.setattr(anomaly_map, 'summed_probabilities', spy)
    record = calibration.calibrate_from_log_probs(log_probs, size, 'test', {}, pixel_quantile=0.95)
    assert max(made) == 3 and sum(made) == n  # never more than 3 images' maps at once
    shifts = [float(lp.max()) for lp in log_probs]
    total = summed_probabilities([lp.double() for lp in log_probs], size, shifts)
    maps = (total.max() - total).numpy()
    scores = maps.reshape(n, -1).max(axis=1)
    top, median = np.quantile(scores, 0.99), np.median(scores)
    image_threshold = top + 0.1 * (top - median)
    assert record['sum_max'] == float(total.max())
    assert record['image_threshold'] == pytest.approx(image_threshold, abs=1e-12)
    assert np.quantile(maps, 0.95) < image_threshold  # so the pixel rule, not the cap, decides
    assert record['pixel_threshold'] == pytest.approx(np.quantile(maps, 0.95), abs=1e-12)


# ----------------------------------------------------------------------------------
# 5. settings recorded in a model file are enforced or taken


@pytest.fixture(scope='module')
def calibrated_at_128(tmp_path_factory):
    state = torch.load(R18, map_location='cpu', weights_only=True)
    settings = {'enc_arch': 'resnet18', 'dec_arch': 'freia-cflow', 'pool_layers': 3, 'coupling_blocks': 4,
                'input_size': 128, 'norm_mean': [0.485, 0.456, 0.406], 'norm_std': [0.229, 0.224, 0.225]}
    state['calibration'] = {'log_p_max': [0.0] * 3, 'sum_max': 3.0, 'image_threshold': 1.0, 'pixel_threshold': 1.0,
                            'source': 'test', 'settings': settings}
    path = tmp_path_factory.mktemp('calibrated') / 'model.pt'
    torch.save(state, path)
    return str(path)


def test_norm_test_of_a_calibrated_file_takes_or_enforces_its_input_size(calibrated_at_128, capsys):
    c = read_settings(['--action-type', 'norm-test', '--checkpoint', calibrated_at_128, '--no-cuda'])
    assert c.input_size == 128 and c.enc_arch == 'resnet18' and c.crp_size == (128, 128) and 'inp128' in c.model
    rc, err = run_cli(capsys, ['--action-type', 'norm-test', '--checkpoint', calibrated_at_128, '-inp', '256',
                               '--no-cuda'])
    assert_one_line_error(rc, err, 'made with -inp 128, but -inp 256 was passed')


@pytest.mark.parametrize('action', ['calibrate', 'predict', 'export'])
def test_an_authors_name_states_the_input_size_for_every_action(action, tmp_path, capsys):
    named = tmp_path / 'mvtec_resnet18_freia-cflow_pl3_cb4_inp512_run0_bottle.pt'
    os.symlink(R18, named)
    extra = {'calibrate': ['--calibration-path', str(tmp_path)], 'predict': ['--input', str(tmp_path)],
             'export': ['--output', str(tmp_path / 'm.onnx')]}[action]
    base = ['--action-type', action, '--checkpoint', str(named), '-enc', 'resnet18', '--no-cuda'] + extra
    assert read_settings(base).input_size == 512
    rc, err = run_cli(capsys, base + ['-inp', '256'])
    assert_one_line_error(rc, err, 'is named inp512 but -inp is 256')


# ----------------------------------------------------------------------------------
# 7. the deployable model is a normal module; encoders are thread-safe


def tiny_model(arch='resnet18'):
    from custom_models.anomaly_model import AnomalyModel
    from custom_models.encoders import build_encoder
    from custom_models.flows import build_decoders
    torch.manual_seed(0)
    np.random.seed(0)
    encoder = build_encoder(arch, 3, 'none')
    decoders = build_decoders('freia-cflow', encoder.pool_dims, 1)
    return AnomalyModel(encoder, decoders, 64, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2),
                        {'log_p_max': [0.0] * 3, 'sum_max': 3.0}).eval()


def test_the_deployable_model_is_an_ordinary_module():
    model = tiny_model()
    state = model.state_dict()
    assert any(k.startswith('scorers.2.block0_w1x') for k in state)  # the flows are in it
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        before = model(images)[0]
        moved = model.to('cpu', non_blocking=True)  # raised before
        assert moved is model
        double = model.double()
        assert double.scorers[0].block0_w1x.dtype == torch.float64
        after = double(images.double())[0]
    assert (after.float() - before).abs().max() <= 1e-4 * before.abs().max()


def test_threads_sharing_a_mobilenet_keep_their_own_taps():
    from custom_models.encoders import build_encoder
    torch.manual_seed(0)
    encoder = build_encoder('mobilenet_v3_large', 3, 'none')
    inputs = [torch.rand(1, 3, 96, 96) for _ in range(4)]
    with torch.inference_mode():
        expected = [encoder(x) for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(5):
            with torch.inference_mode():
                results[i] = encoder(inputs[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert len(got) == 3 and all(torch.equal(g, w) for g, w in zip(got, want))


# ----------------------------------------------------------------------------------
# 9. FrEIA's maths is checked at start-up


@pytest.mark.parametrize('change', ['clamp', 'permutation'])
def test_a_freia_with_other_maths_is_refused(change, monkeypatch):
    import FrEIA.modules as Fm
    from custom_models import flows
    flows.check_freia_maths.cache_clear()
    if change == 'clamp':  # the repository's later coupling: clamp * tanh(a / clamp)
        def affine(self, x, a, rev=False):
            a = a * 0.1
            ch = x.shape[1]
            sub_jac = self.clamp * torch.tanh(a[:, :ch] / self.clamp)
            return x * torch.exp(sub_jac) + a[:, ch:], torch.sum(sub_jac, dim=1)
        monkeypatch.setattr(Fm.AllInOneBlock, '_affine', affine)
    else:  # index permutations instead of C x C matrices
        original = Fm.AllInOneBlock.__init__

        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            del self.w_perm
            self.register_buffer('w_perm', torch.arange(self.in_channels))
        monkeypatch.setattr(Fm.AllInOneBlock, '__init__', init)
    try:
        with pytest.raises(CflowError, match='FrEIA==0.2'):
            flows.build_decoder('freia-cflow', 8, 1)
    finally:
        flows.check_freia_maths.cache_clear()
    monkeypatch.undo()
    flows.build_decoder('freia-cflow', 8, 1)  # the installed 0.2 passes


# ----------------------------------------------------------------------------------
# 10. output a person can trust


def test_no_cuda_notice_unless_gpu_was_passed_and_no_demo_defaults_for_norm_test(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    parse_config(['--dataset', 'demo'])
    out = capsys.readouterr().out
    assert 'CUDA' not in out and 'Demo defaults' in out
    parse_config(['--dataset', 'demo', '--gpu', '0'])
    assert '--gpu 0 is ignored' in capsys.readouterr().out
    read_settings(['--dataset', 'demo', '--action-type', 'norm-test', '--checkpoint', R18, '-cb', '4'])
    assert 'Demo defaults' not in capsys.readouterr().out


def test_counts_read_as_english_and_every_bench_flag_says_what_it_does():
    import bench
    from utils.progress import count
    assert count(1, 'image') == '1 image' and count(0, 'image') == '0 images' and count(2, 'frame') == '2 frames'
    assert [a.option_strings for a in bench.build_parser()._actions if not a.help] == []
    from config import build_parser
    (bs,) = [a for a in build_parser()._actions if '-bs' in a.option_strings]
    assert 'predict' in bs.help and 'calibration' in bs.help


# ----------------------------------------------------------------------------------
# 11. the runner's slots really run at once


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
