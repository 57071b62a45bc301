"""The model the service answers with: loaded, warmed, then swapped in atomically. A request takes the
current version once and keeps it, so a reload never changes a model under a batch being scored, and a
file that does not load leaves the old version serving."""
import datetime
import hashlib
import os
import threading
from dataclasses import dataclass


from custom_models import load_model
from custom_models.detector import Detector
from service.options import ServiceOptions


@dataclass(frozen=True)
class ModelVersion:
    detector: Detector
    path: str
    sha256: str
    loaded_at: str

    def describe(self) -> dict:
        d = self.detector
        return {'file': os.path.abspath(self.path), 'sha256': self.sha256, 'loaded_at': self.loaded_at,
                'runtime': d.runtime, 'precision': d.precision, 'settings': d.settings,
                'thresholds': d.thresholds.as_dict(), 'calibration_source': d.calibration.get('source')}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


class ModelHolder:
    def __init__(self, options: ServiceOptions):
        self.options = options
        self.current = None            # ModelVersion: replaced whole, never changed in place
        self.reloading = threading.Lock()

    def open(self, path: str) -> ModelVersion:
        """Load ``path`` with the service's runtime and thresholds, and warm it (a first batch compiles and
        allocates), without touching the version being served."""
        o = self.options
        detector = load_model(path, device=o.device, runtime=o.runtime, threads=o.threads,
                              image_threshold=o.image_threshold, pixel_threshold=o.pixel_threshold,
                              sensitivity=o.sensitivity)
        detector.prepare(o.max_batch)
        blank = detector.model_input(detector.warm_image())
        for batch in getattr(detector, 'warm_batches', None) or sorted({1, o.max_batch}):
            detector.score_images(detector.collate([blank] * batch))
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
        return ModelVersion(detector, path, file_sha256(path), now)

    def load(self, path: str = None) -> ModelVersion:
        """Open ``path`` (default: the file being served, read again) and swap it in; one reload at a time."""
        with self.reloading:
            version = self.open(path or (self.current.path if self.current else self.options.checkpoint))
            self.current = version  # one reference assignment: requests see the old version or the new one
            return version
