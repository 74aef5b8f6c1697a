"""The one exception type that the command-line tools print as a single line.

Every check on user input (files, flags, weights, image lists) raises `ToolkitError` with a message that
names the file (and line) at fault; every command's `cli.run` catches it,
prints `error: <message>` to stderr and exits with status 2, so a user never sees a traceback for a
mistake in their own input.
"""


class ToolkitError(Exception):
    """A problem with the user's input, explained in one line."""

