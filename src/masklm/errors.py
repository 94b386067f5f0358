"""The one exception type meant for users.

Raise `UserError("what is wrong; how to fix it")` anywhere; the CLI prints it as one line and exits with code 2.
"""

import errno


class UserError(Exception):
    """A problem with the user's input, configuration or files (not a bug in masklm)."""


# The machine's problems, not masklm's: a full disk or quota, a file too large, a read-only or forbidden folder.
# The CLI says them in one line ("free disk space or fix permissions"), whichever command met them.
ENVIRONMENT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
