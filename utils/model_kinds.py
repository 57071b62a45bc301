"""What kind of model a file holds, told from its name and its calibration record alone (no runtime is
imported): an exported graph or weights, and the precision an export computes in."""
from typing import Optional

EXPORTED = ('.onnx', '.xml')  # exported graphs: ONNX, and OpenVINO IR (the INT8 export, utils/quantize.py)


def is_exported(path: str) -> bool:
    """True for an exported graph: predict runs it; the weights are not in it."""
    return path.endswith(EXPORTED)


def precision_of(calibration: dict) -> str:
    """'int8 (encoder)' for a quantized export, 'fp32' otherwise."""
    if calibration.get('precision', 'fp32') == 'fp32':
        return 'fp32'
    return f'{calibration["precision"]} ({calibration.get("quantized", "?")})'


def precision_note(calibration: Optional[dict]) -> str:
    """' (an INT8 quantized export of its encoder: ...)' for a quantized export, so that it is never taken for an
    fp32 one; else ''."""
    if not calibration or precision_of(calibration) == 'fp32':
        return ''
    return (f' (an {calibration["precision"].upper()} quantized export of its {calibration.get("quantized", "?")}: '
            f'its scores are not the fp32 model\'s)')
