"""CFLOW-AD entry point: ``python main.py [flags]`` (see ``--help`` and the README)."""
import sys

from utils.errors import CflowError, user_message


def main(argv=None) -> int:
    from config import parse_config
    from train import run
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
