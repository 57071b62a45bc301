"""ONNX export of the whole calibrated pipeline, and running the file with onnxruntime or OpenVINO.

One graph: normalisation, encoder taps, every decoder (fused, no fiber loop), map assembly
(``custom_models/anomaly_model.py``). Input ``image``: B x 3 x inp x inp RGB in [0, 1], the
batch axis dynamic. Outputs ``anomaly_map`` (B x inp x inp) and ``score`` (B). The settings
and the calibration (thresholds included) travel in the file's metadata, so ``predict``
needs nothing else.
"""
import json
import warnings
from typing import Tuple

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.errors import CflowError

INPUT, OUTPUTS = 'image', ('anomaly_map', 'score')


def export_onnx(model, path: str) -> None:
    """Trace ``model`` (an AnomalyModel on the CPU) to ``path`` with a dynamic batch axis."""
    import copy
    import onnx
    model = copy.deepcopy(model)  # tracing leaves state on the module it traced: keep the caller's clean
    example = torch.rand(2, 3, model.input_size, model.input_size)
    batch = torch.export.Dim('batch', min=1, max=4096)

    def write(tmp):
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter('ignore')
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=list(OUTPUTS),
                                        dynamic_shapes=({0: batch},), verbose=False)
        proto = program.model_proto
        for key, value in (('cflow_settings', json.dumps(model.calibration['settings'])),
                           ('cflow_calibration', json.dumps(model.calibration))):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(proto, tmp)
    atomic_write(path, write)


def onnx_metadata(path: str):
    """(settings, calibration) in an export's metadata, or a one-line error for another ONNX file."""
    import onnx
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # a broken or non-ONNX file
        raise CflowError(f'cannot load ONNX model {path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})') from None
    return export_metadata({entry.key: entry.value for entry in proto.metadata_props}, path)


def export_metadata(meta: dict, path: str):
    """(settings, calibration) from an export's metadata map (as either runtime reads it)."""
    if 'cflow_calibration' not in meta:
        raise CflowError(f'{path} is not an ONNX export of this project (no calibration in its metadata): '
                         f'export it with --action-type export')
    return json.loads(meta['cflow_settings']), json.loads(meta['cflow_calibration'])


class OnnxModel:
    """An exported file run by onnxruntime: images in [0, 1] -> (maps, scores), as AnomalyModel."""

    def __init__(self, path: str, threads: int = 0, spinning: bool = True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CflowError('running an .onnx model needs onnxruntime: pip install onnxruntime') from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:  # idle worker threads sleep: needed when other work shares the cores (benchmarks)
            options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        try:
            self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        except Exception as exc:  # onnxruntime raises its own types for a missing or broken file
            raise CflowError(f'cannot load ONNX model {path} ({str(exc).splitlines()[0]})') from None
        self.settings, self.calibration = export_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.input_size = int(self.settings['input_size'])

    def __call__(self, images: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(list(OUTPUTS), {INPUT: images.numpy().astype(np.float32, copy=False)})
        return maps, scores


class OpenVinoModel:
    """The same, run by OpenVINO's CPU plugin (anomalib's recommended CPU runtime), in fp32: the
    precision hint is set explicitly, since its default is bf16 on CPUs that have it. One compiled
    model per batch size (static shapes run faster than the dynamic batch axis)."""

    def __init__(self, path: str, threads: int = 0):
        try:
            import openvino as ov
        except ImportError:
            raise CflowError('running an .onnx model with OpenVINO needs openvino: pip install openvino') from None
        self.settings, self.calibration = onnx_metadata(path)
        self.input_size = int(self.settings['input_size'])
        self.core = ov.Core()
        self.model = self.core.read_model(path)
        self.config = {'INFERENCE_PRECISION_HINT': 'f32', 'PERFORMANCE_HINT': 'LATENCY'}
        if threads:
            self.config['INFERENCE_NUM_THREADS'] = int(threads)
        self.compiled = {}

    def compiled_for(self, batch: int):
        if batch not in self.compiled:
            model = self.model.clone()
            model.reshape({model.inputs[0].get_any_name(): [batch, 3, self.input_size, self.input_size]})
            self.compiled[batch] = self.core.compile_model(model, 'CPU', self.config)
        return self.compiled[batch]

    def __call__(self, images: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        compiled = self.compiled_for(images.shape[0])
        result = compiled(images.numpy().astype(np.float32, copy=False))
        return (np.asarray(result[compiled.output(OUTPUTS[0])]), np.asarray(result[compiled.output(OUTPUTS[1])]))
