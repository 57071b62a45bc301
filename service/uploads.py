"""An upload checked and decoded (in a worker thread, never on the event loop): each kind of bad input is
a ``BadUpload`` with its HTTP status and a one-line reason."""
import io
from dataclasses import dataclass

from PIL import Image

from utils.images import READ_ERRORS, open_rgb


class BadUpload(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    data: bytes
    name: str        # the uploaded file's name, or 'body'


def decode(upload: Upload) -> Image.Image:
    """The upload as an RGB image, or ``BadUpload``: empty (400), over Pillow's pixel limit (413), not an
    image or truncated (415 / 400)."""
    if not upload.data:
        raise BadUpload(400, 'empty upload: send the image as the multipart field "image" or as the request body')
    try:
        with Image.open(io.BytesIO(upload.data)) as probe:  # the header only: the size before any pixel
            width, height = probe.size
    except READ_ERRORS:
        raise BadUpload(415, f'{upload.name} is not an image Pillow can read (PNG, JPEG, BMP, TIFF, ...)') from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise BadUpload(413, f'{upload.name} is {width} x {height} = {width * height} pixels, over the '
                             f'decompression-bomb limit of {limit}: start the service with a larger --max-image-pixels '
                             f'if such images are expected')
    try:
        return open_rgb(io.BytesIO(upload.data))
    except READ_ERRORS as exc:
        raise BadUpload(400, f'{upload.name} cannot be decoded ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): '
                             f'the file is truncated or damaged') from None
