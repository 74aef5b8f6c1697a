"""What every command shares: its argument parser, its start-up (`prepare`, before TensorFlow
loads) and how it ends (`run`: one `error:` line, the exit statuses). CONTRIBUTING.md shows the
shape of a command module and lists the exit statuses.
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
    """argparse with one-line errors (a bad flag raises ToolkitError), `--verbose` (TensorFlow's own
    log lines) for every command, and the defaults shown in `--help`."""

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
    """One line of a terminal rewritten in place: the one progress line every command draws. Each
    rewrite erases the rest of the line and fits the terminal's width (a wrapped line cannot be
    rewritten); `print` first ends the line."""
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
    """Set TensorFlow's environment up before it is imported (its C++ runtime reads it once, when it
    loads): quiet unless `--verbose` is in argv. Ctrl-C during the imports then ends the command in
    one line with status 130, not a traceback; a second stop signal during a run ends the process
    at once (signals.leave_at_once)."""
    tf_setup.configure_environment(verbose='--verbose' in argv)
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    signals.leave_at_once(before_exit=tf_setup.restore_stderr)


def _interrupted_while_loading(signum, frame):
    print('error: interrupted', file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def run(main, argv=None):
    """Run a command's `main(argv)` and turn its outcome into an exit status: a ToolkitError, an
    unhandled Ctrl-C or a second stop signal (`signals.Aborted`) becomes one `error:` line."""
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
