"""With ``--checkpoint`` (trained by the README's demo command): each scoring mode's effect on the demo's
metrics (norm-test's results file), as differences to fp32."""
import glob
import json
import os
import tempfile

from benchmarks.commands import command
from benchmarks.rows import Row


def run(a):
    modes = {'fp32 fused (default)': [], 'fp32 FrEIA modules': ['--scorer', 'freia'], 'bf16 encoder': ['--bf16']}
    if a.device.startswith('cuda'):
        modes['TF32'] = ['--tf32']
        modes['TF32 + bf16 encoder'] = ['--tf32', '--bf16']
    if a.compile:
        modes['compile'] = ['--compile']
    rows, reference = [], None
    for name, flags in modes.items():
        out = tempfile.mkdtemp()
        command(['--dataset', 'demo', '--action-type', 'norm-test', '--checkpoint', a.checkpoint, '--pro',
                 '-enc', a.enc_arch, '-inp', str(a.input_size), '-cb', str(a.coupling_blocks), '-pl',
                 str(a.pool_layers), '--workers', '2', '--output-dir', out] +
                (['--no-cuda'] if a.device == 'cpu' else []) + flags)()
        (result,) = glob.glob(os.path.join(out, 'results', '*.json'))
        metrics = {k: v for k, v in json.load(open(result))['last'].items() if v is not None}
        if reference is None:
            reference = metrics
            rows.append(Row(f'demo metrics, {name}', notes=', '.join(f'{k} {v:.2f}' for k, v in metrics.items()),
                            data=metrics))
        else:
            change = {k: metrics[k] - reference[k] for k in metrics}
            rows.append(Row(f'demo metrics, {name}', notes=', '.join(f'{k} {v:+.3f} pt' for k, v in change.items()),
                            data=change))
    return rows
