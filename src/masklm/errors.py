"""The one exception type meant for users.

Raise `UserError("what is wrong; how to fix it")` anywhere; the CLI prints it as one line and exits with code 2.
"""


class UserError(Exception):
    """A problem with the user's input, configuration or files (not a bug in masklm)."""
