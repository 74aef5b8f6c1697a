"""Stopping a run cleanly: Ctrl-C, SIGTERM and SIGHUP all ask the training loop to save and exit
(docs/resume-and-failures.md): a flag the loop checks between steps, so the step in flight finishes,
a checkpoint is saved, and the command exits with 128 + the signal's number.

A second signal means "out, now" (checkpoints are committed by renames, so nothing is left half
written). In a command's own process (`leave_at_once`, which `cli.prepare` calls) the handler prints
the one `error:` line and ends the process there and then: an exception raised from a signal handler
can land in a finalizer, where Python prints "Exception ignored" and carries on. Elsewhere (tests,
notebooks) it raises `Aborted`, which `cli.run` turns into that line; should a finalizer swallow it,
leaving the `with` block raises it again.
"""
import contextlib
import os
import signal
import sys

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_leave_at_once = None  # once a command asks: what to run just before leaving


def leave_at_once(before_exit=lambda: None):
    """From now on a second stop signal ends this process at once (see above), after `before_exit()`
    (which must pass on whatever the process still holds for the terminal); for commands only."""
    global _leave_at_once
    _leave_at_once = before_exit


def _abort(aborted):
    """In a command's own process, print the abort's one line and end the process (no clean-up
    runs, none is needed: see above); elsewhere raise `aborted`."""
    if _leave_at_once is not None:
        leave_now(str(aborted), aborted.exit_status)
    raise aborted


def can_leave_now():
    """True in a command's own process (`leave_at_once` was called), where `leave_now` may end it."""
    return _leave_at_once is not None


def leave_now(message, status):
    """Print `error: message` and end this command's process with `status`, from any thread: for
    waits that Python cannot interrupt (a collective another worker will never join)."""
    for stream, text in ((sys.stderr, f'error: {message}\n'), (sys.stdout, '')):
        try:
            stream.write(text)
            stream.flush()
        except (OSError, RuntimeError, ValueError):  # a closed pipe; a write this one interrupted
            pass
    _leave_at_once()
    os._exit(status)


class Aborted(BaseException):
    """A second stop signal: leave at once. A BaseException, so `except Exception` cannot swallow it."""

    def __init__(self, signum, message=None):
        super().__init__(message or f'{signal.Signals(signum).name} again: aborted without saving; '
                         'the last complete checkpoint is kept, continue it with --resume')
        self.signum = signum

    @property
    def exit_status(self):
        return 128 + self.signum


@contextlib.contextmanager
def ending_at_once(message):
    """While installed, SIGINT, SIGTERM and SIGHUP end the command at once, in one line
    `error: <signal> <message>` and status 128 + N: for waits with nothing to save yet (workers waiting
    for each other at start-up). In a command's own process the handler leaves there and then (as a
    second signal does); elsewhere it raises Aborted, which `cli.run` prints the same way."""
    def handle(signum, frame):
        _abort(Aborted(signum, f'{name(signum)} {message}'))
    previous = {signum: signal.signal(signum, handle) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def name(signum):
    return 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name


class StopRequests:
    """Catches SIGINT, SIGTERM and SIGHUP while it is installed (a context manager): `requested` is
    true once one arrived, `signum` says which."""

    def __init__(self, signals=HANDLED):
        self.signals = signals
        self.signum = None
        self.received = None  # the first signal this process itself received (not agreed on)
        self.aborted = None  # the Aborted of a second signal, once one came
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_status(self):
        return 128 + self.signum

    def _handle(self, signum, frame):
        if self.received is not None:
            self.aborted = Aborted(signum)
            _abort(self.aborted)
        self.received = signum
        if self.signum is None:  # (else another worker's signal stops this one already)
            self.signum = signum
        print(f'\n{name(signum)}: saving a checkpoint after this step ({name(signum)} again to abort)',
              file=sys.stderr, flush=True)

    def agree(self, signum, who):
        """Stop as if `signum` had come here: another worker (`who`) received it. This process's own
        first signal still counts as its first (Kubernetes signals every pod of a job)."""
        self.signum = signum
        print(f'{who} received {name(signum)}: every worker stops after this step',
              file=sys.stderr, flush=True)

    def __enter__(self):
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type, exc, traceback):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self.aborted is not None and exc_type is None:  # a finalizer swallowed it
            raise self.aborted
        return False
