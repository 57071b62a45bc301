"""What the service is told: the command line translated once (``serve.py``), never the namespace."""
from dataclasses import dataclass
from typing import Optional

LOCAL_HOSTS = ('127.0.0.1', 'localhost', '::1')


@dataclass(frozen=True)
class ServiceOptions:
    checkpoint: str
    host: str = '127.0.0.1'
    port: int = 8000
    runtime: Optional[str] = None            # torch, onnxruntime, openvino (default: by the file's kind)
    device: str = 'cpu'
    threads: int = 0                         # onnxruntime / OpenVINO threads (0: theirs)
    image_threshold: Optional[float] = None  # the stored thresholds, moved or set (custom_models.detector)
    pixel_threshold: Optional[float] = None
    sensitivity: Optional[float] = None
    max_batch: int = 8                       # images scored in one model call
    max_wait_ms: float = 5.0                 # how long the first image of a batch waits for others
    max_queue: int = 64                      # requests admitted at once (waiting or being scored); more: 503
    max_upload_mb: float = 50.0
    api_key: Optional[str] = None            # required on every endpoint but /health when set
    log_dir: Optional[str] = None            # decisions.jsonl
    save_defective: Optional[str] = None     # defective images and their overlays
    max_image_pixels: Optional[int] = None   # Pillow's decompression-bomb limit

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2 ** 20)
