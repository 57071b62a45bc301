"""``--action-type export``: a model for deployment.

    python main.py --action-type export --checkpoint FILE --output model.onnx          # one ONNX graph
    python main.py --action-type export --checkpoint FILE --output model.safetensors   # compact file

The model must be calibrated (its thresholds are part of what is deployed); pass
``--calibration-path DIR`` to calibrate an uncalibrated checkpoint on the way.
"""
import os

from calibrate import calibrate_on_folder, load_for_inference, write_model
from custom_models.anomaly_model import AnomalyModel
from utils.errors import CflowError


def require_calibration(c, model) -> None:
    """Calibrate on --calibration-path if asked (or needed); a clear error where it cannot be."""
    if c.calibration_path:
        model.calibration = calibrate_on_folder(c, model.encoder, model.decoders)
    if model.calibration is None:
        raise CflowError(f'{c.checkpoint} has no calibration: pass --calibration-path DIR (defect-free images '
                         f'not used for training), or calibrate it first with --action-type calibrate')


def deployable(c, model) -> AnomalyModel:
    return AnomalyModel(model.encoder, model.decoders, c.input_size, c.norm_mean, c.norm_std, model.calibration)


def run_export(c) -> dict:
    if not c.output.endswith(('.onnx', '.safetensors')):
        raise CflowError(f'--output {c.output}: name it .onnx (ONNX graph) or .safetensors (compact model file)')
    c.device = 'cpu'  # exported graphs and files are device-free
    model = load_for_inference(c)
    if c.output.endswith('.safetensors'):
        if c.calibration_path:
            require_calibration(c, model)
        write_model(c.output, model)
    else:
        from utils.export_onnx import export_onnx
        require_calibration(c, model)
        export_onnx(deployable(c, model).eval(), c.output)
    size = os.path.getsize(c.output)
    print(f'Exported {c.output} ({size / 1e6:.1f} MB)')
    return {'output': c.output, 'bytes': size}
