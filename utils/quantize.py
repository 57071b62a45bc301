"""INT8 post-training quantization of an exported model with NNCF (``--action-type export --quantize int8``).

NNCF (the library anomalib's ``INT8_PTQ`` uses) quantizes the fp32 export as OpenVINO reads it,
with value ranges from the statistics of the calibration images only, and the result is saved as
an OpenVINO IR (.xml + .bin) that OpenVINO runs in int8. OpenVINO's backend rather than NNCF's
ONNX one: a QDQ .onnx from the ONNX backend, run by OpenVINO on this AVX2 CPU, was 4x further
from fp32 (mean map error 0.49 against 0.11 of the map's range, 64-px demo model) since only the
OpenVINO backend applies NNCF's fix for 8-bit overflow on CPUs without VNNI. What is quantized is
a choice:

    encoder   the CNN's convolutions (ops the exporter recorded under AnomalyModel/encoder)
    flows     the decoders' matrix products (every other op)
    both      everything NNCF quantizes by default

(BENCHMARKS.md, issue 24, has the measured speed and quality of all three.) The quantized model
gives other log-likelihoods than the fp32 one, so its thresholds are calibrated again on its own
anomaly maps of the calibration images (``utils.calibration.thresholds_from_maps``), with the
fp32 model's normalisation constants kept: A = S_ref - S is still 0 at the fp32 model's most
normal calibration pixel.
"""
import json
import os
from typing import Iterable, Sequence

import numpy as np

from utils.errors import CflowError

SCOPES = ('encoder', 'flows', 'both')
DEFAULT_SCOPE = 'encoder'
MIN_IMAGES = 8  # fewer give ranges from too few activations (NNCF takes up to 300 by default)


def encoder_node_names(proto) -> set:
    """Nodes of the export that the exporter recorded inside the encoder module (node metadata
    ``namespace`` = the module path, e.g. ': ...AnomalyModel/encoder: ...FeatureEncoder/...')."""
    names = set()
    for node in proto.graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == 'namespace'), '')
        if '/encoder:' in namespace:
            names.add(node.name)
    return names


def quantize_export(fp32_path: str, images: Iterable[np.ndarray], scope: str = DEFAULT_SCOPE):
    """The INT8 ``openvino.Model`` of an fp32 .onnx export: NNCF's post-training quantization (mixed
    preset: symmetric weights, asymmetric activations), ranges from ``images`` (each 1 x 3 x inp x inp
    float32 in [0, 1]), the ops outside ``scope`` left in fp32. OpenVINO names each op after the ONNX
    node it came from (a decomposed node's ops: 'node/...'), which tells encoder from flows."""
    import logging
    import nncf
    import onnx
    import openvino as ov
    if scope not in SCOPES:
        raise CflowError(f'--quantize-scope {scope}: choose one of {", ".join(SCOPES)}')
    encoder = encoder_node_names(onnx.load(fp32_path, load_external_data=False))
    if not encoder:
        raise CflowError(f'{fp32_path}: no node is recorded inside the encoder, so the encoder and the flows '
                         f'cannot be told apart: export it again with this version, or pass --quantize-scope both')
    model = ov.Core().read_model(fp32_path)
    in_encoder = {op.get_friendly_name(): op.get_friendly_name().split('/')[0] in encoder for op in model.get_ops()}
    ignored = sorted(name for name, inside in in_encoder.items()
                     if (scope == 'encoder' and not inside) or (scope == 'flows' and inside))
    nncf.set_log_level(logging.ERROR)  # its per-op INFO lines would bury the command's own output
    options = {'ignored_scope': nncf.IgnoredScope(names=ignored, validate=False)} if ignored else {}
    images = list(images)
    return nncf.quantize(model, nncf.Dataset(images), subset_size=len(images), preset=nncf.QuantizationPreset.MIXED,
                         **options)


def quantize_to_ir(fp32_path: str, images: Sequence[np.ndarray], scope: str, path: str, settings: dict,
                   calibration: dict, source: str, scratch_dir: str) -> dict:
    """The INT8 export of ``fp32_path`` as ``path`` (.xml + .bin), its thresholds calibrated on its own maps
    of ``images`` as OpenVINO runs it for predict (``source`` names them); returns its calibration. The
    model is first written to ``scratch_dir`` to be run, so ``path`` never holds the fp32 thresholds."""
    import torch
    from utils.calibration import thresholds_from_maps
    from utils.export_onnx import OpenVinoModel
    quantized = quantize_export(fp32_path, images, scope)
    scratch = os.path.join(scratch_dir, f'int8_{scope}_uncalibrated.xml')
    write_ir(quantized, scratch, settings, calibration)
    int8 = OpenVinoModel(scratch)
    thresholds = thresholds_from_maps([int8(torch.from_numpy(image))[0][0] for image in images])
    calibration = quantized_calibration(calibration, thresholds, scope, source, len(images))
    write_ir(quantized, path, settings, calibration)
    return calibration


def write_ir(model, path: str, settings: dict, calibration: dict) -> None:
    """The quantized model as ``path`` (.xml) and its .bin, with settings and calibration in its rt_info
    (``utils.export_onnx.ir_metadata`` reads them back); written beside, then moved into place, the .bin
    first, so a reader never finds an .xml without its weights."""
    import openvino as ov
    model.set_rt_info(json.dumps(settings), ['cflow_settings'])
    model.set_rt_info(json.dumps(calibration), ['cflow_calibration'])
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{name}.{os.getpid()}.tmp.xml')
    try:
        ov.save_model(model, tmp, compress_to_fp16=False)
        os.replace(tmp[:-len('xml')] + 'bin', path[:-len('xml')] + 'bin')
        os.replace(tmp, path)
    except OSError as exc:
        raise CflowError(f'cannot write {path} ({exc.strerror}): free some disk space or pass another --output') from None
    finally:
        for leftover in (tmp, tmp[:-len('xml')] + 'bin'):
            if os.path.exists(leftover):
                os.remove(leftover)


def quantized_calibration(fp32: dict, thresholds: dict, scope: str, source: str, n_images: int) -> dict:
    """The fp32 calibration with the INT8 model's own thresholds, the precision and what was quantized;
    the fp32 thresholds are kept beside them for comparison."""
    return {**fp32, **thresholds, 'precision': 'int8', 'quantized': scope, 'n_images': int(n_images),
            'source': f'{source}: the INT8 model\'s own anomaly maps (thresholds); the fp32 model\'s '
                      f'constants ({fp32["source"]})',
            'fp32_thresholds': {'image_threshold': fp32['image_threshold'],
                                'pixel_threshold': fp32['pixel_threshold']}}


def check_quantize_images(paths: Sequence[str], folder: str) -> None:
    if len(paths) < MIN_IMAGES:
        raise CflowError(f'--calibration-path {folder} holds {len(paths)} images: INT8 quantization needs at least '
                         f'{MIN_IMAGES} defect-free images (its ranges come from them; 100 or more is better)')
