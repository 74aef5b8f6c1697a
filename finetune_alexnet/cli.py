"""What every command shares: its argument parser, its start-up and how it ends (CONTRIBUTING.md).

A command module reads top to bottom like this, and does nothing when it is merely imported:

    import sys
    from finetune_alexnet import cli
    if __name__ == '__main__':
        cli.prepare(sys.argv[1:])          # before TensorFlow loads: quiet logs unless --verbose
    import tensorflow.compat.v1 as tf
    ...
    def main(argv=None):
        args = cli.ArgumentParser(description=__doc__).parse_args(argv)
        ...
    if __name__ == '__main__':
        sys.exit(cli.run(main))

Exit statuses, the same for every command:
    0 done; 1 a check that found problems (`datagenerator.py --check`); 2 a user mistake, printed
    as one `error: ...` line (argparse's own complaints included); 128 + N after signal N
    (130 for Ctrl-C, 143 for SIGTERM; 141, quietly, when the reader of the output goes away, as
    in `predict.py ... | head -1`).
"""
import argparse
import os
import signal
import sys

from finetune_alexnet import signals
from finetune_alexnet import tf_setup
from finetune_alexnet.errors import ToolkitError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: the reader of the output went away


class HelpFormatter(argparse.HelpFormatter):
    """`--help` shows each flag's default, unless there is none to show (None, off) or its help text
    already says it (flags whose default depends on another flag)."""

    def _get_help_string(self, action):
        text = action.help or ''
        if (not action.option_strings or 'default' in text
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f'{text} (default: %(default)s)'.lstrip()


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad flag raises ToolkitError instead of printing the usage.

    Every command gets `--verbose` (TensorFlow's own log lines) from here, so the flag means the same
    everywhere; the flags are shown with their defaults in `--help`.
    """

    def __init__(self, *args, **kwargs):
        kwargs['formatter_class'] = HelpFormatter
        super().__init__(*args, **kwargs)
        self.add_argument('--verbose', action='store_true',
                          help="show TensorFlow's own log messages")

    def error(self, message):
        raise ToolkitError(f'{message} (see {self.prog} --help)')

    def given_flags(self, argv):
        """The names of the flags `argv` gives (`None`: sys.argv's), whatever their values: a flag
        given with its default value is still given, which `--resume` needs to tell a choice from
        an omission."""
        saved = {action.dest: action.default for action in self._actions}
        try:
            for action in self._actions:
                action.default = argparse.SUPPRESS
            given, _ = self.parse_known_args(argv)
        finally:
            for action in self._actions:
                action.default = saved[action.dest]
        return frozenset(vars(given))


class StatusLine:
    """One line of a terminal rewritten in place: the one progress line every command draws.

    Each rewrite erases the rest of the line (a shorter text leaves nothing of a longer one) and
    fits the terminal's width (a wrapped line cannot be rewritten: every update would pile up a
    row); `print` first ends the line, so that what else is printed starts on a line of its own.
    """
    ERASE_TO_END = '\x1b[K'

    def __init__(self, stream):
        self.stream = stream
        self.line_open = False  # the line has no newline yet

    def show(self, *texts):
        """The first of `texts` that fits the width, else the last one cut to fit."""
        # One column short: a character in the last column makes some terminals wrap.
        width = max(self._columns() - 1, 1)
        line = next((text for text in texts if len(text) <= width), texts[-1][:width])
        self.stream.write(f'\r{line}{self.ERASE_TO_END}')
        self.stream.flush()
        self.line_open = True

    def print(self, text):
        self.end()
        self.stream.write(text + '\n')
        self.stream.flush()

    def end(self):
        if self.line_open:
            self.stream.write('\n')
            self.stream.flush()
            self.line_open = False

    def _columns(self):
        """$COLUMNS where set (as shutil.get_terminal_size reads it), else the stream's terminal's."""
        if os.environ.get('COLUMNS', '').isdigit() and int(os.environ['COLUMNS']) > 0:
            return int(os.environ['COLUMNS'])
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            return 80


def prepare(argv):
    """Set TensorFlow's environment up before it is imported: quiet unless `--verbose` is in argv.

    TensorFlow's C++ runtime reads its variables once, when it loads, so this must run before the
    command's own imports; only the `__main__` block calls it, so importing a command changes nothing.
    Ctrl-C while the imports run (TensorFlow takes seconds to load) ends the command as `run` does,
    in one line with status 130, instead of a traceback through the import machinery; a second stop
    signal during a run ends the process at once (signals.leave_at_once).
    """
    tf_setup.configure_environment(verbose='--verbose' in argv)
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    signals.leave_at_once(before_exit=tf_setup.restore_stderr)


def _interrupted_while_loading(signum, frame):
    print('error: interrupted', file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def run(main, argv=None):
    """Run a command's `main(argv)` and turn its outcome into an exit status.

    A ToolkitError becomes `error: <message>` and status 2; Ctrl-C that the command did not handle
    itself becomes one line and status 130 instead of a traceback; so does a second stop signal
    (`signals.Aborted`), with status 128 + its number.
    """
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:  # the imports are done
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status = main(argv)
        sys.stdout.flush()  # here, not at exit: a reader that went away is noticed below
    except BrokenPipeError:
        # The reader of the output went away (`predict.py ... | head -1`): end quietly, as a
        # command killed by SIGPIPE does, and keep Python from complaining when it exits.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ToolkitError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_USER_ERROR
    except signals.Aborted as error:
        print(f'error: {error}', file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print('error: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if status is None else status
