"""Per-epoch metrics, their maxima (the paper's protocol) and the result files.

* ``results/{model}_{date}.txt``: the published one-line format,
  ``DET,SEG,PRO \\t\\tfor DET_AUROC/SEG_AUROC/SEG_AUPRO at epoch e1/e2/e3 for {class}``;
* ``results/{model}_{date}.json``: every setting, the seed, each epoch's metrics, the
  maxima with their epochs and the last epoch's values.
"""
import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from utils.atomic import atomic_write_text, create_exclusive

METRIC_NAMES = ('DET_AUROC', 'SEG_AUROC', 'SEG_AUPRO')
# Every setting that changes a number: a results file stands for a run only if all of them match.
SIGNATURE = ('action_type', 'dataset', 'data_path', 'class_name', 'run_name', 'seed', 'enc_arch', 'dec_arch',
             'pool_layers', 'coupling_blocks', 'input_size', 'meta_epochs', 'sub_epochs', 'batch_size', 'lr',
             'encoder_weights', 'pro', 'checkpoint', 'adam', 'tf32', 'bf16', 'model_type', 'transforms',
             'test_transforms', 'fixed_rotations', 'flow_width')
PATH_SETTINGS = ('data_path', 'checkpoint', 'encoder_weights')
# files from before the flag existed
LEGACY_VALUES = {'adam': 'published', 'tf32': False, 'bf16': False, 'model_type': 'cflow', 'transforms': 4,
                 'test_transforms': 64, 'fixed_rotations': False, 'flow_width': 2048}
FLAG_OF = {'action_type': '--action-type', 'dataset': '--dataset', 'data_path': '--data-path',
           'class_name': '--class-name', 'run_name': '-run', 'seed': '--seed', 'enc_arch': '-enc',
           'dec_arch': '-dec', 'pool_layers': '-pl', 'coupling_blocks': '-cb', 'input_size': '-inp',
           'meta_epochs': '--meta-epochs', 'sub_epochs': '--sub-epochs', 'batch_size': '-bs', 'lr': '--lr',
           'encoder_weights': '--encoder-weights', 'pro': '--pro', 'checkpoint': '--checkpoint', 'adam': '--adam',
           'tf32': '--tf32', 'bf16': '--bf16', 'model_type': '--model', 'transforms': '--transforms',
           'test_transforms': '--test-transforms', 'fixed_rotations': '--fixed-rotations', 'flow_width': '--flow-width'}


def run_signature(settings: dict) -> dict:
    """The settings of ``SIGNATURE`` (paths made absolute; legacy defaults for missing keys)."""
    signature = {key: settings.get(key, LEGACY_VALUES.get(key)) for key in SIGNATURE}
    for key in PATH_SETTINGS:
        value = signature[key]
        if isinstance(value, str) and value not in ('', 'none'):
            signature[key] = os.path.abspath(value)
    return signature


def signature_differences(expected: dict, found: dict) -> List[str]:
    """'FLAG found X (expected Y)' for every setting that differs."""
    return [f'{FLAG_OF[key]} {found.get(key)!r} (expected {expected[key]!r})'
            for key in SIGNATURE if found.get(key) != expected[key]]


class ScoreObserver:
    """Tracks one metric (in %) over meta epochs: the last value and the max with its epoch."""

    def __init__(self, name: str):
        self.name = name
        self.max_epoch = 0
        self.max_score = 0.0
        self.last: Optional[float] = None

    def update(self, score: float, epoch: int) -> bool:
        """Record ``score``; True when it is a new max (the published rule: epoch 0 always is).

        A NaN (an undefined AUPRO, say) is recorded as the last value but never becomes the max.
        """
        self.last = score
        improved = not math.isnan(score) and (epoch == 0 or math.isnan(self.max_score) or score > self.max_score)
        if epoch == 0 and not improved:
            self.max_score = float('nan')  # nothing valid yet: a later finite value takes the max
        if improved:
            self.max_score, self.max_epoch = score, epoch
        print(f'{self.name}: \t last: {score:.2f} \t max: {self.max_score:.2f} \t epoch_max: {self.max_epoch:d}')
        return improved


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def summary_line(observers: Dict[str, ScoreObserver], class_name: str) -> str:
    """The published results line; a model that has no such metric (DifferNet: no map metrics) shows '-'."""
    shown = [observers.get(name) for name in METRIC_NAMES]
    values = ','.join(f'{o.max_score:.2f}' if o else '-' for o in shown)
    epochs = '/'.join(f'{o.max_epoch:d}' if o else '-' for o in shown)
    return f'{values} \t\tfor {"/".join(METRIC_NAMES)} at epoch {epochs} for {class_name}\n'


def model_name(dataset: str, enc: str, dec: str, pool_layers: int, coupling_blocks: int, input_size: int,
               run: int, class_name: str) -> str:
    """The published run name: ``{dataset}_{enc}_{dec}_pl{pl}_cb{cb}_inp{inp}_run{run}_{class}``."""
    return f'{dataset}_{enc}_{dec}_pl{pool_layers}_cb{coupling_blocks}_inp{input_size}_run{run}_{class_name}'


@dataclass(frozen=True)
class RunFiles:
    """Where one run's files go: its date (the published name's, made unique) picks them all."""
    results_dir: str
    weights_dir: str
    model: str
    date: str
    viz_dir: str

    @property
    def stem(self) -> str:
        return os.path.join(self.results_dir, f'{self.model}_{self.date}')

    def checkpoint(self, suffix: str = '') -> str:
        return os.path.join(self.weights_dir, f'{self.model}_{self.date}{suffix}.pt')


def reserve_run(output_dir: str, model: str, run_date: str) -> RunFiles:
    """Claim ``output_dir/results/{model}_{date}.json`` for this run and return where its files go
    (``results/``, ``weights/``, ``viz/`` under ``output_dir``).

    Two runs started in the same second with the same settings would share a name; the
    second gets ``{date}-2`` (then -3, ...), and its checkpoints and figures follow it.
    """
    for k in itertools.count(1):
        date = run_date if k == 1 else f'{run_date}-{k}'
        run = RunFiles(os.path.join(output_dir, 'results'), os.path.join(output_dir, 'weights'), model, date,
                       os.path.join(output_dir, 'viz', f'{model}_{date}'))
        placeholder = json.dumps({'model': model, 'date': date, 'status': 'starting', 'complete': False})
        if create_exclusive(run.stem + '.json', placeholder):
            return run


def write_results(settings: dict, run: RunFiles, observers: Dict[str, ScoreObserver], history: List[dict],
                  checkpoints: List[str], status: str = 'complete', extra: Optional[dict] = None) -> Dict[str, str]:
    """Write the text and JSON result files (atomically); return their paths. ``settings``: every setting
    of the run (recorded whole; ``model``, ``seed`` and ``class_name`` name it).

    Called after every meta epoch with ``status='running'`` and at the end with
    ``'complete'`` (or ``'interrupted'`` / ``'failed'``): only a complete file has
    ``"complete": true``, which is what the reproduce runner trusts, and only a complete run
    gets the published ``.txt`` line (the authors' collection script takes every one it finds).
    """
    stem = run.stem
    files = {'json': stem + '.json'}
    # the authors' collection script reads every .txt: finished runs with metrics only
    if history and status == 'complete' and any(o.last is not None for o in observers.values()):
        atomic_write_text(stem + '.txt', summary_line(observers, settings['class_name']))
        files['text'] = stem + '.txt'
    report = {
        'model': settings['model'],
        'date': run.date,
        'seed': settings['seed'],
        'status': status,
        'complete': status == 'complete',
        'settings': dict(sorted(settings.items())),
        'epochs': history,
        # a metric that was never computed (AUPRO without --pro) is missing (null), not 0
        'max': {name: {'value': o.max_score if o.last is not None else None, 'epoch': o.max_epoch}
                for name, o in observers.items()},
        'last': {name: o.last for name, o in observers.items()},
        'checkpoints': checkpoints,
        **(extra or {}),
    }
    atomic_write_text(stem + '.json', json.dumps(_json_safe(report), indent=1))
    return files


def read_results(path: str) -> Optional[dict]:
    """A results JSON, or None when it is missing, truncated or not one of ours."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and 'model' in report else None
