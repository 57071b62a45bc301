"""Files a user keeps (results, checkpoints, exports, predictions) are never left half-written.

Each is written to a temporary file in the same folder, flushed to disk, and moved into
place with ``os.replace`` (atomic on POSIX and Windows): an interruption, a crash or a
full disk leaves the previous version or nothing, never a truncated file.
"""
import contextlib
import os
import tempfile
from typing import Callable, Iterator

from utils.errors import CflowError


def _read_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc/self/status); else
    the set-and-restore dance, done once here at import, before any writer thread exists."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, else it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
        os.close(fd)
    except OSError as exc:
        raise CflowError(f'cannot write into {folder} ({exc.strerror}): pass a writable --output-dir') from None
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; a user's files get the usual mode
        os.replace(tmp, path)
        fsync_folder(folder)
    except OSError as exc:
        raise CflowError(f'cannot write {path} ({exc.strerror or exc}): free some disk space or pass '
                         f'another --output-dir (the previous version, if any, is untouched)') from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then move the result into place (e.g. ``torch.save``, ``fig.savefig``)."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)


def create_exclusive(path: str, text: str) -> bool:
    """Write ``text`` to ``path`` only if no file is there; False when one is. Either way no reader
    ever sees ``path`` half-written.

    A hard link of a finished temporary file is exclusive and complete in one step. Where the
    filesystem has no hard links, an ``O_EXCL`` claim file beside ``path`` makes the claim and
    ``os.replace`` of the finished temporary file puts it in place.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)
        try:
            os.link(tmp, path)
            fsync_folder(folder)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            return _claim_and_replace(tmp, path, folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _claim_and_replace(tmp: str, path: str, folder: str) -> bool:
    claim = path + '.claim'
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False  # another process is creating it right now
    try:
        if os.path.exists(path):
            return False
        os.replace(tmp, path)
        fsync_folder(folder)
        return True
    finally:
        os.remove(claim)
