"""Whole commands as a user runs them (``main.main`` with an argv), for timing."""
import contextlib
import io
from typing import Callable, List


def command(argv: List[str]) -> Callable[[], None]:
    """A function that runs ``python main.py argv`` in this process (its output discarded) and fails loudly."""
    from main import main as run_main

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            if run_main(argv) != 0:
                raise RuntimeError(f'the command failed: {" ".join(argv)}')
    return run
