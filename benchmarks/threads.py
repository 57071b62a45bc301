"""The demo's training sub-epoch (resnet18, 128 px, 64 images, -bs 32, -cb 8) on an idle CPU and beside one
busy process (a Python busy loop), with the default thread policy (utils/threads.py) and with torch's fixed
default thread count; paths interleaved within each condition."""
import contextlib
import io
import subprocess
import sys
import time

import numpy as np
import torch

from benchmarks.rows import Row
from benchmarks.timing import interleaved
from benchmarks.training import UnitScaleTaps
from custom_models.encoders import build_encoder
from custom_models.flows import build_decoders
from custom_models.training import TrainOptions, train_meta_epoch
from utils.threads import ThreadPolicy


def run(a):
    torch.manual_seed(0)
    np.random.seed(0)
    encoder = UnitScaleTaps(build_encoder('resnet18', 3, 'none')).eval()
    decoders = build_decoders('freia-cflow', encoder.encoder.pool_dims, 8)
    loader = [(torch.randn(32, 3, 128, 128), None, None) for _ in range(2)]
    optimizer = torch.optim.Adam([p for d in decoders for p in d.parameters()], lr=2e-4)
    options = TrainOptions(sub_epochs=1, device='cpu')
    default_threads = torch.get_num_threads()

    def sub_epoch(requested):
        def one():
            policy = ThreadPolicy(requested)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    train_meta_epoch(options, 5, loader, encoder, decoders, optimizer, threads=policy)
            finally:
                policy.restore()
        return one
    paths = {'thread policy (default)': sub_epoch(None), f'fixed {default_threads} threads': sub_epoch(default_threads)}
    idle = interleaved(paths, a.train_rounds, 'cpu')
    busy_process = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(1.0)
        busy = interleaved(paths, a.train_rounds, 'cpu')
    finally:
        busy_process.kill()
        busy_process.wait()
    rows = []
    for name in paths:
        rows.append(Row(f'demo sub-epoch, {name}, idle', float(np.median(idle[name])), 's'))
        rows.append(Row(f'demo sub-epoch, {name}, beside a busy process', float(np.median(busy[name])), 's',
                        ratio=float(np.median(busy[name]) / np.median(idle[name])), notes='of its idle time'))
    return rows
