"""``--action-type export``: a model for deployment.

    python main.py --action-type export --checkpoint FILE --output model.onnx          # one ONNX graph
    python main.py --action-type export --checkpoint FILE --output model.safetensors   # compact file

An ONNX graph must be calibrated (its thresholds are part of what is deployed); pass
``--calibration-path DIR`` to calibrate an uncalibrated checkpoint on the way.
"""
import os

from custom_models.detector import uncalibrated
from custom_models.scoring import calibrate_on_folder, deployable
from utils.errors import CflowError
from custom_models.model_file import model_settings, read_model, write_model


def run_export(c) -> dict:
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
