"""The norm-test pipeline (encoder + every decoder + the published map assembly), in images/s: the
authors'-style loop (256 fibers per decoder call, each result moved to the host, as their test loop
does) against all fibers per call through the FrEIA modules and the fused scorer (the default), plus
the opt-in fast modes (TF32 on CUDA, bf16 encoder, torch.compile), the encoder alone, each path's
maps against the authors'-style ones, peak GPU memory and the checkpoint size."""
import os
import tempfile

import numpy as np
import torch

from benchmarks.models import build_model
from benchmarks.rows import Row
from benchmarks.timing import interleaved, speed_rows
from custom_models.checkpoint import save_checkpoint
from custom_models.fibers import score_feature_map_loop
from custom_models.flows import CONDITION_VEC
from custom_models.scoring import ScoreOptions, make_scorers
from utils.anomaly_map import anomaly_maps

BASELINE = 'authors 256-fiber loop'


def pipeline_paths(a, decoders) -> dict:
    """name -> (function of the taps returning per-layer log p, autocast dtype, tf32). Ours are built by
    ``custom_models.scoring.make_scorers``: the code norm-test runs."""
    def scorers(scorer, compile_=False):
        built = make_scorers(ScoreOptions(device=a.device, scorer=scorer, compile=compile_), decoders)
        return lambda taps: [score(e) for score, e in zip(built, taps)]

    def authors(taps):
        return [score_feature_map_loop(d, e, CONDITION_VEC) for d, e in zip(decoders, taps)]

    fused = scorers('fused')
    paths = {BASELINE: (authors, None, False),
             'ours: FrEIA, all fibers': (scorers('freia'), None, False),
             'ours: fused (default)': (fused, None, False)}
    if a.device.startswith('cuda'):
        paths['fast: fused + TF32'] = (fused, None, True)
    paths['fast: fused + bf16 encoder'] = (fused, torch.bfloat16, False)
    if a.compile:
        paths['fast: fused + compile'] = (scorers('fused', compile_=True), None, False)
    return paths


def path_runner(a, encoder, fn, inputs, autocast_dtype, tf32):
    """A function that runs the whole pipeline over ``inputs`` and returns (log p, maps) per batch."""
    def one(x):
        with torch.autocast(a.device.split(':')[0], dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            taps = encoder(x)
        log_probs = fn([t.float() for t in taps])
        return log_probs, anomaly_maps(log_probs, (a.input_size, a.input_size))

    def run():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        with torch.inference_mode():
            results = [one(x) for x in inputs]
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        return results
    return run


def accuracy_and_memory(a, runners: dict):
    """(notes, data, the baseline's results): each path's largest relative difference from the baseline's
    log p and maps, and its peak GPU memory, from one pass outside the timing."""
    notes, data, baseline = {}, {}, None
    for name, runner in runners.items():
        if a.device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
        results = runner()
        data[name] = {'peak_mb': torch.cuda.max_memory_allocated() / 2 ** 20} if a.device.startswith('cuda') else {}
        memory = f', peak {data[name]["peak_mb"]:.0f} MB' if data[name] else ''
        if baseline is None:
            baseline, notes[name] = results, 'baseline' + memory
            continue
        log_p = max(((lp - ref).abs().max() / ref.abs().max()).item()
                    for (lps, _), (refs, _) in zip(results, baseline) for lp, ref in zip(lps, refs))
        maps = max(float(np.abs(m - ref).max() / np.abs(ref).max()) for (_, m), (_, ref) in zip(results, baseline))
        data[name].update(log_p_diff=log_p, map_diff=maps)
        notes[name] = f'max rel. diff: log p {log_p:.1e}, map {maps:.1e}' + memory
    return notes, data, baseline


def run(a):
    encoder, decoders = build_model(a.enc_arch, a.pool_layers, a.coupling_blocks, a.device)
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(a.batch_size, 3, a.input_size, a.input_size, generator=generator).to(a.device)
              for _ in range(a.batches)]
    if a.device.startswith('cuda'):
        inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]

    def encoder_only():
        with torch.inference_mode():
            for x in inputs:
                encoder(x)
    runners = {name: path_runner(a, encoder, fn, inputs, dtype, tf32)
               for name, (fn, dtype, tf32) in pipeline_paths(a, decoders).items()}
    notes, data, baseline = accuracy_and_memory(a, runners)
    seconds = interleaved({'encoder only': encoder_only, **runners}, a.rounds, a.device)
    rows = speed_rows(seconds, a.batches * a.batch_size, BASELINE, notes, data)
    # Random weights can drive deep layers' log p to 1e10 and more, where float32 round-off
    # of any path (FrEIA's too) shows in 'log p'; the maps, which are normalised, do not.
    magnitude = max(lp.abs().max().item() for lps, _ in baseline for lp in lps)
    rows.append(Row('max |log p| (baseline)', magnitude, notes='differences above are relative to it'))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'checkpoint.pt')
        save_checkpoint(path, encoder, decoders)
        rows.append(Row('checkpoint size', os.path.getsize(path) / 2 ** 20, 'MB', notes="authors' format"))
    return rows
