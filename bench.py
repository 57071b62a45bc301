"""Speed benchmark: the published (authors'-style) paths against ours, in one run, on the same inputs.

    python bench.py                                   # WRN50, 256x256, batch 32, GPU if there is one
    python bench.py -enc resnet18 -bs 8 --device cpu  # a CPU-sized run

Every timed section warms each path up, then runs all its paths once per round, in an
order rotated every round (so no path always runs first, or right after a given other),
over ``--rounds`` rounds. It reports per path the median speed and its spread (min - max
over rounds), and the median (min - max) of the per-round paired ratio to the baseline.

Measures, each as a ratio to its baseline measured in the same run:

* the test pipeline (encoder + every decoder + anomaly-map assembly) in images/s:
  authors'-style (256 fibers per decoder call, each result moved to the host, as their
  test loop does) vs all fibers per call through the FrEIA modules vs the fused scorer
  (default), plus the opt-in fast modes (TF32 on CUDA, bf16 encoder, torch.compile);
  each path's maps are compared with the authors'-style ones;
* the encoder alone;
* AUPRO: the definition written out (1000 thresholds) vs ours, on the same maps; they
  must agree to 1e-6;
* the data loader from image files (decode + resize + normalise), by worker count;
* peak GPU memory per path (CUDA), and the checkpoint size;
* with ``--checkpoint`` (trained by the README's demo command): each fast mode's effect
  on the demo's detection/localization AUROC and AUPRO;
* predict (``--action-type predict``) on a folder of image files: the deployable model in
  PyTorch, under onnxruntime and under OpenVINO against the encoder alone, at each
  ``--predict-batch``, and the whole predict command (loading with worker processes, scoring,
  writing maps and masks) on each runtime.

Weights are random (seeded): speed does not depend on them, and no download is needed.
"""
import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from custom_datasets.common import LabelledImages, list_images
from custom_datasets.synthetic import make_demo_class
from custom_models.encoders import ENCODER_ARCHS, build_encoder
from custom_models.fibers import score_feature_map_loop
from custom_models.flows import CONDITION_VEC, build_decoders
from custom_models.scoring import ScoreOptions, make_scorers
from utils.anomaly_map import anomaly_maps
from custom_models.checkpoint import save_checkpoint
from utils.metrics import aupro, aupro_direct


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('-enc', '--enc-arch', default='wide_resnet50_2', choices=ENCODER_ARCHS,
                   help='encoder of the test-pipeline and predict sections (default: wide_resnet50_2)')
    p.add_argument('-inp', '--input-size', default=256, type=int, help='image side in pixels (default: 256)')
    p.add_argument('-bs', '--batch-size', default=32, type=int, help='test-pipeline images per batch (default: 32)')
    p.add_argument('-cb', '--coupling-blocks', default=8, type=int, help='coupling blocks per flow (default: 8)')
    p.add_argument('-pl', '--pool-layers', default=3, type=int, help='encoder taps, each with a flow (default: 3)')
    p.add_argument('--batches', default=3, type=int, help='batches per path and round')
    p.add_argument('--rounds', default=5, type=int, help='timed rounds (paths interleaved, order rotated)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                   help='cpu or cuda[:N] (default: cuda where there is one)')
    p.add_argument('--compile', action='store_true', help='also time torch.compile of the fused scorer')
    p.add_argument('--pro-maps', default=500, type=int, help='AUPRO: number of maps')
    p.add_argument('--pro-size', default=256, type=int, help='AUPRO: map side')
    p.add_argument('--pro-direct-maps', default=None, type=int,
                   help='AUPRO: maps for the direct definition (default: all; it is the slow one)')
    p.add_argument('--loader-images', default=64, type=int, help='loader: image files to read')
    p.add_argument('--loader-image-size', default=1024, type=int, help='loader: side of the PNG files')
    p.add_argument('--workers', default=','.join(str(w) for w in (0, 2, 4) if w <= (os.cpu_count() or 1)),
                   help='loader: worker counts to try (default: 0, 2, 4, up to the cores)')
    p.add_argument('--checkpoint', default='',
                   help='a checkpoint trained on the demo class (README demo command, same -enc/-inp/-cb/-pl): '
                        'also report each fast mode\'s effect on the demo metrics')
    p.add_argument('--predict-images', default=48, type=int, help='predict: image files in the folder')
    p.add_argument('--predict-image-size', default=512, type=int, help='predict: side of the PNG files')
    p.add_argument('--predict-batch', default='1,8', help='predict: images per model call, comma-separated (the '
                   'whole command runs at the first) (default: 1,8)')
    p.add_argument('--train-encoders', default='resnet18,mobilenet_v3_large,wide_resnet50_2',
                   help='training: encoders to time, comma-separated')
    p.add_argument('--train-batch', default=8, type=int,
                   help='training: images per timed batch (steps and encoder time both scale with it, so the '
                        'ratio does not depend on it)')
    p.add_argument('--train-rounds', default=3, type=int, help='training: timed rounds per encoder')
    p.add_argument('--compare-encoders', default='resnet18,vit_base_patch16_224,tf_efficientnet_b5',
                   help='encoders: names timed side by side (norm-test pipeline and predict model) at '
                        '--compare-size, comma-separated')
    p.add_argument('--compare-size', default=224, type=int,
                   help='encoders: input side (224: the one ViT-B/16 size every name here takes) (default: 224)')
    p.add_argument('--compare-images', default=4, type=int, help='encoders: images per path and round (default: 4)')
    p.add_argument('--stage-images', default=48, type=int, help='stages: image files per input size (default: 48)')
    p.add_argument('--stage-rounds', default=3, type=int, help='stages: interleaved rounds of the commands (default: 3)')
    p.add_argument('--stage-sizes', default='512,1024', help='stages: sides of the PNG inputs (default: 512,1024)')
    p.add_argument('--mask-seeds', default='101,102,103',
                   help='masks: data seeds of the demo-style classes (none of them is used by the tests)')
    p.add_argument('--quantize-scopes', default='encoder,flows,both',
                   help='predict: INT8 exports timed beside fp32 OpenVINO (comma-separated; empty: none)')
    p.add_argument('--quantize-seeds', default='0,201,202,203',
                   help='quantize: data seeds of the demo-style classes (0: the demo\'s; the others no test uses)')
    p.add_argument('--rows-json', default='', metavar='FILE',
                   help='also write the table as JSON rows [name, speed, ratio, notes] to FILE')
    p.add_argument('--skip', default='', help='comma-separated sections to skip: '
                   'pipeline,aupro,loader,predict,stages,encoders,sizes,train,threads,masks,quantize')
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def synchronize(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


class Timer:
    """Wall time of a block, with the device synchronised at both ends."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def interleaved(paths: dict, rounds: int, device: str) -> dict:
    """Seconds per round of each path: one warm-up call each, then ``rounds`` rounds with the
    order rotated by one every round."""
    names = list(paths)
    for name in names:
        paths[name]()  # warm-up: allocations, autotuning, compilation, caches
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with Timer(device) as t:
                paths[name]()
            seconds[name].append(t.seconds)
    return seconds


def speed_rows(seconds: dict, items: int, baseline: str, notes: dict = None) -> list:
    """(name, median img/s [min - max], median paired ratio to the baseline [min - max], notes)."""
    rows = []
    for name, times in seconds.items():
        speeds = [items / t for t in times]
        speed = f'{np.median(speeds):.1f} img/s [{min(speeds):.1f}-{max(speeds):.1f}]'
        if baseline is None or name == baseline:
            ratio = 'baseline' if name == baseline else ''
        else:
            ratios = [b / t for b, t in zip(seconds[baseline], times)]
            ratio = f'{np.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]'
        rows.append((name, speed, ratio, (notes or {}).get(name, '')))
    return rows


def build_model(enc_arch: str, pool_layers: int, coupling_blocks: int, device: str):
    """A seeded random-init encoder and flows (weights moved off their init) on ``device``."""
    torch.manual_seed(0)
    np.random.seed(0)
    encoder = build_encoder(enc_arch, pool_layers, 'none').to(device)
    decoders = build_decoders('freia-cflow', encoder.pool_dims, coupling_blocks)
    with torch.no_grad():  # move weights off their init, so no path benefits from special values
        for d in decoders:
            for p in d.parameters():
                p.add_(0.02 * torch.randn_like(p))
    decoders = [d.to(device).eval() for d in decoders]
    if device.startswith('cuda'):
        encoder = encoder.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return encoder, decoders


def pipeline_paths(a, encoder, decoders):
    """name -> (function of the taps returning per-layer log p, autocast dtype, tf32).

    Our paths are built by ``custom_models.scoring.make_scorers``: the code norm-test runs.
    """
    def scorers(scorer, compile_=False):
        built = make_scorers(ScoreOptions(device=a.device, scorer=scorer, compile=compile_), decoders)
        return lambda taps: [score(e) for score, e in zip(built, taps)]

    def authors(taps):
        return [score_feature_map_loop(d, e, CONDITION_VEC) for d, e in zip(decoders, taps)]

    fused = scorers('fused')
    paths = {'authors 256-fiber loop': (authors, None, False),
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


def bench_pipeline(a, rows):
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
               for name, (fn, dtype, tf32) in pipeline_paths(a, encoder, decoders).items()}
    baseline_name = next(iter(runners))
    # accuracy and memory: one pass of each path, outside the timing
    notes, baseline = {}, None
    for name, runner in runners.items():
        if a.device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
        results = runner()
        memory = f', peak {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MB' if a.device.startswith('cuda') else ''
        if baseline is None:
            baseline, notes[name] = results, 'baseline' + memory
            continue
        log_p = max(((lp - ref).abs().max() / ref.abs().max()).item()
                    for (lps, _), (refs, _) in zip(results, baseline) for lp, ref in zip(lps, refs))
        maps = max(np.abs(m - ref).max() / np.abs(ref).max() for (_, m), (_, ref) in zip(results, baseline))
        notes[name] = f'max rel. diff: log p {log_p:.1e}, map {maps:.1e}' + memory
    seconds = interleaved({'encoder only': encoder_only, **runners}, a.rounds, a.device)
    rows += speed_rows(seconds, a.batches * a.batch_size, baseline_name, notes)
    # Random weights can drive deep layers' log p to 1e10 and more, where float32 round-off
    # of any path (FrEIA's too) shows in 'log p'; the maps, which are normalised, do not.
    magnitude = max(lp.abs().max().item() for lps, _ in baseline for lp in lps)
    rows.append(('max |log p| (baseline)', f'{magnitude:.2g}', '', 'differences above are relative to it'))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'checkpoint.pt')
        save_checkpoint(path, encoder, decoders)
        rows.append(('checkpoint size', f'{os.path.getsize(path) / 2 ** 20:.1f} MB', '', 'authors\' format'))


def random_maps(n, size, seed=0):
    """Smooth random maps with blob-shaped defects inside some of them."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, size, size))
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(0, n, 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size, rng.uniform(0.02, 0.1) * size
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    maps += masks * rng.uniform(0.2, 0.8)
    return masks, maps


def bench_aupro(a, rows):
    masks, maps = random_maps(a.pro_maps, a.pro_size)
    with Timer('cpu') as fast:
        ours = aupro(masks, maps)
    n = a.pro_direct_maps or a.pro_maps
    if n != a.pro_maps:
        masks, maps = masks[:n], maps[:n]
        with Timer('cpu') as fast_same:
            ours = aupro(masks, maps)
        fast = fast_same
    with Timer('cpu') as direct:
        reference = aupro_direct(masks, maps)
    assert abs(ours - reference) <= 1e-6, (ours, reference)
    label = f'{n} maps {a.pro_size}x{a.pro_size}'
    rows.append((f'AUPRO direct definition, {label}', f'{direct.seconds:.2f} s', 'baseline', f'AUPRO {reference:.6f}'))
    rows.append((f'AUPRO ours, {label}', f'{fast.seconds:.2f} s', f'{direct.seconds / fast.seconds:.1f}x',
                 f'|diff| {abs(ours - reference):.1e}'))


def bench_loader(a, rows):
    with tempfile.TemporaryDirectory() as root:
        make_demo_class(root, 'bench', image_size=a.loader_image_size, n_train=a.loader_images,
                        n_test_good=1, n_test_defect=1)
        files = list_images(os.path.join(root, 'bench', 'train', 'good'))
        dataset = LabelledImages(files, [0] * len(files), [None] * len(files), a.input_size, train=False)
        for workers in [int(w) for w in a.workers.split(',')]:
            loader = torch.utils.data.DataLoader(dataset, batch_size=a.batch_size, num_workers=workers,
                                                 pin_memory=a.device.startswith('cuda'))
            with Timer('cpu') as t:
                for _ in loader:
                    pass
            rows.append((f'loader, {workers} workers ({a.loader_image_size}px PNG -> {a.input_size})',
                         f'{len(dataset) / t.seconds:.1f} img/s', '', ''))


def calibrated_model(arch, encoder, decoders, input_size, folder):
    """(AnomalyModel, settings, calibration): the deployable model, calibrated on 8 images of ``folder``."""
    from custom_models.anomaly_model import AnomalyModel
    from custom_datasets.inputs import ImageFiles
    from utils.images import IMAGENET_MEAN, IMAGENET_STD
    from custom_models.preprocessing import published_input
    from custom_models.scoring import calibration_of
    fed = published_input(arch, input_size, IMAGENET_MEAN, IMAGENET_STD)
    mean, std = fed.mean, fed.std
    calibration_files = ImageFiles(list_images(folder)[:8], input_size)
    images = torch.stack([calibration_files[i][0] for i in range(len(calibration_files))])
    settings = {'enc_arch': arch, 'dec_arch': 'freia-cflow', 'pool_layers': len(decoders),
                'coupling_blocks': len(decoders[0].module_list), 'input_size': input_size, 'norm_mean': list(mean),
                'norm_std': list(std)}
    model = AnomalyModel(encoder, decoders, input_size, mean, std, {'log_p_max': [0.0] * len(decoders),
                                                                    'sum_max': 0.0}).eval()
    with torch.inference_mode():
        calibration = calibration_of(model.log_probs(images), encoder, settings, 'bench')
    return AnomalyModel(encoder, decoders, input_size, mean, std, calibration).eval(), settings, calibration


def time_each(fn, items) -> float:
    """Seconds per item of ``fn`` over ``items`` (one warm-up call first)."""
    fn(items[0])
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items)


def bench_stages(a, rows):
    """Predict's throughput model (ResNet-style model of -enc, batch 1), for onnxruntime (the default
    runtime of an .onnx) and OpenVINO: per image the core-seconds of each stage measured alone, the
    model as the command runs it (``--streams``: images scored at once, one thread each), and the rate
    the stages allow on this machine's cores (cores / sum of core-seconds: every stage overlapped
    perfectly, none idle). Then, interleaved in rounds: the predict command with overlays and with
    --scores-only, the Python API on the same files, and the model alone one image at a time on
    every thread (the issue's baseline), each as a rate and as a ratio to that baseline."""
    from custom_datasets.inputs import ImageFiles
    from custom_models import load_model
    from utils.export_onnx import export_onnx
    from utils.pipeline import automatic_streams
    from utils.prediction_files import PredictionTable
    from utils.viz import decision_picture
    cores = os.cpu_count() or 1
    encoder, decoders = build_model(a.enc_arch, a.pool_layers, a.coupling_blocks, 'cpu')
    streams = automatic_streams(a.stage_images > 1)
    with tempfile.TemporaryDirectory() as root:
        make_demo_class(root, 'calibration', image_size=a.input_size, n_train=8, n_test_good=1, n_test_defect=1)
        model, _, _ = calibrated_model(a.enc_arch, encoder, decoders, a.input_size,
                                       os.path.join(root, 'calibration', 'train', 'good'))
        onnx_path, cache = os.path.join(root, 'model.onnx'), os.path.join(root, 'openvino-cache')
        export_onnx(model, onnx_path)
        runtimes = ('onnxruntime', 'OpenVINO')
        alone = {name: load_model(onnx_path, runtime=name.lower()) for name in runtimes}
        streamed = {name: load_model(onnx_path, runtime=name.lower(), streams=streams) for name in runtimes}
        t = alone['OpenVINO'].thresholds
        for side in [int(v) for v in a.stage_sizes.split(',')]:
            make_demo_class(root, f'stages{side}', image_size=side, n_train=a.stage_images, n_test_good=1,
                            n_test_defect=1)
            folder = os.path.join(root, f'stages{side}', 'train', 'good')
            paths = list_images(folder)
            files = ImageFiles(paths, a.input_size)
            items = [files[i] for i in range(len(files))]
            detector = alone['OpenVINO']
            scored = [(x, item, detector.score_images(x[None])) for x, item in items]
            results = [(item, detector.result(maps[0], scores[0], item[3])) for _, item, (maps, scores) in scored]
            pictures = [(item, r, decision_picture(item[2], r.model_map, r.mask, 2 * t.image, r.score, t.image,
                                                   r.thresholds['mask_threshold'], r.defective, 'thresholds: stored'))
                        for item, r in results]
            out = os.path.join(root, f'out{side}')
            os.makedirs(out)
            table = PredictionTable(os.path.join(out, 'table.csv'))
            row = {'source': 'x', 'frame': '', 'score': 1.0, 'decision': 'good', 'defect_pixels': 0,
                   'defect_fraction': 0.0, 'overlay': 'o', 'mask': 'm'}
            shared = stage_seconds(files, items, scored, detector, table, row, pictures, out, t)
            for name, (seconds, busy, _) in shared.items():
                rows.append((f'stage {side}px: {name}', f'{1000 * seconds:.2f} ms', '', f'{1000 * seconds:.2f} core-ms'))
            batches = [(x[None], None) for x, _ in items]
            limits = {}
            for runtime, detector in streamed.items():
                list(detector.score_batches(batches[:2 * streams]))  # warm-up: every stream's request
                start = time.perf_counter()
                for _ in detector.score_batches(batches):
                    pass
                model = (time.perf_counter() - start) / len(batches)  # wall per image, every core busy
                rows.append((f'stage {side}px: model ({runtime}, {streams} streams)', f'{1000 * model:.2f} ms', '',
                             f'{1000 * model * cores:.2f} core-ms ({cores} cores busy)'))
                for label, scores_only in (('overlays', False), ('--scores-only', True)):
                    core_seconds = model * cores + sum(sec * busy for sec, busy, both in shared.values()
                                                       if both or not scores_only)
                    limits[runtime, label] = cores / core_seconds
                    rows.append((f'limit {side}px, {runtime}, {label}', f'{limits[runtime, label]:.1f} img/s', '',
                                 f'{cores} cores / {1000 * core_seconds:.2f} core-ms per image'))
            command_rows(a, side, root, folder, paths, onnx_path, cache, alone, streamed, streams, batches,
                         limits, rows)


def stage_seconds(files, items, scored, detector, table, row, pictures, out, t) -> dict:
    """Per stage of predict other than the model: (seconds per image measured alone, cores it keeps busy,
    whether --scores-only runs it too)."""
    import pickle
    from utils.prediction_files import save_png
    from utils.viz import decision_picture
    from PIL import Image
    return {  # name -> (seconds per image, cores it keeps busy, also with --scores-only)
        'decode + resize + display copy': (time_each(lambda i: files[i], list(range(len(files)))), 1, True),
        'hand-over to the main process (pickle)': (
            time_each(lambda item: pickle.loads(pickle.dumps(item)), items), 1, True),
        'decision + full-size mask': (time_each(lambda s: detector.result(s[2][0][0], s[2][1][0], s[1][3]),
                                                scored), 1, True),
        'table row (appended, fsync)': (time_each(lambda _: table.append([row]), items), 1, True),
        'overlay composition': (time_each(lambda p: decision_picture(
            p[0][2], p[1].model_map, p[1].mask, 2 * t.image, p[1].score, t.image,
            p[1].thresholds['mask_threshold'], p[1].defective, 'thresholds: stored'), pictures), 1, False),
        'overlay PNG encode + write': (time_each(lambda p: save_png(os.path.join(out, 'o.png'), p[2]),
                                                 pictures), 1, False),
        'mask PNG encode + write': (time_each(lambda p: save_png(os.path.join(out, 'm.png'), Image.fromarray(
            (p[1].mask * 255).astype(np.uint8))), pictures), 1, False),
    }


def command_rows(a, side, root, folder, paths, onnx_path, cache, alone, streamed, streams, batches, limits, rows):
    """The stages section's interleaved rounds at one image size: the predict command (overlays, --scores-only),
    the Python API and the model alone, per runtime, as rates and ratios to the model alone."""
    import contextlib
    import io
    from main import main as run_main
    cores = os.cpu_count() or 1
    runtimes = tuple(alone)
    paths_timed, first = {}, {}
    for runtime in runtimes:
        paths_timed[f'{runtime}: model alone, one image on every thread'] = (
            lambda d=alone[runtime]: [d.score_images(x) for x, _ in batches])
        for label, extra in (('overlays', []), ('--scores-only', ['--scores-only'])):
            argv = ['--action-type', 'predict', '--checkpoint', onnx_path, '--runtime', runtime.lower(),
                    '--input', folder, '--no-cuda', '--workers', str(min(2, cores)), '-bs', '1',
                    '--output-dir', os.path.join(root, f'command{side}')] + extra + (
                ['--openvino-cache', cache] if runtime == 'OpenVINO' else [])

            def command(argv=argv):
                with contextlib.redirect_stdout(io.StringIO()):
                    if run_main(argv) != 0:
                        raise RuntimeError(f'predict failed: {argv}')
            paths_timed[f'{runtime}: predict command, {label}'] = command
        paths_timed[f'{runtime}: Python load_model(streams={streams}).predict(paths)'] = (
            lambda d=streamed[runtime]: d.predict(paths, batch_size=1))
    for name, fn in paths_timed.items():  # a command's first run: the cold start (OpenVINO's cache empty)
        if 'command' in name:
            with Timer('cpu') as cold:
                fn()
            first[name] = cold.seconds
    seconds = interleaved(paths_timed, a.stage_rounds, 'cpu')
    for runtime in runtimes:
        baseline = f'{runtime}: model alone, one image on every thread'
        for name, speed, ratio, notes in speed_rows({k: v for k, v in seconds.items() if k.startswith(runtime)},
                                                    len(paths), baseline):
            limit = limits.get((runtime, name.rsplit(', ', 1)[-1]))
            note = f'{len(paths)} PNG files {side}px, batch 1'
            if name in first:
                note += (f'; {np.median([len(paths) / s for s in seconds[name]]) / limit:.2f}x of the limit; '
                         f'first run (cold cache) {len(paths) / first[name]:.1f} img/s')
            rows.append((f'{side}px {name}', speed, ratio, note))


def bench_encoders(a, rows):
    """ResNet-18 beside the timm encoders, each at the size the published code feeds it (ResNet-18 at
    --compare-size, a timm encoder at timm's: custom_models.preprocessing), in one interleaved run: the
    norm-test pipeline (encoder, fused scorer, published maps) at batch --compare-images, and the predict
    model (calibrated, batch 1) under PyTorch and OpenVINO; ratios to ResNet-18's norm-test pipeline."""
    from utils.images import IMAGENET_MEAN, IMAGENET_STD
    from custom_models.preprocessing import published_input
    from utils.export_onnx import OpenVinoModel, export_onnx
    paths, notes, sizes = {}, {}, {}
    tmp = tempfile.mkdtemp()
    for arch in a.compare_encoders.split(','):
        size = sizes[arch] = published_input(arch, a.compare_size, IMAGENET_MEAN, IMAGENET_STD).size
        generator = torch.Generator().manual_seed(1)
        images = torch.rand(a.compare_images, 3, size, size, generator=generator)
        make_demo_class(tmp, f'encoders{size}', image_size=size, n_train=8, n_test_good=1, n_test_defect=1)
        folder = os.path.join(tmp, f'encoders{size}', 'train', 'good')
        encoder, decoders = build_model(arch, a.pool_layers, a.coupling_blocks, 'cpu')
        built = make_scorers(ScoreOptions(device='cpu'), decoders)

        def norm_test(encoder=encoder, built=built, images=images, size=size):
            with torch.inference_mode():
                taps = encoder((images - 0.45) / 0.225)
                anomaly_maps([score(e) for score, e in zip(built, taps)], (size, size))
        model, _, _ = calibrated_model(arch, encoder, decoders, size, folder)
        onnx_path = os.path.join(tmp, f'{arch}.onnx')
        export_onnx(model, onnx_path)
        openvino = OpenVinoModel(onnx_path)

        def predict(run, images=images):
            def one_by_one():
                with torch.inference_mode():
                    for x in images:
                        run(x[None])
            return one_by_one
        paths[f'{arch}: norm-test pipeline (batch {a.compare_images})'] = norm_test
        paths[f'{arch}: predict model, PyTorch (batch 1)'] = predict(model)
        paths[f'{arch}: predict model, OpenVINO (batch 1)'] = predict(openvino)
        with torch.inference_mode():
            reference = model(images[:1])[0].numpy()
        notes[f'{arch}: predict model, OpenVINO (batch 1)'] = \
            f'max diff vs PyTorch {np.abs(openvino(images[:1])[0] - reference).max() / np.ptp(reference):.1e} of the map range'
        notes[f'{arch}: norm-test pipeline (batch {a.compare_images})'] = \
            f'taps {", ".join("x".join(map(str, s)) for s in tap_shapes_of(encoder, size))}'
    seconds = interleaved(paths, a.rounds, 'cpu')
    baseline = next(iter(paths))
    rows += [(name, speed, ratio, '; '.join(filter(None, (f'fed {sizes[name.split(":")[0]]} px -pl {a.pool_layers} '
                                                          f'-cb {a.coupling_blocks}', notes.get(name)))))
             for name, speed, ratio, _ in speed_rows(seconds, a.compare_images, baseline)]
    shutil.rmtree(tmp, ignore_errors=True)


def tap_shapes_of(encoder, size):
    from custom_models.encoders import tap_shapes
    return tap_shapes(encoder.arch, encoder.pool_layers, size)


def bench_predict(a, rows):
    """Predict on a folder of image files: model-only paths interleaved, then the whole command."""
    from custom_datasets.inputs import ImageFiles
    from utils.export_onnx import OnnxModel, OpenVinoModel, export_onnx
    from custom_models.model_file import LoadedModel, write_model
    encoder, decoders = build_model(a.enc_arch, a.pool_layers, a.coupling_blocks, 'cpu')
    with tempfile.TemporaryDirectory() as root:
        make_demo_class(root, 'predict', image_size=a.predict_image_size, n_train=a.predict_images,
                        n_test_good=1, n_test_defect=1)
        folder = os.path.join(root, 'predict', 'train', 'good')
        # calibrated on images of the same kind, as a user would (noise would give extreme maps)
        model, settings, calibration = calibrated_model(a.enc_arch, encoder, decoders, a.input_size, folder)
        checkpoint, onnx_path = os.path.join(root, 'model.pt'), os.path.join(root, 'model.onnx')
        write_model(checkpoint, LoadedModel(encoder, decoders, settings, calibration))
        export_onnx(model, onnx_path)
        onnx_model = OnnxModel(onnx_path, spinning=False)  # its idle threads must not eat the others' cores
        openvino_model = OpenVinoModel(onnx_path)  # CPU plugin, fp32 precision hint
        scopes = [s for s in a.quantize_scopes.split(',') if s]
        int8_paths = int8_exports(onnx_path, folder, a.input_size, scopes, root, limit=16)
        int8 = {f'predict model, OpenVINO INT8 {scope}': OpenVinoModel(path) for scope, path in int8_paths.items()}

        def over_batches(fn, batches):
            def run():
                with torch.inference_mode():
                    for x in batches:
                        fn(x)
            return run
        for size in [int(b) for b in str(a.predict_batch).split(',')]:
            batches = [torch.rand(size, 3, a.input_size, a.input_size) for _ in range(max(8 // size, 2))]
            paths = {'encoder only (limit)': over_batches(lambda x: encoder((x - model.mean) / model.std), batches),
                     'predict model, PyTorch': over_batches(model, batches),
                     'predict model, onnxruntime': over_batches(onnx_model, batches),
                     'predict model, OpenVINO': over_batches(openvino_model, batches),
                     **{name: over_batches(model_, batches) for name, model_ in int8.items()}}
            seconds = interleaved(paths, a.rounds, 'cpu')
            with torch.inference_mode():
                reference = model(batches[0])[0].numpy()
            notes = {name: f'max diff vs PyTorch {np.abs(run(batches[0])[0] - reference).max() / np.ptp(reference):.1e} '
                           f'of the map range' for name, run in (('predict model, onnxruntime', onnx_model),
                                                                 ('predict model, OpenVINO', openvino_model))}
            ratios = [o / v for o, v in zip(seconds['predict model, onnxruntime'], seconds['predict model, OpenVINO'])]
            notes['predict model, OpenVINO'] += (f'; {np.median(ratios):.2f}x onnxruntime '
                                                 f'[{min(ratios):.2f}-{max(ratios):.2f}]')
            # INT8 maps against fp32 on a folder image: noise inputs give near-flat maps, no scale to compare with
            image = ImageFiles(list_images(folder)[:1], a.input_size, display=False)[0][0][None]
            fp32_maps = openvino_model(image)[0]
            for name, model_ in int8.items():  # the issue-24 ratio: INT8 against our fp32 OpenVINO path, paired
                ratios = [f / q for f, q in zip(seconds['predict model, OpenVINO'], seconds[name])]
                error = np.abs(model_(image)[0] - fp32_maps) / np.ptp(fp32_maps)
                notes[name] = (f'{np.median(ratios):.2f}x fp32 OpenVINO [{min(ratios):.2f}-{max(ratios):.2f}]; '
                               f'|diff| vs fp32 on a folder image: mean {error.mean():.1e}, max {error.max():.1e} '
                               f'of the map range')
            rows += [(f'{name} (batch {size})', speed, ratio, note) for name, speed, ratio, note in
                     speed_rows(seconds, len(batches) * size, 'encoder only (limit)', notes)]
        if int8:  # why INT8 is or is not faster here: OpenVINO's own op times, encoder against flows
            import onnx
            from utils.quantize import encoder_node_names
            nodes = encoder_node_names(onnx.load(onnx_path, load_external_data=False))
            for name, path in (('fp32', onnx_path), *((f'INT8 {scope}', p) for scope, p in int8_paths.items())):
                times = openvino_op_times(path, nodes, a.input_size)
                rows.append((f'OpenVINO op times, {name}',
                             f'{sum(t for t, _ in times.values()):.1f} ms', '',
                             '; '.join(f'{part} {t:.1f} ms ({kernel})' for part, (t, kernel) in times.items())))
        rows += predict_command_rows(a, root, folder, checkpoint, onnx_path)


def predict_command_rows(a, root, folder, checkpoint, onnx_path) -> list:
    """The whole predict command (decode + resize in worker processes, score, write overlays, masks and
    tables) per runtime, interleaved with the loader alone."""
    import contextlib
    import io
    from custom_datasets.inputs import ImageFiles, collate
    from main import main as run_main
    # the whole command: decode + resize in worker processes, score, write overlays, masks and tables
    workers = min(2, os.cpu_count() or 1)
    commands = {}
    command_batch = int(str(a.predict_batch).split(',')[0])
    for name, path, extra in (('predict command, PyTorch', checkpoint, []),
                              ('predict command, onnxruntime', onnx_path, []),
                              ('predict command, OpenVINO', onnx_path, ['--runtime', 'openvino']),
                              ('predict command, onnxruntime, --scores-only', onnx_path, ['--scores-only']),
                              ('predict command, OpenVINO, --scores-only', onnx_path,
                               ['--runtime', 'openvino', '--scores-only'])):
        argv = ['--action-type', 'predict', '--checkpoint', path, '--input', folder, '--no-cuda',
                '--workers', str(workers), '-bs', str(command_batch), '--output-dir',
                os.path.join(root, 'out')] + extra

        def command(argv=argv):
            with contextlib.redirect_stdout(io.StringIO()):
                if run_main(argv) != 0:
                    raise RuntimeError(f'predict failed: {argv}')
        commands[name] = command
    loader = torch.utils.data.DataLoader(ImageFiles(list_images(folder), a.input_size),
                                         batch_size=command_batch, num_workers=workers,
                                         collate_fn=collate)

    def load_only():
        for _ in loader:
            pass
    commands[f'loading only ({workers} workers)'] = load_only
    seconds = interleaved(commands, max(2, a.rounds // 2), 'cpu')
    return speed_rows(seconds, a.predict_images, None,
                       {k: f'{a.predict_images} PNG files {a.predict_image_size}px, batch {command_batch}'
                        for k in commands})


def bench_sizes(a, rows):
    """Model file sizes: the authors' checkpoint vs the compact file, with the encoder stored (fine-tuned
    or unknown) and without (the stock ImageNet network, recorded by checksum; simulated by putting
    this encoder into a temporary torch hub cache as "the ImageNet file")."""
    from custom_models.encoders import imagenet_cache_path
    from custom_models.model_file import LoadedModel, save_compact
    for arch in ('wide_resnet50_2', 'resnet18', 'mobilenet_v3_large'):
        torch.manual_seed(0)
        np.random.seed(0)
        encoder = build_encoder(arch, 3, 'none')
        decoders = build_decoders('freia-cflow', encoder.pool_dims, 8)
        model = LoadedModel(encoder, decoders, {'enc_arch': arch, 'dec_arch': 'freia-cflow', 'pool_layers': 3,
                                                'coupling_blocks': 8, 'input_size': 256}, None)
        with tempfile.TemporaryDirectory() as tmp:
            sizes = {}
            save_checkpoint(os.path.join(tmp, 'a.pt'), encoder, decoders)
            sizes['authors'] = os.path.getsize(os.path.join(tmp, 'a.pt'))
            save_compact(os.path.join(tmp, 'stored.safetensors'), model)
            sizes['stored'] = os.path.getsize(os.path.join(tmp, 'stored.safetensors'))
            old = os.environ.get('TORCH_HOME')
            os.environ['TORCH_HOME'] = os.path.join(tmp, 'hub')
            try:
                os.makedirs(os.path.dirname(imagenet_cache_path(arch)))
                torch.save(encoder.net.state_dict() if arch != 'mobilenet_v3_large' else
                           {f'features.{k}': v for k, v in encoder.net.state_dict().items()}, imagenet_cache_path(arch))
                save_compact(os.path.join(tmp, 'stock.safetensors'), model)
                sizes['stock'] = os.path.getsize(os.path.join(tmp, 'stock.safetensors'))
            finally:
                os.environ.pop('TORCH_HOME') if old is None else os.environ.__setitem__('TORCH_HOME', old)
        mb = {k: v / 2 ** 20 for k, v in sizes.items()}
        rows.append((f'model file, {arch} (-cb 8 -pl 3)', f'{mb["authors"]:.1f} MB', 'baseline', "authors' .pt"))
        rows.append(('  compact, encoder stored', f'{mb["stored"]:.1f} MB', f'{mb["stored"] / mb["authors"]:.2f}x', ''))
        rows.append(('  compact, stock ImageNet encoder', f'{mb["stock"]:.1f} MB', f'{mb["stock"] / mb["authors"]:.2f}x',
                     'encoder recorded by name + SHA-256'))


def bench_modes(a, rows):
    """Metrics of each scoring mode with a trained demo checkpoint, as differences to fp32."""
    import contextlib
    import glob
    import io
    import json
    from main import main as run_main
    modes = {'fp32 fused (default)': [], 'fp32 FrEIA modules': ['--scorer', 'freia'], 'bf16 encoder': ['--bf16']}
    if a.device.startswith('cuda'):
        modes['TF32'] = ['--tf32']
        modes['TF32 + bf16 encoder'] = ['--tf32', '--bf16']
    if a.compile:
        modes['compile'] = ['--compile']
    reference = None
    for name, flags in modes.items():
        out = tempfile.mkdtemp()
        argv = ['--dataset', 'demo', '--action-type', 'norm-test', '--checkpoint', a.checkpoint, '--pro',
                '-enc', a.enc_arch, '-inp', str(a.input_size), '-cb', str(a.coupling_blocks), '-pl',
                str(a.pool_layers), '--workers', '2', '--output-dir', out] + (['--no-cuda'] if a.device == 'cpu' else [])
        with contextlib.redirect_stdout(io.StringIO()):
            if run_main(argv + flags) != 0:
                raise RuntimeError(f'norm-test failed: {argv + flags}')
        (result,) = glob.glob(os.path.join(out, 'results', '*.json'))
        metrics = {k: v for k, v in json.load(open(result))['last'].items() if v is not None}
        if reference is None:
            reference = metrics
            rows.append((f'demo metrics, {name}', '', '', ', '.join(f'{k} {v:.2f}' for k, v in metrics.items())))
        else:
            rows.append((f'demo metrics, {name}', '', '',
                         ', '.join(f'{k} {metrics[k] - reference[k]:+.3f} pt' for k in metrics)))


# MVTec AD training images per class and the input size of its table-B command (tables.md, C).
MVTEC_TRAIN = {'bottle': (209, 512), 'cable': (224, 256), 'capsule': (219, 256), 'carpet': (280, 512),
               'grid': (264, 512), 'hazelnut': (391, 256), 'leather': (245, 512), 'metal_nut': (220, 256),
               'pill': (267, 256), 'screw': (320, 512), 'tile': (230, 512), 'toothbrush': (60, 512),
               'transistor': (213, 128), 'wood': (247, 512), 'zipper': (240, 512)}


def table_b_hours(seconds_per_image_at_256: float) -> float:
    """Training time of table B (15 classes x 4 runs x 25 x 8 sub-epochs, -bs 32, drop_last), from the
    time per training image at 256 px; fiber steps grow with the input area, so (inp / 256)^2."""
    images = sum((n // 32) * 32 * (inp / 256) ** 2 for n, inp in MVTEC_TRAIN.values())
    return 4 * 25 * 8 * images * seconds_per_image_at_256 / 3600


class UnitScaleTaps(torch.nn.Module):
    """The encoder's taps, each scaled to unit std: a random-init encoder's raw taps (std up to 35
    for WRN50) make the flows diverge (losses ~1e7), a regime ImageNet features never reach."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, images):
        return [t / t.std() for t in self.encoder(images)]


def bench_training(a, rows):
    """Seconds per training image batch (encoder + every fiber step of every decoder) of each
    --adam mode against the published loop (torch's default Adam kernel over all decoders at
    every step), interleaved; then, per mode, the largest relative difference of the final
    weights from the published loop's after two sub-epochs from the same start and seed."""
    import contextlib
    import copy
    import io
    from custom_models.training import TrainOptions, train_meta_epoch
    modes = {'published': 'published loop (default Adam kernel)', 'fused': '--adam fused (default)',
             'deferred': '--adam deferred'}
    for enc in a.train_encoders.split(','):
        torch.manual_seed(0)
        np.random.seed(0)
        raw = build_encoder(enc, a.pool_layers, 'none')
        encoder = UnitScaleTaps(raw).to(a.device).eval()
        start = build_decoders('freia-cflow', raw.pool_dims, a.coupling_blocks)
        loader = [(torch.randn(a.train_batch, 3, a.input_size, a.input_size), None, None)]

        def trainer(mode: str):
            decoders = [d.to(a.device) for d in copy.deepcopy(start)]
            optimizer = torch.optim.Adam([p for d in decoders for p in d.parameters()], lr=2e-4)
            options = TrainOptions(sub_epochs=1, device=a.device, adam=mode)

            def one_batch(epoch=5):  # past the warm-up: every decoder already holds a gradient
                with contextlib.redirect_stdout(io.StringIO()):
                    train_meta_epoch(options, epoch, loader, encoder, decoders, optimizer)
            return one_batch, decoders

        seconds = interleaved({name: trainer(mode)[0] for mode, name in modes.items()}, a.train_rounds, a.device)
        finals = {}
        for mode in modes:
            run_batch, decoders = trainer(mode)
            torch.manual_seed(0)
            run_batch(0)  # the warm-up epoch: per-step rates, decoders starting one after the other
            run_batch(1)
            finals[mode] = [p.detach().double() for d in decoders for p in d.parameters() if p.requires_grad]
        notes = {}
        for mode, name in modes.items():
            per_image = float(np.median(seconds[name])) / a.train_batch * (256 / a.input_size) ** 2
            notes[name] = f'table B ~{table_b_hours(per_image):.0f} h of training steps here'
            if mode != 'published':
                worst = max(((f - e).abs().max() / e.abs().max()).item()
                            for e, f in zip(finals['published'], finals[mode]))
                notes[name] += f'; final weights {worst:.1e} from the published loop\'s'
        for name, speed, ratio, note in speed_rows(seconds, a.train_batch, modes['published'], notes):
            rows.append((f'train {enc} {name}', speed, ratio, note))


def bench_threads(a, rows):
    """The demo's training sub-epoch (resnet18, 128 px, 64 images, -bs 32, -cb 8) on an idle CPU and
    beside one busy process (a Python busy loop), with the default thread policy (utils/threads.py)
    and with torch's fixed default thread count; paths interleaved within each condition."""
    import contextlib
    import io
    import subprocess
    import sys
    from custom_models.training import TrainOptions, train_meta_epoch
    from utils.threads import ThreadPolicy
    torch.manual_seed(0)
    np.random.seed(0)
    encoder = UnitScaleTaps(build_encoder('resnet18', 3, 'none')).eval()
    decoders = build_decoders('freia-cflow', encoder.encoder.pool_dims, 8)
    loader = [(torch.randn(32, 3, 128, 128), None, None) for _ in range(2)]
    optimizer = torch.optim.Adam([p for d in decoders for p in d.parameters()], lr=2e-4)
    options = TrainOptions(sub_epochs=1, device='cpu')
    default_threads = torch.get_num_threads()

    def sub_epoch(requested):
        def run():
            policy = ThreadPolicy(requested)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    train_meta_epoch(options, 5, loader, encoder, decoders, optimizer, threads=policy)
            finally:
                policy.restore()
        return run
    paths = {'thread policy (default)': sub_epoch(None), f'fixed {default_threads} threads': sub_epoch(default_threads)}
    idle = interleaved(paths, a.train_rounds, 'cpu')
    busy_process = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(1.0)
        busy = interleaved(paths, a.train_rounds, 'cpu')
    finally:
        busy_process.kill()
        busy_process.wait()
    for name in paths:
        ratio = float(np.median(busy[name]) / np.median(idle[name]))
        rows.append((f'demo sub-epoch, {name}, idle', f'{np.median(idle[name]):.2f} s', '', ''))
        rows.append((f'demo sub-epoch, {name}, beside a busy process', f'{np.median(busy[name]):.2f} s',
                     f'{ratio:.2f}x', 'of its idle time'))


def pixel_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    tp = int((predicted & truth).sum())
    fp, fn = int((predicted & ~truth).sum()), int((~predicted & truth).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def oracle_pixel_f1(maps: np.ndarray, truth: np.ndarray) -> float:
    """The best pixel F1 of one global threshold, chosen with the labels (an oracle)."""
    from sklearn.metrics import precision_recall_curve
    precision, recall, _ = precision_recall_curve(truth.ravel(), maps.ravel())
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)
    return float(f1.max())


def trained_demo_style_class(work: str, seed: int):
    """(class folder, calibration folder, checkpoint) of a demo-style class of data seed ``seed``: resnet18
    (random init) at 128 px, the demo's 4 x 4 epochs, 64 training images, calibrated on 32 other good
    images, 64 good and 32 defective test images."""
    import contextlib
    import io
    from custom_datasets.synthetic import make_demo_class
    from main import main as run_main
    class_dir = make_demo_class(work, 'textile', seed=seed, n_train=64, n_test_good=64, n_test_defect=32)
    calibration_dir = os.path.join(make_demo_class(os.path.join(work, 'calibration'), 'textile', seed=seed + 1000,
                                                   n_train=32, n_test_good=1, n_test_defect=1), 'train', 'good')
    argv = ['--dataset', 'folder', '--data-path', work, '--class-name', 'textile', '-enc', 'resnet18',
            '-inp', '128', '--meta-epochs', '4', '--sub-epochs', '4', '--encoder-weights', 'none', '--no-cuda',
            '--workers', '2', '--seed', '0', '--output-dir', os.path.join(work, 'out'),
            '--calibration-path', calibration_dir]
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(argv) == 0, f'training for seed {seed} failed'
    (checkpoint,) = os.listdir(os.path.join(work, 'out', 'weights'))
    return class_dir, calibration_dir, os.path.join(work, 'out', 'weights', checkpoint)


def labelled_test_set(class_dir: str, side: int):
    """(test image paths, side x side ground-truth masks, image labels) of a class folder."""
    from utils.images import read_mask, resize_mask
    paths, truth = [], []
    for folder in sorted(os.listdir(os.path.join(class_dir, 'test'))):
        for name in sorted(os.listdir(os.path.join(class_dir, 'test', folder))):
            paths.append(os.path.join(class_dir, 'test', folder, name))
            mask_path = os.path.join(class_dir, 'ground_truth', folder, name.replace('.png', '_mask.png'))
            truth.append(resize_mask(np.asarray(read_mask(mask_path)) > 0, (side, side))
                         if folder != 'good' else np.zeros((side, side), bool))
    return paths, np.stack(truth), np.array(['/good/' not in p for p in paths])


def centroid_offsets(masks: np.ndarray, truth: np.ndarray, chosen: np.ndarray, scale: float):
    """((mean dy, mean dx), mean distance, count) of the predicted masks' centroids from the true masks' over
    the ``chosen`` images with a non-empty mask, times ``scale`` (model pixels to image pixels)."""
    from scipy import ndimage
    offsets = np.array([np.subtract(ndimage.center_of_mass(masks[i]), ndimage.center_of_mass(truth[i]))
                        for i in np.flatnonzero(chosen) if masks[i].any()]) * scale
    return tuple(offsets.mean(axis=0)), float(np.hypot(*offsets.T).mean()), len(offsets)


def bench_masks(a, rows):
    """Calibrated masks against the best single pixel threshold chosen with the labels, on demo-style
    classes of unseen data seeds: resnet18 (random init) at 128 px, the demo's 4 x 4 epochs, 64 training
    images, calibrated on 32 other good images, 64 good and 32 defective test images. No label is used
    by the rule; the oracle uses them. Pixel F1 over every test pixel (a good decision: empty mask)."""
    from utils.calibration import decide_then_mask, decisions, mask_threshold
    from custom_models.model_file import read_model
    from custom_models.anomaly_model import AnomalyModel
    from utils.images import IMAGENET_MEAN, IMAGENET_STD, read_rgb, to_model_input
    results = []
    for seed in [int(s) for s in a.mask_seeds.split(',') if s]:
        work = tempfile.mkdtemp(prefix='bench_masks_')
        class_dir, _, checkpoint = trained_demo_style_class(work, seed)
        loaded = read_model(checkpoint, {'input_size': 128, 'norm_mean': IMAGENET_MEAN, 'norm_std': IMAGENET_STD})
        model = AnomalyModel(loaded.encoder, loaded.decoders, 128, IMAGENET_MEAN, IMAGENET_STD,
                             loaded.calibration).eval()
        paths, truth, labels = labelled_test_set(class_dir, 128)
        images = torch.stack([to_model_input(read_rgb(p), 128) for p in paths])
        with torch.inference_mode():
            maps, scores = (t.numpy() for t in model(images))
        calibration = loaded.calibration
        defective = decisions(scores, calibration)
        t_image = calibration['image_threshold']
        ours = np.stack([decide_then_mask(maps[i], scores[i], t_image, mask_threshold(scores[i], calibration))[1]
                         for i in range(len(paths))])
        stored = np.stack([decide_then_mask(maps[i], scores[i], t_image, calibration['pixel_threshold'])[1]
                           for i in range(len(paths))])
        oracle = oracle_pixel_f1(maps, truth)
        stretched = AnomalyModel(loaded.encoder, loaded.decoders, 128, IMAGENET_MEAN, IMAGENET_STD,
                                 {k: v for k, v in calibration.items() if k != 'cell_grids'}).eval()
        with torch.inference_mode():
            old_maps, old_scores = (t.numpy() for t in stretched(images))
        old_masks = [decide_then_mask(old_maps[i], old_scores[i], t_image, mask_threshold(old_scores[i], calibration))[1]
                     for i in range(len(paths))]
        scale = 192 / 128  # centroids in the images' own pixels (the demo-style images are 192 px)
        results.append({'seed': seed, 'ours': pixel_f1(ours, truth), 'stored t_P': pixel_f1(stored, truth),
                        'oracle': oracle, 'fpr': float(defective[~labels].mean()),
                        'recall': float(defective[labels].mean()),
                        'centroids': centroid_offsets(ours, truth, defective & labels, scale),
                        'stretched centroids': centroid_offsets(np.stack(old_masks), truth,
                                                                decisions(old_scores, calibration) & labels, scale)})
        shutil.rmtree(work, ignore_errors=True)
    for r in results:
        rows.append((f'masks, seed {r["seed"]}', f'F1 {r["ours"]:.3f}', f'{r["ours"] / r["oracle"]:.2f}x',
                     f'of the oracle\'s {r["oracle"]:.3f} (one global threshold, with labels); the stored t_P alone '
                     f'{r["stored t_P"]:.3f}; image FPR {100 * r["fpr"]:.1f} %, recall {100 * r["recall"]:.1f} %'))
        for name in ('centroids', 'stretched centroids'):
            (dy, dx), distance, n = r[name]
            rows.append((f'masks, seed {r["seed"]}, {name}', f'{distance:.2f} px', '',
                         f'mean centroid distance from the true defects over {n} defective images; mean offset '
                         f'dy {dy:+.2f}, dx {dx:+.2f} px (192-px images; '
                         + ('cells on their receptive fields)' if name == 'centroids' else
                            'the published stretch, same constants)')))
    if results:
        ratios = [r['ours'] / r['oracle'] for r in results]
        rows.append(('masks, over seeds', '', f'{np.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]',
                     'median [min-max] of our pixel F1 / the oracle\'s'))


def int8_exports(fp32_path: str, folder: str, input_size: int, scopes, root: str, limit: int = 300) -> dict:
    """scope -> path of that scope's INT8 export of ``fp32_path``, ranges and thresholds from the good images of
    ``folder`` (the export command's steps: ``export.export_quantized``, without the fp32 recalibration)."""
    from custom_datasets.inputs import ImageFiles
    from utils.export_onnx import onnx_metadata
    from utils.quantize import quantize_to_ir
    settings, calibration = onnx_metadata(fp32_path)
    files = ImageFiles(list_images(folder)[:limit], input_size, display=False)
    images = [files[i][0][None].numpy() for i in range(len(files))]
    paths = {}
    for scope in scopes:
        paths[scope] = os.path.join(root, f'int8_{scope}.xml')
        quantize_to_ir(fp32_path, images, scope, paths[scope], settings, calibration, folder, root)
    return paths


def openvino_op_times(path: str, encoder_nodes: set, input_size: int, repeats: int = 5) -> dict:
    """Where OpenVINO spends one batch-1 inference of ``path``: median milliseconds of the executed ops in the
    encoder and in the flows (OpenVINO's own per-op counters, ``PERF_COUNT``), and each part's costliest
    kernel (e.g. 'brgconv_avx2_f32' against 'jit_avx2_I8'), the reason an INT8 path is or is not faster."""
    import collections
    import openvino as ov
    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.inputs[0].get_any_name(): [1, 3, input_size, input_size]})
    request = core.compile_model(model, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32', 'PERFORMANCE_HINT': 'LATENCY',
                                                'PERF_COUNT': True}).create_infer_request()
    x = np.random.default_rng(0).random((1, 3, input_size, input_size), dtype=np.float32)
    request.infer(x)  # the first inference also primes caches
    totals, kernels = collections.defaultdict(list), collections.defaultdict(collections.Counter)
    for _ in range(repeats):
        request.infer(x)
        part_ms = collections.Counter()
        for op in request.profiling_info:
            if op.status == op.Status.EXECUTED:  # fused ops are NOT_RUN; their time is in the op they joined
                part = 'encoder' if op.node_name.split('/')[0] in encoder_nodes else 'flows'
                ms = op.real_time.total_seconds() * 1e3
                part_ms[part] += ms
                kernels[part][op.exec_type] += ms
        for part in ('encoder', 'flows'):
            totals[part].append(part_ms[part])
    return {part: (float(np.median(totals[part])), kernels[part].most_common(1)[0][0] if kernels[part] else '-')
            for part in ('encoder', 'flows')}


def bench_quantize(a, rows):
    """INT8 against fp32 (OpenVINO, batch 1) on demo-style classes the tests do not use: resnet18 (random
    init) at 128 px trained as ``bench_masks`` trains, calibrated on 32 other good images, then each
    quantization scope exported from the same fp32 file with ranges from those 32 images. Per class and
    scope: image and pixel AUROC against fp32's, decisions identical, mask pixels identical."""
    import contextlib
    import io
    from custom_models import load_model
    from main import main as run_main
    from utils.metrics import detection_auroc, localization_auroc
    from utils.quantize import SCOPES
    table = {scope: [] for scope in SCOPES}
    for seed in [int(s) for s in a.quantize_seeds.split(',') if s]:
        work = tempfile.mkdtemp(prefix='bench_quantize_')
        class_dir, calibration_dir, checkpoint = trained_demo_style_class(work, seed)
        fp32_path = os.path.join(work, 'fp32.onnx')
        with contextlib.redirect_stdout(io.StringIO()):
            assert run_main(['--action-type', 'export', '--checkpoint', checkpoint, '--output', fp32_path]) == 0
            models = {'fp32': fp32_path, **int8_exports(fp32_path, calibration_dir, 128, SCOPES, work)}
        paths, truth, labels = labelled_test_set(class_dir, 128)
        results = {}
        for name, path in models.items():
            predictions = load_model(path, runtime='openvino').predict(paths)
            maps = np.stack([p.model_map for p in predictions])
            results[name] = {'image': detection_auroc(labels, [p.score for p in predictions]),
                             'pixel': localization_auroc(truth, maps),
                             'decisions': np.array([p.defective for p in predictions]),
                             'masks': np.stack([p.mask for p in predictions])}
        fp32 = results['fp32']
        for scope in SCOPES:
            r = results[scope]
            entry = {'seed': seed, 'image': 100 * (r['image'] - fp32['image']), 'pixel': 100 * (r['pixel'] - fp32['pixel']),
                     'decisions': 100 * float((r['decisions'] == fp32['decisions']).mean()),
                     'masks': 100 * float((r['masks'] == fp32['masks']).mean()),
                     'fp32': (100 * fp32['image'], 100 * fp32['pixel'])}
            table[scope].append(entry)
            rows.append((f'INT8 {scope}, class seed {seed}', f'{entry["image"]:+.2f} / {entry["pixel"]:+.2f}', '',
                         f'image / pixel AUROC points vs fp32 ({entry["fp32"][0]:.2f} / {entry["fp32"][1]:.2f}); '
                         f'decisions identical {entry["decisions"]:.1f} %, mask pixels {entry["masks"]:.2f} %'))
        shutil.rmtree(work, ignore_errors=True)
    for scope, entries in table.items():
        if entries:
            rows.append((f'INT8 {scope}, worst class', f'{min(e["image"] for e in entries):+.2f} / '
                                                       f'{min(e["pixel"] for e in entries):+.2f}', '',
                         f'decisions identical >= {min(e["decisions"] for e in entries):.1f} %, mask pixels >= '
                         f'{min(e["masks"] for e in entries):.2f} % (targets: within 0.5 points, 98 %, 95 %)'))


def main(argv=None):
    a = parse_args(argv)
    skip = set(a.skip.split(',')) - {''}
    device_name = torch.cuda.get_device_name(a.device) if a.device.startswith('cuda') else \
        f'CPU, {torch.get_num_threads()} threads'
    print(f'device: {device_name}; torch {torch.__version__}; -enc {a.enc_arch} -inp {a.input_size} '
          f'-bs {a.batch_size} -cb {a.coupling_blocks} -pl {a.pool_layers}; {a.batches} batches per path and round, '
          f'{a.rounds} rounds, paths interleaved in rotated order; speeds: median [min-max] over rounds')
    rows = []
    if 'pipeline' not in skip:
        bench_pipeline(a, rows)
    if 'aupro' not in skip:
        bench_aupro(a, rows)
    if 'loader' not in skip:
        bench_loader(a, rows)
    if 'predict' not in skip:
        bench_predict(a, rows)
    if 'stages' not in skip:
        bench_stages(a, rows)
    if 'encoders' not in skip:
        bench_encoders(a, rows)
    if 'sizes' not in skip:
        bench_sizes(a, rows)
    if 'train' not in skip:
        bench_training(a, rows)
    if 'threads' not in skip and a.device == 'cpu':
        bench_threads(a, rows)
    if 'masks' not in skip:
        bench_masks(a, rows)
    if 'quantize' not in skip:
        bench_quantize(a, rows)
    if a.checkpoint:
        bench_modes(a, rows)
    width = max(len(r[0]) for r in rows)
    print(f'\n{"what":<{width}}  {"speed":>14}  {"ratio":>9}  notes')
    for name, speed, ratio, notes in rows:
        print(f'{name:<{width}}  {speed:>14}  {ratio:>9}  {notes}')
    if a.rows_json:
        import json
        with open(a.rows_json, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
