"""The one exception type that the command-line tools print as a single line.

Every check on user input (files, flags, weights, image lists) raises `ToolkitError` with a message that
names the file (and line) at fault; `finetune.py`, `predict.py` and the other entry points catch it,
print `error: <message>` to stderr and exit with status 2, so a user never sees a traceback for a
mistake in their own input.
"""


class ToolkitError(Exception):
    """A problem with the user's input, explained in one line."""


def run_main(main, argv=None):
    """Run an entry point's `main(argv)`; a ToolkitError becomes one `error: ...` line and status 2."""
    import sys
    try:
        return main(argv)
    except ToolkitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
