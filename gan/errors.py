"""`UserError`: the one base class of every error that is the user's to fix.

Its message is one line naming what is wrong and what is allowed; the CLI prints it and
exits 2, with no traceback. It lives in gan/ (the lowest layer) so that gan's own
errors (config, data, metrics) and pipelines' errors share it without gan importing
anything above it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input or an unusable environment; the message is one line for the user."""
