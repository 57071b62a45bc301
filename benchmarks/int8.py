"""INT8 exports as the export command makes them, and where OpenVINO spends an inference of one."""
import collections
import os
from typing import Dict, Sequence

import numpy as np

from custom_datasets.common import list_images
from custom_datasets.inputs import ImageFiles
from utils.export_onnx import onnx_metadata
from utils.quantize import quantize_to_ir


def int8_exports(fp32_path: str, folder: str, input_size: int, scopes: Sequence[str], root: str,
                 limit: int = 300) -> Dict[str, str]:
    """scope -> path of that scope's INT8 export of ``fp32_path``, ranges and thresholds from the good images of
    ``folder`` (the export command's steps: ``export.export_quantized``, without the fp32 recalibration)."""
    settings, calibration = onnx_metadata(fp32_path)
    files = ImageFiles(list_images(folder)[:limit], input_size, display=False)
    images = [files[i][0][None].numpy() for i in range(len(files))]
    paths = {}
    for scope in scopes:
        paths[scope] = os.path.join(root, f'int8_{scope}.xml')
        quantize_to_ir(fp32_path, images, scope, paths[scope], settings, calibration, folder, root)
    return paths


def openvino_op_times(path: str, encoder_nodes: set, input_size: int, repeats: int = 5) -> dict:
    """Where OpenVINO spends one batch-1 inference of ``path``: part -> (median milliseconds of the executed
    ops in the encoder / the flows (OpenVINO's own per-op counters, ``PERF_COUNT``), that part's costliest
    kernel, e.g. 'brgconv_avx2_f32' against 'jit_avx2_I8'): the reason an INT8 path is or is not faster."""
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
