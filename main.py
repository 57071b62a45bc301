"""CFLOW-AD entry point: ``python main.py [flags]`` (see ``--help`` and the README)."""
import signal
import sys
import threading

from utils.errors import CflowError, user_message


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a killed run (a runner, a scheduler) records itself as interrupted


def main(argv=None) -> int:
    from config import parse_config
    from train import run
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        run(parse_config(argv))
    except CflowError as exc:  # also when a DataLoader worker re-raised it
        print(f'error: {user_message(exc)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
