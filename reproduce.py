"""Reproduce a table of the paper in one command: every class x run of a preset, resumable.

    python reproduce.py --preset wrn50-final                      # table B: 15 classes x 4 runs, MVTec AD
    python reproduce.py --preset r18-cb8-pl3-256 --classes bottle,cable --runs 2
    python reproduce.py --preset mnv3-released --checkpoints DIR  # norm-test of downloaded checkpoints
    python reproduce.py --preset wrn50-final --cluster slurm --partition gpu   # one SLURM job per run
    python reproduce.py --report OUT --preset wrn50-final         # report.md/.csv/.png from OUT/results

Each run is ``main.py`` with the preset's flags plus ``--class-name`` and ``-run`` (the
seed follows ``-run``), writing the usual result files under ``--output-dir``. A run whose
results JSON is marked complete is skipped; an interrupted, failed or truncated one is
run again. Runs go one per visible GPU at a time (or in turn on the CPU), each logging to
``OUT/logs/{model}.log``; with ``--cluster slurm`` they are submitted through submitit.
The report compares with the published numbers in ``utils/published.json``.
"""
import argparse
import glob
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from custom_datasets.mvtec import MVTEC_CLASS_NAMES
from utils.errors import CflowError, user_message
from utils.progress import hms

REPO = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.join(REPO, 'main.py')


@dataclass
class Job:
    class_name: str
    run: int
    model: str
    argv: List[str]  # main.py's flags
    signature: Optional[dict] = None  # the settings its results must record (utils.results.SIGNATURE)


def expected_signature(argv: List[str]) -> dict:
    """The settings main.py will record for ``argv``: derived by main.py's own code, so its
    defaults (the seed from -run, the demo's sizes, the data folder) count too."""
    import contextlib
    import io
    from actions import read_settings
    from utils.results import run_signature
    with contextlib.redirect_stdout(io.StringIO()):
        c = read_settings(argv + ['--no-cuda'])
    return run_signature(vars(c))


def parse_args(argv=None) -> argparse.Namespace:
    from utils.presets import PRESETS
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--preset', required=True, metavar='NAME', help=f'one of: {", ".join(PRESETS)}')
    p.add_argument('--classes', default=None, metavar='A,B,...',
                   help='classes to run (default: every class of --dataset: the 15 of MVTec AD, the 12 objects of '
                        'VisA, the 8 of MVTec AD 2)')
    p.add_argument('--runs', default=4, type=int, metavar='N', help='runs per class, -run 0..N-1 (default: 4)')
    p.add_argument('--dataset', default='mvtec', metavar='NAME',
                   help='mvtec (default), visa, mvtec_ad2, or demo: seeded stand-ins named after the MVTec classes, '
                        'to try the runner offline')
    p.add_argument('--data-path', default=None, metavar='DIR', help="main.py's --data-path")
    p.add_argument('--output-dir', default='reproduce', metavar='DIR',
                   help='results/, weights/, logs/ and the report go here (default: ./reproduce)')
    p.add_argument('--checkpoints', default=None, metavar='DIR', help='mnv3-released: folder of the .pt files')
    p.add_argument('--report', default=None, metavar='DIR',
                   help='only write the report from DIR/results (or DIR itself if it holds the JSON files)')
    # Overrides: the run is then no longer the published configuration (the report says so).
    p.add_argument('-inp', '--input-size', default=None, type=int, metavar='PX', help='override every class\'s -inp')
    p.add_argument('--meta-epochs', default=None, type=int, metavar='N', help='override (published: 25)')
    p.add_argument('--sub-epochs', default=None, type=int, metavar='N', help='override (published: 8)')
    p.add_argument('-bs', '--batch-size', default=None, type=int, metavar='N', help='override (published: 32)')
    p.add_argument('--encoder-weights', default=None, metavar='PATH', help="main.py's --encoder-weights")
    p.add_argument('--workers', default=None, type=int, metavar='N', help="main.py's --workers")
    # Where the runs go.
    p.add_argument('--gpus', default=None, metavar='0,1,...',
                   help='GPUs to use, one run each at a time (default: every visible one; none: the CPU)')
    p.add_argument('--no-cuda', action='store_true', help='run on the CPU')
    p.add_argument('--cluster', default=None, choices=('slurm', 'local'),
                   help='submit one job per run through submitit (local: its local executor, for testing)')
    p.add_argument('--partition', default=None, help='SLURM partition')
    p.add_argument('--timeout-min', default=24 * 60, type=int, help='SLURM time limit per run, minutes')
    p.add_argument('--cpus-per-task', default=8, type=int, help='SLURM CPUs per run (loader workers)')
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------
# Planning


def overrides(a) -> List[str]:
    flags = []
    for flag, value in (('--meta-epochs', a.meta_epochs), ('--sub-epochs', a.sub_epochs), ('-bs', a.batch_size),
                        ('--encoder-weights', a.encoder_weights), ('--workers', a.workers)):
        if value is not None:
            flags += [flag, str(value)]
    return flags


def plan_jobs(a, preset) -> List[Job]:
    """Every (class, run) of the preset, with main.py's flags and the settings its results must show."""
    jobs = plan_argv(a, preset)
    for job in jobs:
        job.signature = expected_signature(job.argv)
    return jobs


def plan_argv(a, preset) -> List[Job]:
    common = ['--dataset', a.dataset, '--output-dir', a.output_dir] + overrides(a)
    if a.data_path:
        common += ['--data-path', a.data_path]
    if preset.action == 'norm-test':
        return plan_checkpoint_jobs(a, preset, common)
    classes = [c for c in (a.classes or ','.join(dataset_classes(a.dataset))).split(',') if c]
    return [Job(c, r, preset.model(a.dataset, c, r, a.input_size), preset.flags(c, r, a.input_size) + common)
            for c in classes for r in range(a.runs)]


def plan_checkpoint_jobs(a, preset, common: List[str]) -> List[Job]:
    """norm-test of each checkpoint in --checkpoints, its settings read from its authors'-style name."""
    from utils.results import model_name
    from utils.presets import settings_from_checkpoint_name
    if not a.checkpoints or not os.path.isdir(a.checkpoints):
        raise CflowError(f'--preset {preset.name} needs --checkpoints DIR, the folder of the downloaded .pt files')
    jobs = []
    for path in sorted(glob.glob(os.path.join(a.checkpoints, '*.pt'))):
        s = settings_from_checkpoint_name(path, MVTEC_CLASS_NAMES)
        if s is None:
            raise CflowError(f'cannot read the settings from the name of {path}: expected the authors\' '
                             f'{{dataset}}_{{enc}}_{{dec}}_pl{{pl}}_cb{{cb}}_inp{{inp}}_run{{run}}_{{class}}....pt')
        model = model_name(a.dataset, s['enc'], s['dec'], s['pl'], s['cb'], s['inp'], s['run'], s['class_name'])
        argv = ['-enc', s['enc'], '-dec', s['dec'], '-pl', str(s['pl']), '-cb', str(s['cb']), '-inp', str(s['inp']),
                '-run', str(s['run']), '--class-name', s['class_name'], '--action-type', 'norm-test',
                '--checkpoint', path] + (['--pro'] if preset.pro else []) + common
        jobs.append(Job(s['class_name'], s['run'], model, argv))
    if not jobs:
        raise CflowError(f'no .pt files in {a.checkpoints}')
    return jobs


def is_complete(results_dir: str, job: Job) -> bool:
    """Whether a complete results JSON of this run has every setting of ``job.signature`` (a run of
    the same name with another schedule, data or encoder does not count)."""
    from utils.results import read_results, run_signature
    for path in glob.glob(os.path.join(glob.escape(results_dir), f'{glob.escape(job.model)}_*.json')):
        report = read_results(path)
        if (report is not None and report.get('model') == job.model and report.get('complete')
                and run_signature(report.get('settings', {})) == job.signature):
            return True
    return False


# ----------------------------------------------------------------------------------
# Running


class Progress:
    """Runs done / total, what is running, elapsed time and an estimate of the rest."""

    def __init__(self, total: int):
        self.total, self.done, self.failed = total, 0, []
        self.start = time.time()

    def line(self, event: str) -> str:
        elapsed = time.time() - self.start
        left = self.total - self.done
        eta = f' | about {hms(elapsed / self.done * left)} left' if self.done and left else ''
        return f'[{self.done}/{self.total} runs] {event} | elapsed {hms(elapsed)}{eta}'

    def report(self, event: str) -> None:
        print(self.line(event), flush=True)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the runner dies, so no orphan keeps writing (Linux)."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def device_slots(a) -> List[List[str]]:
    """main.py's device flags, one entry per run that may go at once."""
    import torch
    if a.no_cuda or a.gpus == 'none' or not torch.cuda.is_available():
        return [['--no-cuda']]
    gpus = a.gpus.split(',') if a.gpus else [str(i) for i in range(torch.cuda.device_count())]
    return [['--gpu', g] for g in gpus]


def run_local(jobs: List[Job], slots: List[List[str]], log_dir: str, progress: Progress,
              poll: float = 0.5) -> None:
    """Each job as ``python main.py ...`` on a free slot; logs in ``log_dir``."""
    os.makedirs(log_dir, exist_ok=True)
    pending, running = list(jobs), {}
    try:
        while pending or running:
            for i, slot in enumerate(slots):
                if i not in running and pending:
                    job = pending.pop(0)
                    log = open(os.path.join(log_dir, f'{job.model}.log'), 'w')
                    proc = subprocess.Popen([sys.executable, MAIN] + job.argv + slot, stdout=log,
                                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                            start_new_session=True)  # Ctrl-C reaches them through us only
                    running[i] = (job, proc, log)
                    where = ' '.join(slot).replace('--no-cuda', 'cpu').replace('--gpu ', 'gpu ')
                    progress.report(f'started {job.class_name} run {job.run} ({where})')
            time.sleep(poll)
            for i, (job, proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[i]
                progress.done += 1
                if proc.returncode == 0:
                    progress.report(f'finished {job.class_name} run {job.run}')
                else:
                    progress.failed.append(job)
                    progress.report(f'FAILED {job.class_name} run {job.run}: {last_error(log.name)} (log: {log.name})')
    except KeyboardInterrupt:
        for job, proc, log in running.values():
            proc.send_signal(signal.SIGINT)  # each run marks its results interrupted
        for job, proc, log in running.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        raise


def last_error(log_path: str) -> str:
    """The last 'error: ...' line of a run's log (or its last line)."""
    try:
        lines = [line.strip() for line in open(log_path, errors='replace') if line.strip()]
    except OSError:
        return 'no log'
    errors = [line for line in lines if line.startswith('error:')]
    return (errors or lines or ['no output'])[-1]


def run_main_in_job(argv: List[str]) -> int:
    """What a submitit job runs: main.py's code path in the job's process."""
    from main import main
    rc = main(argv)
    if rc != 0:
        raise RuntimeError(f'main.py exited with {rc} for {" ".join(argv)}')
    return rc


def run_submitit(a, jobs: List[Job], progress: Progress) -> None:
    """One submitit job per run (SLURM, or submitit's local executor for testing)."""
    try:
        import submitit
    except ImportError:
        raise CflowError('--cluster needs submitit: pip install submitit') from None
    os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')]))
    executor = submitit.AutoExecutor(folder=os.path.join(a.output_dir, 'submitit', '%j'), cluster=a.cluster)
    executor.update_parameters(timeout_min=a.timeout_min, gpus_per_node=1 if a.cluster == 'slurm' else 0,
                               cpus_per_task=a.cpus_per_task, name='cflow')
    if a.partition:
        executor.update_parameters(slurm_partition=a.partition)
    device = ['--gpu', '0'] if a.cluster == 'slurm' else ['--no-cuda']  # a SLURM job sees its GPU as 0
    submitted = {}
    for job in jobs:
        submitted[executor.submit(run_main_in_job, job.argv + device)] = job
        progress.report(f'submitted {job.class_name} run {job.run}')
    for handle in submitit.helpers.as_completed(list(submitted)):
        job = submitted[handle]
        progress.done += 1
        try:
            handle.result()
            progress.report(f'finished {job.class_name} run {job.run} (job {handle.job_id})')
        except Exception as exc:  # submitit re-raises the job's error with its traceback text
            progress.failed.append(job)
            progress.report(f'FAILED {job.class_name} run {job.run} (job {handle.job_id}): '
                            f'{user_message(exc)[:300]}; see {a.output_dir}/submitit/{handle.job_id}/')


# ----------------------------------------------------------------------------------
# Report


def dataset_classes(dataset: str) -> tuple:
    """Every class of a dataset the runner runs by default."""
    from custom_datasets.mvtec_ad2 import MVTEC_AD2_CLASS_NAMES
    from custom_datasets.visa import VISA_CLASS_NAMES
    return {'visa': VISA_CLASS_NAMES, 'mvtec_ad2': MVTEC_AD2_CLASS_NAMES}.get(dataset, MVTEC_CLASS_NAMES)


NO_PUBLISHED_ROW = {'visa': 'VisA', 'mvtec_ad2': 'MVTec AD 2'}  # the paper reports MVTec AD and STC only


def report_matcher(a, preset, jobs: Optional[List[Job]]) -> Callable[[dict], Optional[tuple]]:
    """(class, run) of a results JSON whose recorded settings are those of that job, else None.
    ``jobs`` None: the released-checkpoint preset without --checkpoints (any norm-test of the dataset)."""
    from utils.results import run_signature
    expected = {(job.class_name, job.run): job.signature for job in jobs or []}

    def match(report: dict) -> Optional[tuple]:
        s = report.get('settings', {})
        key = (s.get('class_name'), s.get('run_name'))
        if jobs is None:
            return key if s.get('action_type') == 'norm-test' and s.get('dataset') == a.dataset else None
        return key if key in expected and run_signature(s) == expected[key] else None
    return match


def explain_no_match(results_dir: str, jobs: List[Job]) -> str:
    """What complete results there are for the preset's classes and runs, and which settings differ."""
    from collections import Counter
    from utils.report import complete_reports
    from utils.results import run_signature, signature_differences
    expected = {(job.class_name, job.run): job.signature for job in jobs}
    differing, others = Counter(), 0
    for report in complete_reports(results_dir):
        s = report.get('settings', {})
        key = (s.get('class_name'), s.get('run_name'))
        if key in expected:
            differing.update(signature_differences(expected[key], run_signature(s)))
        else:
            others += 1
    if differing:
        found = sum(1 for _ in complete_reports(results_dir)) - others
        return (f'found {found} complete run(s) of these classes and runs with other settings: '
                + '; '.join(f'{d} in {n}' for d, n in differing.most_common(6)))
    return f'found {others} complete run(s), none of these classes and runs' if others else 'found no complete runs'


def not_published_notes(runs: Dict[tuple, dict], preset) -> List[str]:
    """Why these runs are not the published setting, from the settings they recorded."""
    reasons = set()
    for (class_name, _), report in runs.items():
        s = report.get('settings', {})
        source = s.get('encoder_source', s.get('encoder_weights'))
        if source == 'none':
            reasons.add('random-init encoder')
        elif source not in (None, 'imagenet', 'checkpoint'):
            reasons.add(f'encoder weights from {source}')
        if s.get('dataset') != 'mvtec':
            reasons.add('stand-in data (--dataset demo)' if s.get('dataset') == 'demo' else f'dataset {s.get("dataset")}')
        if s.get('action_type') == 'norm-train':
            for key, published in (('meta_epochs', 25), ('sub_epochs', 8), ('batch_size', 32), ('lr', 2e-4)):
                if s.get(key) != published:
                    reasons.add(f'{key.replace("_", "-")} {s.get(key)} (published {published})')
            if class_name in MVTEC_CLASS_NAMES and s.get('input_size') != preset.input_for(class_name):
                reasons.add(f'-inp {s.get("input_size")} for {class_name} (published {preset.input_for(class_name)})')
    if not reasons:
        return []
    return [f'**not the published setting** ({"; ".join(sorted(reasons))}): the differences are not a '
            f'reproduction verdict']


def write_preset_report(a, preset, results_dir: str, out_dir: str, jobs: Optional[List[Job]] = None) -> Dict[str, str]:
    from utils.presets import published_numbers
    from utils.report import BENCHMARK_ROWS, benchmark_value, collect_runs, missing_notes, summarise, write_report
    if jobs is None and not (preset.action == 'norm-test' and not a.checkpoints):
        jobs = plan_jobs(a, preset)
    runs = collect_runs(results_dir, report_matcher(a, preset, jobs))
    if not runs:
        found = explain_no_match(results_dir, jobs) if jobs else 'found none'
        raise CflowError(f'no complete results of --preset {preset.name} (dataset {a.dataset}) in {results_dir} '
                         f'match its settings: {found}; pass the same flags as the runs (or rerun them)')
    classes = sorted({c for c, _ in runs}, key=lambda c: (c not in MVTEC_CLASS_NAMES, MVTEC_CLASS_NAMES.index(c)
                                                          if c in MVTEC_CLASS_NAMES else 0, c))
    unpublished = NO_PUBLISHED_ROW.get(a.dataset)
    rows = summarise(runs, classes, {} if unpublished else published_numbers(preset.name))
    if a.dataset == 'mvtec_ad2':  # the benchmark's own metrics, recorded by each run after calibration
        rows += summarise(runs, classes, {}, BENCHMARK_ROWS, benchmark_value)
    notes = [f'preset `{preset.name}`: {preset.description}',
             f'{len(runs)} complete runs over {len(classes)} classes, dataset `{a.dataset}`; std = sample std over runs',
             'runs are matched on every setting that changes a number (utils/results.py SIGNATURE), not on the name',
             'published: CFLOW-AD, WACV 2022 (utils/published.json); diff = ours (max over epochs) - published']
    changed = overrides(a)[:] + (['-inp', str(a.input_size)] if a.input_size else [])
    if unpublished:
        notes.append(f'no published CFLOW-AD numbers exist for {unpublished} (the paper reports MVTec AD and STC): '
                     f'the published and diff columns stay empty, none is invented')
    if a.dataset == 'mvtec_ad2':
        notes.append('MVTec AD 2 rows: its evaluation on test_public (each image\'s own resolution, float16 maps, '
                     'SegF1 at the stored thresholds chosen on validation/good) of each run\'s calibrated model; the '
                     'other rows are the published per-epoch metrics at the model\'s resolution')
    notes += missing_notes(rows, len(classes))
    recorded = not_published_notes(runs, preset)
    if changed and not recorded:
        recorded = [f'**not the published setting** ({" ".join(changed)}): the differences are not a reproduction '
                    f'verdict']
    return write_report(out_dir, f'CFLOW-AD reproduction: {preset.name}', rows, notes + recorded)


# ----------------------------------------------------------------------------------


def absolute_paths(a) -> None:
    """Folders as absolute paths: runs and cluster jobs may start in another working directory."""
    from config import DEFAULT_DATA_PATHS
    a.output_dir = os.path.abspath(a.output_dir)
    if a.data_path is None and a.dataset in DEFAULT_DATA_PATHS:
        a.data_path = DEFAULT_DATA_PATHS[a.dataset]
    for name in ('data_path', 'checkpoints', 'report'):
        if getattr(a, name):
            setattr(a, name, os.path.abspath(getattr(a, name)))


def main(argv=None) -> int:
    try:
        a = parse_args(argv)
        absolute_paths(a)
        from utils.presets import get_preset
        preset = get_preset(a.preset)
        if a.report:
            results_dir = os.path.join(a.report, 'results') if os.path.isdir(os.path.join(a.report, 'results')) \
                else a.report
            files = write_preset_report(a, preset, results_dir, a.report)
            print(f'Report: {files["md"]}, {files["csv"]}, {files["png"]}')
            return 0
        return reproduce(a, preset)
    except CflowError as exc:
        print(f'error: {user_message(exc)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: finished runs are kept; run the same command again to go on', file=sys.stderr)
        return 130


def reproduce(a, preset) -> int:
    jobs = plan_jobs(a, preset)
    results_dir = os.path.join(a.output_dir, 'results')
    todo = [job for job in jobs if not is_complete(results_dir, job)]
    print(f'{preset.name}: {len(jobs)} runs, {len(jobs) - len(todo)} already complete, {len(todo)} to do')
    if a.dataset == 'demo':  # generate each stand-in class once, before runs share it
        from custom_datasets.synthetic import make_demo_class
        for class_name in sorted({job.class_name for job in todo}):
            make_demo_class(a.data_path, class_name)
    if todo:
        if a.cluster:
            progress = Progress(len(todo))
            run_submitit(a, todo, progress)
        else:
            slots = device_slots(a)
            progress = Progress(len(todo))
            run_local(todo, slots, os.path.join(a.output_dir, 'logs'), progress)
        if progress.failed:
            print(f'{len(progress.failed)} of {len(todo)} runs failed; run the same command again to retry them')
    if any(is_complete(results_dir, job) for job in jobs):
        files = write_preset_report(a, preset, results_dir, a.output_dir, jobs)
        print(f'Report: {files["md"]}, {files["csv"]}, {files["png"]}')
    return 1 if todo and progress.failed else 0


if __name__ == '__main__':
    sys.exit(main())
