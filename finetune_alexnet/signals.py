"""Stopping a run cleanly: Ctrl-C, SIGTERM and SIGHUP all ask the training loop to save and exit.

SIGTERM is what `docker stop`, Slurm and Kubernetes send before killing a job; SIGHUP is what a closed
ssh session sends. All three set a flag that the loop checks between steps, so the step in flight
finishes, a checkpoint is saved, and the command exits with 128 + the signal's number.

A second signal means "out, now": it raises `Aborted`, which `cli.run` turns into one line and the
exit status of the second signal. Checkpoints are committed by renaming files into place (see
checkpoints.py), so aborting in the middle of a save leaves the last complete checkpoint and the
run_state.json that points at it untouched.
"""
import signal
import sys

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Aborted(BaseException):
    """A second stop signal: leave at once. A BaseException, so `except Exception` cannot swallow it."""

    def __init__(self, signum):
        super().__init__(f'{signal.Signals(signum).name} again: aborted without saving; the last '
                         'complete checkpoint is kept, continue it with --resume')
        self.signum = signum

    @property
    def exit_status(self):
        return 128 + self.signum


def name(signum):
    return 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name


class StopRequests:
    """Catches SIGINT, SIGTERM and SIGHUP while it is installed (a context manager).

    `requested` is true once one arrived; `signum` says which (the exit status is 128 + signum).
    """

    def __init__(self, signals=HANDLED):
        self.signals = signals
        self.signum = None
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_status(self):
        return 128 + self.signum

    def _handle(self, signum, frame):
        if self.requested:
            raise Aborted(signum)
        self.signum = signum
        print(f'\n{name(signum)}: saving a checkpoint after this step ({name(signum)} again to abort)',
              file=sys.stderr, flush=True)

    def __enter__(self):
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        return False
