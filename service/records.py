"""What the service keeps: every decision appended to ``decisions.jsonl`` (flushed per batch) and, with
--save-defective, each defective image with its overlay (written on a background thread)."""
import datetime
import json
import os
import re
import threading
from typing import List, Optional

from utils.prediction_files import BackgroundWriter, save_png
from utils.viz import display_copy, prediction_picture


def safe_name(name: str) -> str:
    """An uploaded file name as a file name of ours: no folders, nothing but letters, digits, '._-'."""
    return re.sub(r'[^A-Za-z0-9._-]', '_', os.path.basename(name))[:80] or 'upload'


class Records:
    def __init__(self, log_dir: Optional[str], save_defective: Optional[str]):
        self.log = None
        self.lock = threading.Lock()
        self.count = 0
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            self.log = open(os.path.join(log_dir, 'decisions.jsonl'), 'a', buffering=1)
        self.save_defective = save_defective
        self.writer = BackgroundWriter() if save_defective else None

    def batch(self, version, jobs: List, predictions: List) -> None:
        """One scored batch: a line per decision (time, source, score, decision, model SHA-256), flushed."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='milliseconds')
        with self.lock:
            if self.log is not None:
                self.log.write(''.join(json.dumps({'time': now, 'source': job.source, 'score': p.score,
                                                   'decision': 'defective' if p.defective else 'good',
                                                   'model_sha256': version.sha256}) + '\n'
                                       for job, p in zip(jobs, predictions)))
                self.log.flush()
            for job, p in zip(jobs, predictions):
                self.count += 1
                if self.writer is not None and p.defective:
                    self.writer.submit(self.keep, f'{self.count:08d}_{safe_name(job.source)}', job, p,
                                       version.detector)

    def keep(self, stem: str, job, prediction, detector) -> None:
        t = job.thresholds
        save_png(os.path.join(self.save_defective, stem + '.png'), job.image)
        save_png(os.path.join(self.save_defective, stem + '.overlay.png'),
                 prediction_picture(display_copy(job.image, minimum=256), prediction, t, detector.precision))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.log is not None:
            self.log.close()
