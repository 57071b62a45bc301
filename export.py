"""``--action-type export``: a model for deployment.

    python main.py --action-type export --checkpoint FILE --output model.onnx          # one ONNX graph
    python main.py --action-type export --checkpoint FILE --output model.safetensors   # compact file
    python main.py --action-type export --checkpoint FILE --output model_int8.xml \
        --quantize int8 --calibration-path DIR                                          # INT8 OpenVINO IR (NNCF)

An ONNX graph must be calibrated (its thresholds are part of what is deployed); pass
``--calibration-path DIR`` to calibrate an uncalibrated checkpoint on the way.
"""
import os
import tempfile

from custom_datasets.common import calibration_images
from custom_models.detector import uncalibrated
from custom_models.scoring import deployable
from utils.errors import CflowError
from custom_models.model_file import read_model, write_model
from actions import calibrate_on_folder, model_settings


def export_differnet(c) -> dict:
    """A calibrated DifferNet as an ONNX graph of its scoring (views -> score): its gradient map needs autograd,
    which the graph does not carry, so the export gives scores and decisions, no map."""
    from custom_models.differnet import DifferNetScorer, load_differnet, read_differnet_file
    from utils.export_onnx import export_onnx
    if c.quantize or not c.output.endswith('.onnx'):
        raise CflowError(f'{c.checkpoint} is a DifferNet model: it exports as an fp32 .onnx only (its scores): '
                         f'name --output model.onnx, without --quantize')
    state, calibration = read_differnet_file(c.checkpoint)
    if calibration is None:
        raise CflowError(f'{c.checkpoint} has no calibration: calibrate it first (--action-type calibrate --model '
                         f'differnet --checkpoint {c.checkpoint} --calibration-path DIR)')
    export_onnx(DifferNetScorer(load_differnet(c.checkpoint, state=state), calibration), c.output)
    size = os.path.getsize(c.output)
    print(f'Exported {c.output} ({size / 1e6:.1f} MB): DifferNet\'s scores; its gradient map stays with the .pt')
    return {'output': c.output, 'bytes': size}


def run_export(c) -> dict:
    from custom_models.differnet_detector import is_differnet_file
    if is_differnet_file(c.checkpoint):
        return export_differnet(c)
    if c.quantize and c.tile is not None:
        raise CflowError('--quantize int8 is not available for a tiled model (its INT8 thresholds would need the '
                         'stitched maps): export it as --output model.onnx (fp32)')
    if c.quantize:
        return export_quantized(c)
    if not c.output.endswith(('.onnx', '.safetensors')):
        raise CflowError(f'--output {c.output}: name it .onnx (ONNX graph) or .safetensors (compact model file)')
    model = read_model(c.checkpoint, model_settings(c))  # on the CPU: exported files are device-free
    if c.calibration_path:
        model.calibration = calibrate_on_folder(c, model.encoder, model.decoders)
    if c.output.endswith('.safetensors'):
        write_model(c.output, model)
    else:
        from utils.export_onnx import export_onnx
        if model.calibration is None:
            raise uncalibrated(c.checkpoint)
        export_onnx(deployable(model.encoder, model.decoders, model.settings, model.calibration).eval(), c.output)
    size = os.path.getsize(c.output)
    print(f'Exported {c.output} ({size / 1e6:.1f} MB)')
    return {'output': c.output, 'bytes': size}


def export_quantized(c) -> dict:
    """The fp32 graph, calibrated on --calibration-path, quantized to INT8 by NNCF with ranges from the
    same images, then given thresholds from the INT8 model's own maps of them; an OpenVINO IR
    (``utils/quantize.py``)."""
    from custom_datasets.inputs import ImageFiles
    from utils.export_onnx import export_onnx
    from utils.quantize import check_quantize_images, quantize_to_ir
    paths = calibration_images(c.calibration_path)
    check_quantize_images(paths, c.calibration_path)
    model = read_model(c.checkpoint, model_settings(c))
    model.calibration = calibrate_on_folder(c, model.encoder, model.decoders, paths)
    files = ImageFiles(paths, model.settings['input_size'], display=False)
    images = [files[i][0][None].numpy() for i in range(len(files))]
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(c.output))) as work:
        fp32_path = os.path.join(work, 'fp32.onnx')
        export_onnx(deployable(model.encoder, model.decoders, model.settings, model.calibration).eval(), fp32_path)
        print(f'Quantizing the {c.quantize_scope} to INT8 with NNCF on {len(images)} images ...')
        calibration = quantize_to_ir(fp32_path, images, c.quantize_scope, c.output, model.settings, model.calibration,
                                     f'images under {c.calibration_path}', work)
    size = os.path.getsize(c.output) + os.path.getsize(c.output[:-len('xml')] + 'bin')
    print(f'Exported {c.output} and its .bin ({size / 1e6:.1f} MB, INT8 {c.quantize_scope}): image threshold '
          f'{calibration["image_threshold"]:.4g} (fp32 {model.calibration["image_threshold"]:.4g}), pixel threshold '
          f'{calibration["pixel_threshold"]:.4g} (fp32 {model.calibration["pixel_threshold"]:.4g})')
    return {'output': c.output, 'bytes': size, 'calibration': calibration}
