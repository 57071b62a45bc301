"""The threshold options predict and ``load_model`` take (``--sensitivity`` or ``--image-threshold`` /
``--pixel-threshold``), checked in one place; import-light, so the command line checks them at start-up."""
from typing import Optional

from utils.errors import CflowError


def check_threshold_options(image_threshold: Optional[float], pixel_threshold: Optional[float],
                            sensitivity: Optional[float]) -> None:
    """A one-line error for a sensitivity combined with absolute thresholds, or one that is not above 0."""
    if sensitivity is None:
        return
    if image_threshold is not None or pixel_threshold is not None:
        raise CflowError('--sensitivity moves both stored thresholds; it cannot be combined with '
                         '--image-threshold/--pixel-threshold: pass one or the other')
    if not sensitivity > 0:
        raise CflowError(f'--sensitivity must be above 0 (1 = the stored thresholds, 2 = twice as sensitive), '
                         f'got {sensitivity}')
