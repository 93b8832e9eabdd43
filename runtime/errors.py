"""User-facing errors.

Every problem caused by the user's input (a bad file, an unsupported layer, a wrong shape) is raised as
:class:`UserError`. The CLI turns it into a one-line message and exit code 2; with ``-v`` it also prints
the traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""

    exit_code = 2


class ToolError(UserError):
    """An external tool (compiler, simulator, synthesis) failed on our own generated files.

    Not the user's fault, but reported the same way: one line naming the tool and its log (``-v`` adds
    the traceback), exit code 2, and nothing written to the output folder.
    """
