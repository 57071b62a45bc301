"""predict on a folder of image files: the deployable model in PyTorch, under onnxruntime, under OpenVINO
(fp32, and the INT8 exports) against the encoder alone, at each ``--predict-batch``; OpenVINO's op times;
then the whole predict command (loading with worker processes, scoring, writing maps and masks) per
runtime, interleaved with the loader alone."""
import os
import tempfile

import numpy as np
import torch

from benchmarks.commands import command
from benchmarks.int8 import int8_exports, openvino_op_times
from benchmarks.models import build_model, calibrated_model
from benchmarks.rows import Row
from benchmarks.timing import interleaved, paired_ratio, speed_rows
from custom_datasets.common import list_images
from custom_datasets.inputs import ImageFiles, collate
from custom_datasets.synthetic import make_demo_class
from custom_models.model_file import LoadedModel, write_model
from utils.export_onnx import OnnxModel, OpenVinoModel, export_onnx

BASELINE = 'encoder only (limit)'


def over_batches(fn, batches):
    def run():
        with torch.inference_mode():
            for x in batches:
                fn(x)
    return run


def model_rows(a, model, runtimes: dict, int8: dict, folder: str, size: int) -> list:
    """The model paths at batch ``size``, interleaved; each runtime's maps against PyTorch's, OpenVINO
    against onnxruntime, and each INT8 model against fp32 OpenVINO (speed paired per round, maps on a
    folder image: noise inputs give near-flat maps, with no scale to compare with)."""
    batches = [torch.rand(size, 3, a.input_size, a.input_size) for _ in range(max(8 // size, 2))]
    paths = {BASELINE: over_batches(lambda x: model.encoder((x - model.mean) / model.std), batches),
             'predict model, PyTorch': over_batches(model, batches),
             **{name: over_batches(run, batches) for name, run in {**runtimes, **int8}.items()}}
    seconds = interleaved(paths, a.rounds, 'cpu')
    with torch.inference_mode():
        reference = model(batches[0])[0].numpy()
    data, notes = {}, {}
    for name, run in runtimes.items():
        data[name] = {'max_diff_vs_pytorch': float(np.abs(run(batches[0])[0] - reference).max() / np.ptp(reference))}
        notes[name] = f'max diff vs PyTorch {data[name]["max_diff_vs_pytorch"]:.1e} of the map range'
    versus = paired_ratio(seconds['predict model, onnxruntime'], seconds['predict model, OpenVINO'])
    data['predict model, OpenVINO']['x_onnxruntime'] = versus
    notes['predict model, OpenVINO'] += (f'; {versus["median"]:.2f}x onnxruntime '
                                         f'[{versus["min"]:.2f}-{versus["max"]:.2f}]')
    image = ImageFiles(list_images(folder)[:1], a.input_size, display=False)[0][0][None]
    fp32_maps = runtimes['predict model, OpenVINO'](image)[0]
    for name, run in int8.items():
        versus = paired_ratio(seconds['predict model, OpenVINO'], seconds[name])
        error = np.abs(run(image)[0] - fp32_maps) / np.ptp(fp32_maps)
        data[name] = {'x_fp32_openvino': versus, 'mean_diff': float(error.mean()), 'max_diff': float(error.max())}
        notes[name] = (f'{versus["median"]:.2f}x fp32 OpenVINO [{versus["min"]:.2f}-{versus["max"]:.2f}]; |diff| vs '
                       f'fp32 on a folder image: mean {error.mean():.1e}, max {error.max():.1e} of the map range')
    rows = speed_rows(seconds, len(batches) * size, BASELINE, notes, data)
    for row in rows:
        row.name += f' (batch {size})'
    return rows


def op_time_rows(onnx_path: str, int8_paths: dict, input_size: int) -> list:
    """Why INT8 is or is not faster here: OpenVINO's own op times, encoder against flows."""
    import onnx
    from utils.quantize import encoder_node_names
    nodes = encoder_node_names(onnx.load(onnx_path, load_external_data=False))
    rows = []
    for name, path in (('fp32', onnx_path), *((f'INT8 {scope}', p) for scope, p in int8_paths.items())):
        times = openvino_op_times(path, nodes, input_size)
        rows.append(Row(f'OpenVINO op times, {name}', sum(t for t, _ in times.values()), 'ms',
                        notes='; '.join(f'{part} {t:.1f} ms ({kernel})' for part, (t, kernel) in times.items()),
                        data={f'{part}_{key}': value for part, (t, kernel) in times.items()
                              for key, value in (('ms', t), ('kernel', kernel))}))
    return rows


def command_rows(a, root: str, folder: str, checkpoint: str, onnx_path: str) -> list:
    """The whole predict command per runtime, interleaved with the loader alone."""
    workers = min(2, os.cpu_count() or 1)
    batch = int(str(a.predict_batch).split(',')[0])
    commands = {}
    for name, path, extra in (('predict command, PyTorch', checkpoint, []),
                              ('predict command, onnxruntime', onnx_path, []),
                              ('predict command, OpenVINO', onnx_path, ['--runtime', 'openvino']),
                              ('predict command, onnxruntime, --scores-only', onnx_path, ['--scores-only']),
                              ('predict command, OpenVINO, --scores-only', onnx_path,
                               ['--runtime', 'openvino', '--scores-only'])):
        commands[name] = command(['--action-type', 'predict', '--checkpoint', path, '--input', folder, '--no-cuda',
                                  '--workers', str(workers), '-bs', str(batch), '--output-dir',
                                  os.path.join(root, 'out')] + extra)
    loader = torch.utils.data.DataLoader(ImageFiles(list_images(folder), a.input_size), batch_size=batch,
                                         num_workers=workers, collate_fn=collate)

    def load_only():
        for _ in loader:
            pass
    commands[f'loading only ({workers} workers)'] = load_only
    seconds = interleaved(commands, max(2, a.rounds // 2), 'cpu')
    return speed_rows(seconds, a.predict_images, None,
                      {k: f'{a.predict_images} PNG files {a.predict_image_size}px, batch {batch}' for k in commands})


def run(a):
    encoder, decoders = build_model(a.enc_arch, a.pool_layers, a.coupling_blocks, 'cpu')
    rows = []
    with tempfile.TemporaryDirectory() as root:
        make_demo_class(root, 'predict', image_size=a.predict_image_size, n_train=a.predict_images,
                        n_test_good=1, n_test_defect=1)
        folder = os.path.join(root, 'predict', 'train', 'good')
        # calibrated on images of the same kind, as a user would (noise would give extreme maps)
        model, settings, calibration = calibrated_model(a.enc_arch, encoder, decoders, a.input_size, folder)
        checkpoint, onnx_path = os.path.join(root, 'model.pt'), os.path.join(root, 'model.onnx')
        write_model(checkpoint, LoadedModel(encoder, decoders, settings, calibration))
        export_onnx(model, onnx_path)
        runtimes = {'predict model, onnxruntime': OnnxModel(onnx_path, spinning=False),  # idle threads must not
                    'predict model, OpenVINO': OpenVinoModel(onnx_path)}                # eat the others' cores
        int8_paths = int8_exports(onnx_path, folder, a.input_size, [s for s in a.quantize_scopes.split(',') if s],
                                  root, limit=16)
        int8 = {f'predict model, OpenVINO INT8 {scope}': OpenVinoModel(path) for scope, path in int8_paths.items()}
        for size in [int(b) for b in str(a.predict_batch).split(',')]:
            rows += model_rows(a, model, runtimes, int8, folder, size)
        if int8:
            rows += op_time_rows(onnx_path, int8_paths, a.input_size)
        rows += command_rows(a, root, folder, checkpoint, onnx_path)
    return rows
