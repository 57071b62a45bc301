"""ONNX export of the whole calibrated pipeline, and running the file with onnxruntime or OpenVINO.

One graph: normalisation, encoder taps, every decoder (fused, no fiber loop), map assembly
(``custom_models/anomaly_model.py``). Input ``image``: B x 3 x inp x inp RGB in [0, 1], the
batch axis dynamic. Outputs ``anomaly_map`` (B x inp x inp) and ``score`` (B). The settings
and the calibration (thresholds included) travel in the file's metadata, so ``predict``
needs nothing else.
"""
import io
import json
import os
import threading
import warnings
from typing import Optional, Tuple

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.errors import CflowError

INPUT, OUTPUTS = 'image', ('anomaly_map', 'score')


def export_onnx(model, path: str) -> None:
    """Trace ``model`` (an AnomalyModel on the CPU, or another module of the same outputs with its own
    ``example_input``: DifferNet's scorer) to ``path`` with a dynamic batch axis."""
    import copy
    import onnx
    model = copy.deepcopy(model)  # tracing leaves state on the module it traced: keep the caller's clean
    example = (model.example_input() if hasattr(model, 'example_input') else
               torch.rand(2, 3, model.input_size, model.input_size))
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


def model_metadata(path: str):
    """(settings, calibration) of an exported graph: an .onnx, or an OpenVINO IR .xml (its rt_info)."""
    return ir_metadata(path) if path.endswith('.xml') else onnx_metadata(path)


def ir_metadata(path: str):
    """(settings, calibration) in an IR's rt_info, read from the .xml text (no OpenVINO import)."""
    import xml.etree.ElementTree as ET
    try:
        info = ET.parse(path).getroot().find('rt_info')
    except (OSError, ET.ParseError) as exc:
        raise CflowError(f'cannot read OpenVINO model {path} ({exc}): pass the .xml that export wrote, with its .bin '
                         f'beside it') from None
    meta = {} if info is None else {e.tag: e.get('value', '') for e in info}
    return export_metadata(meta, path)


def onnx_metadata(path: str):
    """(settings, calibration) in an export's metadata, or a one-line error for another ONNX file."""
    try:
        meta = metadata_props(path)
    except (OSError, ValueError):  # not a protobuf we can walk: let onnx say what is wrong with it
        meta = None
    if meta is None:
        meta = full_load_metadata(path)
    return export_metadata(meta, path)


def metadata_props(path: str):
    """ModelProto.metadata_props (field 14: entries of key = 1, value = 2) without importing onnx or
    parsing the graph: the top-level protobuf fields are walked and every other one skipped by its
    length, so a 90 MB file costs a few reads (``onnx.load`` took 0.15 s, plus 0.3 s or more to import
    onnx). None if the file is not a protobuf this walk understands."""
    meta, size = {}, os.path.getsize(path)
    with open(path, 'rb') as f:
        for field, value in protobuf_fields(f, size, wanted={14}):
            if value is None:
                return None
            entry = dict(protobuf_fields(io.BytesIO(value), len(value), wanted={1, 2}))
            meta[entry.get(1, b'').decode()] = entry.get(2, b'').decode()
    return meta


def protobuf_fields(f, size: int, wanted: set):
    """(field number, bytes) of the length-delimited fields in ``wanted``; the others are skipped.
    Yields (None, None) and stops at a wire type that protobuf does not define (not a protobuf)."""
    def varint():
        shift = value = 0
        while True:
            byte = f.read(1)
            if not byte:
                raise ValueError('truncated protobuf')
            value |= (byte[0] & 0x7F) << shift
            if byte[0] < 0x80:
                return value
            shift += 7
    while f.tell() < size:
        key = varint()
        field, wire = key >> 3, key & 7  # tag = field number << 3 | wire type
        if wire == 0:
            varint()
        elif wire in (1, 5):  # fixed 64 / 32 bits
            f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        elif wire == 2:
            length = varint()
            if field in wanted:
                yield field, f.read(length)
            else:
                f.seek(length, os.SEEK_CUR)
        else:
            yield None, None
            return
        if f.tell() > size:
            raise ValueError('truncated protobuf')


def full_load_metadata(path: str) -> dict:
    import onnx
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # a broken or non-ONNX file
        raise CflowError(f'cannot load ONNX model {path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})') from None
    return {entry.key: entry.value for entry in proto.metadata_props}


def export_metadata(meta: dict, path: str):
    """(settings, calibration) from an export's metadata map (as either runtime reads it)."""
    if 'cflow_calibration' not in meta:
        raise CflowError(f'{path} is not an ONNX export of this project (no calibration in its metadata): '
                         f'export it with --action-type export')
    return json.loads(meta['cflow_settings']), json.loads(meta['cflow_calibration'])


def threads_per_stream(threads: int, streams: int) -> int:
    """Each of ``streams`` concurrent calls gets an equal share of ``threads`` (0: every core)."""
    return max(1, (threads or os.cpu_count() or 1) // streams)


class OnnxModel:
    """An exported file run by onnxruntime: images in [0, 1] -> (maps, scores), as AnomalyModel.
    ``streams`` > 1: that many calls may run at once (``utils.pipeline.ordered_map``), each on
    threads / streams intra-op threads; the maps are the same bytes (tests/test_predict_speed.py)."""

    def __init__(self, path: str, threads: int = 0, spinning: bool = True, streams: int = 1):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CflowError('running an .onnx model needs onnxruntime: pip install onnxruntime') from None
        options = ort.SessionOptions()
        self.streams = max(1, int(streams))
        if self.streams > 1:
            options.intra_op_num_threads = threads_per_stream(threads, self.streams)
        elif threads:
            options.intra_op_num_threads = threads
        if not spinning:  # idle worker threads sleep: needed when other work shares the cores (benchmarks)
            options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        try:
            self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        except Exception as exc:  # onnxruntime raises its own types for a missing or broken file
            raise CflowError(f'cannot load ONNX model {path} ({str(exc).splitlines()[0]})') from None
        self.settings, self.calibration = export_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.input_size = int(self.settings['input_size'])

    def prepare(self, batch: int) -> None:
        """Nothing to do: onnxruntime is ready once the session exists."""

    def __call__(self, images: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(list(OUTPUTS), {INPUT: images.numpy().astype(np.float32, copy=False)})
        return maps, scores


class OpenVinoModel:
    """The same (an .onnx, or the INT8 export's IR .xml), run by OpenVINO's CPU plugin (anomalib's recommended CPU runtime), in fp32: the
    precision hint is set explicitly, since its default is bf16 on CPUs that have it. One compiled
    model per batch size (static shapes run faster than the dynamic batch axis, and give other bytes).

    ``streams`` > 1: OpenVINO's throughput mode, that many streams of threads / streams threads, one
    inference request per calling thread (the same bytes as one stream on every thread, tested).
    ``cache_dir``: OpenVINO's model cache (``CACHE_DIR``): a compile that was done before is read
    back instead of redone (1.0 s -> 0.46 s for ResNet-18 at 256, 2 cores), about the size of the
    model's weights per (model, batch size, streams); None: no cache."""

    def __init__(self, path: str, threads: int = 0, streams: int = 1, cache_dir: Optional[str] = None):
        try:
            import openvino as ov
        except ImportError:
            raise CflowError('running an .onnx model with OpenVINO needs openvino: pip install openvino') from None
        self.settings, self.calibration = model_metadata(path)
        self.input_size = int(self.settings['input_size'])
        self.core = ov.Core()
        if cache_dir:
            self.core.set_property({'CACHE_DIR': cache_dir})
        self.model = self.core.read_model(path)
        self.streams = max(1, int(streams))
        if self.streams > 1:
            self.config = {'INFERENCE_PRECISION_HINT': 'f32', 'PERFORMANCE_HINT': 'THROUGHPUT',
                           'NUM_STREAMS': self.streams}
        else:
            self.config = {'INFERENCE_PRECISION_HINT': 'f32', 'PERFORMANCE_HINT': 'LATENCY'}
        if threads:
            self.config['INFERENCE_NUM_THREADS'] = int(threads)
        self.compiled, self.lock, self.local = {}, threading.Lock(), threading.local()

    def prepare(self, batch: int):
        """The model compiled for ``batch`` images (compiled once, on first use)."""
        with self.lock:
            if batch not in self.compiled:
                model = self.model.clone()
                model.reshape({model.inputs[0].get_any_name(): [batch, 3, self.input_size, self.input_size]})
                self.compiled[batch] = self.core.compile_model(model, 'CPU', self.config)
            return self.compiled[batch]

    def __call__(self, images: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        batch = images.shape[0]
        requests = self.local.__dict__.setdefault('requests', {})  # one request per thread and batch size
        if batch not in requests:
            requests[batch] = self.prepare(batch).create_infer_request()
        request = requests[batch]
        request.infer(images.numpy().astype(np.float32, copy=False))
        return tuple(request.get_tensor(name).data.copy() for name in OUTPUTS)
