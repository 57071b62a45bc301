"""CFLOW-AD entry point: ``python main.py [flags]`` (see ``--help`` and the README)."""
import signal
import sys
import threading

from utils.errors import CflowError, user_message


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a killed run (a runner, a scheduler) records itself as interrupted


def action(name: str):
    """The function that carries out ``--action-type name``, or DifferNet's (``differnet``) (imported only when
    used)."""
    if name == 'differnet':
        from train_differnet import run_differnet
        return run_differnet
    if name == 'calibrate':
        from calibrate import run_calibrate
        return run_calibrate
    if name == 'predict':
        from predict import run_predict
        return run_predict
    if name == 'export':
        from export import run_export
        return run_export
    if name == 'serve':
        from serve import run_serve
        return run_serve
    if name == 'submission':
        from submission import run_submission
        return run_submission
    from train import run  # norm-train, norm-test
    return run


def main(argv=None) -> int:
    from config import apply_process_settings, checked_flags, derive
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        c = checked_flags(argv)  # --help and a bad flag end here, before torch is imported
        from actions import model_file_statement
        c = derive(c, model_file_statement(c))  # the model file read once; the action gets what it states
        apply_process_settings(c)
        differnet = c.model_type == 'differnet' and c.action_type in ('norm-train', 'norm-test')
        action('differnet' if differnet else c.action_type)(c)  # calibrate, predict, serve: by the file
    except CflowError as exc:  # also when a DataLoader worker re-raised it
        print(f'error: {user_message(exc)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
