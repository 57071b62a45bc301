"""Per-epoch metrics, their maxima (the paper's protocol) and the result files.

* ``results/{model}_{date}.txt``: the published one-line format,
  ``DET,SEG,PRO \\t\\tfor DET_AUROC/SEG_AUROC/SEG_AUPRO at epoch e1/e2/e3 for {class}``;
* ``results/{model}_{date}.json``: every setting, the seed, each epoch's metrics, the
  maxima with their epochs and the last epoch's values.
"""
import json
import math
import os
from typing import Dict, List, Optional

METRIC_NAMES = ('DET_AUROC', 'SEG_AUROC', 'SEG_AUPRO')


class ScoreObserver:
    """Tracks one metric (in %) over meta epochs: the last value and the max with its epoch."""

    def __init__(self, name: str):
        self.name = name
        self.max_epoch = 0
        self.max_score = 0.0
        self.last: Optional[float] = None

    def update(self, score: float, epoch: int) -> bool:
        """Record ``score``; True when it is a new max (the published rule: epoch 0 always is)."""
        self.last = score
        improved = epoch == 0 or score > self.max_score
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
    det, seg, pro = (observers[name] for name in METRIC_NAMES)
    return (f'{det.max_score:.2f},{seg.max_score:.2f},{pro.max_score:.2f} \t\tfor '
            f'{det.name}/{seg.name}/{pro.name} at epoch {det.max_epoch:d}/{seg.max_epoch:d}/{pro.max_epoch:d} '
            f'for {class_name}\n')


def write_results(c, observers: Dict[str, ScoreObserver], history: List[dict], checkpoints: List[str]) -> Dict[str, str]:
    """Write the text and JSON result files; return their paths."""
    os.makedirs(c.results_dir, exist_ok=True)
    stem = os.path.join(c.results_dir, f'{c.model}_{c.run_date}')
    with open(stem + '.txt', 'w') as f:
        f.write(summary_line(observers, c.class_name))
    report = {
        'model': c.model,
        'date': c.run_date,
        'seed': c.seed,
        'settings': {k: v for k, v in sorted(vars(c).items())},
        'epochs': history,
        'max': {name: {'value': o.max_score, 'epoch': o.max_epoch} for name, o in observers.items()},
        'last': {name: o.last for name, o in observers.items()},
        'checkpoints': checkpoints,
    }
    with open(stem + '.json', 'w') as f:
        json.dump(_json_safe(report), f, indent=1)
    return {'text': stem + '.txt', 'json': stem + '.json'}
