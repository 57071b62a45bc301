"""A reproduction report: our runs against the paper's numbers, per class and on average.

For each class and metric (detection AUROC, localization AUROC, AUPRO, in %):

    ours (max)  = mean ± std over runs of each run's max over meta epochs (the paper's protocol)
    ours (last) = mean ± std over runs of each run's last epoch
    diff        = ours (max) mean - published

std is the sample standard deviation (ddof = 1; blank with one run). The average row is
the mean over classes of the class means; its std is that of the per-run class averages
over the runs every class has. Only results marked ``complete`` count.

Writes ``report.md``, ``report.csv`` and ``report_diff.png`` (per-class differences).
"""
import csv
import glob
import io
import math
import os
from typing import Callable, Dict, List, Optional

import numpy as np

from utils.atomic import atomic_write, atomic_write_text
from utils.results import METRIC_NAMES, read_results

AVERAGE = 'average'
# MVTec AD 2's own metrics, one value per run (the calibrated model's evaluation: results JSON 'benchmark')
BENCHMARK_PREFIX = 'MVTec AD 2 '
BENCHMARK_ROWS = tuple(BENCHMARK_PREFIX + m for m in ('SEG_AUPRO@0.05', 'SEG_AUPRO@0.3', 'DET_AUROC', 'SEG_F1'))


def complete_reports(results_dir: str):
    """Every results JSON in ``results_dir`` marked complete."""
    for path in sorted(glob.glob(os.path.join(glob.escape(results_dir), '*.json'))):
        report = read_results(path)
        if report is not None and report.get('complete'):
            yield report


def collect_runs(results_dir: str, match: Callable[[dict], Optional[tuple]]) -> Dict[tuple, dict]:
    """{(class, run): report} of the newest complete result of each run that ``match`` accepts.

    ``match(report)`` returns the (class, run) of a results JSON of the wanted runs, else None.
    """
    found = {}
    for report in complete_reports(results_dir):
        key = match(report)
        if key is not None and (key not in found or report['date'] > found[key]['date']):
            found[key] = report
    return found


def _mean_std(values: List[float]):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float('nan'), float('nan'), 0
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float('nan')
    return float(np.mean(values)), std, len(values)


def metric_value(report: dict, metric: str, kind: str) -> Optional[float]:
    """A run's max ('max') or last-epoch ('last') value of a metric; None where the run never computed it
    (AUPRO without --pro: older files wrote its max as 0)."""
    last = report.get('last', {}).get(metric)
    if last is None:
        return None
    return last if kind == 'last' else report['max'][metric]['value']


def benchmark_value(report: dict, metric: str, kind: str) -> Optional[float]:
    """A run's value of one of MVTec AD 2's metrics (``BENCHMARK_ROWS``): one per run, so max = last."""
    return (report.get('benchmark') or {}).get(metric[len(BENCHMARK_PREFIX):])


def summarise(runs: Dict[tuple, dict], classes: List[str], published: Dict[str, Dict[str, float]],
              metrics=METRIC_NAMES, metric_value=metric_value) -> List[dict]:
    """One row per (class or average, metric) with ours (max/last, mean/std), published and diff.

    A run without a metric is left out of that metric's rows (``missing`` counts them), never
    counted as 0; the average is over the classes that have the metric. ``metric_value``: how a run's
    value is read (the per-epoch metrics; ``benchmark_value`` for MVTec AD 2's own)."""
    rows = []
    for metric in metrics:
        per_class_runs = {cls: {run: r for (c, run), r in runs.items() if c == cls} for cls in classes}
        have = {cls: {run: r for run, r in per_class.items() if metric_value(r, metric, 'last') is not None}
                for cls, per_class in per_class_runs.items()}
        if not any(have.values()):
            continue  # this metric was not computed at all (no --pro)
        class_means = {}
        for cls in classes:
            reports = list(have[cls].values())
            best = _mean_std([metric_value(r, metric, 'max') for r in reports])
            last = _mean_std([metric_value(r, metric, 'last') for r in reports])
            if reports:
                class_means[cls] = (best[0], last[0])
            row = _row(cls, metric, best, last, published.get(metric, {}).get(cls))
            rows.append({**row, 'missing': len(per_class_runs[cls]) - len(reports)})
        counted = list(class_means)
        common = set.intersection(*(set(have[c]) for c in counted)) if counted else set()
        per_run_avg_best = [np.mean([metric_value(have[c][r], metric, 'max') for c in counted]) for r in common]
        per_run_avg_last = [np.mean([metric_value(have[c][r], metric, 'last') for c in counted]) for r in common]
        best_mean = float(np.mean([m[0] for m in class_means.values()])) if class_means else float('nan')
        last_mean = float(np.mean([m[1] for m in class_means.values()])) if class_means else float('nan')
        best_std = _mean_std(per_run_avg_best)[1]
        last_std = _mean_std(per_run_avg_last)[1]
        row = _row(AVERAGE, metric, (best_mean, best_std, len(common)), (last_mean, last_std, len(common)),
                   published_average(published.get(metric, {}), counted))
        rows.append({**row, 'missing': sum(len(per_class_runs[c]) - len(have[c]) for c in classes),
                     'classes': len(counted)})
    return rows


def missing_notes(rows: List[dict], n_classes: int) -> List[str]:
    """One line per metric that some runs lack, saying what the average covers."""
    notes = []
    for r in rows:
        if r['class'] == AVERAGE and (r.get('missing') or r.get('classes', n_classes) < n_classes):
            notes.append(f"{r['metric']}: missing in {r['missing']} run(s) (not computed, e.g. run without --pro); "
                         f"shown as absent, not 0; the average is over the {r['classes']} of {n_classes} classes "
                         f"that have it")
    return notes


def published_average(table: Dict[str, float], classes: List[str]) -> Optional[float]:
    """The paper's average when every class of its table ran; else the mean of its values for the
    classes that ran (so a subset is compared like with like); None where it has no per-class values."""
    per_class = [c for c in table if c != AVERAGE]
    if set(per_class) <= set(classes) and AVERAGE in table:
        return table[AVERAGE]
    if classes and all(c in table for c in classes):
        return float(np.mean([table[c] for c in classes]))
    return None


def _row(name, metric, best, last, published: Optional[float]) -> dict:
    return {'class': name, 'metric': metric, 'runs': best[2], 'max_mean': best[0], 'max_std': best[1],
            'last_mean': last[0], 'last_std': last[1], 'published': published,
            'diff_max': best[0] - published if published is not None else None,
            'diff_last': last[0] - published if published is not None else None}


def _fmt(value, digits=2, signed=False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ''
    return f'{value:+.{digits}f}' if signed else f'{value:.{digits}f}'


def _pm(mean, std) -> str:
    return _fmt(mean) + (f' ± {_fmt(std)}' if _fmt(std) else '')


def write_report(out_dir: str, title: str, rows: List[dict], notes: List[str]) -> Dict[str, str]:
    """report.md, report.csv and report_diff.png in ``out_dir``; returns their paths."""
    paths = {k: os.path.join(out_dir, f) for k, f in (('md', 'report.md'), ('csv', 'report.csv'),
                                                       ('png', 'report_diff.png'))}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ['class'])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths['csv'], buffer.getvalue())

    lines = [f'# {title}', ''] + [f'- {n}' for n in notes] + ['']
    for metric in dict.fromkeys(r['metric'] for r in rows):
        metric_rows = [r for r in rows if r['metric'] == metric]
        if not metric_rows:
            continue
        lines += [f'## {metric} (%)', '', '| class | runs | ours, max over epochs | ours, last epoch | published | '
                  'diff (max) | diff (last) |', '|---|---|---|---|---|---|---|']
        for r in metric_rows:
            name = f"**{r['class']}**" if r['class'] == AVERAGE else r['class']
            lines.append(f"| {name} | {r['runs']} | {_pm(r['max_mean'], r['max_std'])} | "
                         f"{_pm(r['last_mean'], r['last_std'])} | {_fmt(r['published'])} | "
                         f"{_fmt(r['diff_max'], signed=True)} | {_fmt(r['diff_last'], signed=True)} |")
        lines.append('')
    atomic_write_text(paths['md'], '\n'.join(lines))
    warning = next((n for n in notes if n.startswith('**not the published setting**')), None)
    atomic_write(paths['png'], lambda tmp: _plot_differences(rows, title, tmp, warning))
    return paths


def _plot_differences(rows: List[dict], title: str, path: str, warning: Optional[str] = None) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    metrics = [m for m in METRIC_NAMES if any(r['metric'] == m and r['diff_max'] is not None for r in rows)]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(5 * max(len(metrics), 1), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = [r for r in rows if r['metric'] == metric and r['diff_max'] is not None]
        names = [r['class'] for r in data]
        diffs = [r['diff_max'] for r in data]
        errors = [0 if math.isnan(r['max_std']) else r['max_std'] for r in data]
        colours = ['tab:green' if d >= 0 else 'tab:red' for d in diffs]
        ax.barh(names, diffs, xerr=errors, color=colours, alpha=0.8)
        ax.axvline(0, color='black', linewidth=0.8)
        ax.invert_yaxis()
        ax.set_title(f'{metric}: ours (max) - published')
        ax.set_xlabel('points (%)')
    if not metrics:
        axes[0][0].text(0.5, 0.5, 'no published numbers for these classes', ha='center', va='center')
        axes[0][0].axis('off')
    if warning:  # the figure travels without report.md: it carries the warning itself
        title += '\n' + warning.replace('**', '')
    fig.suptitle(title, fontsize=9 if warning else None, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format='png')
    plt.close(fig)
