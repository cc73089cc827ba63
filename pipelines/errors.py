"""The kinds of user error pipelines/ raises. All derive from gan.errors.UserError, the
one class the CLI maps to "one line on stderr, exit 2": nothing needs the CLI to know
whether an error is the user's. Imports nothing of pipelines/ (it is the bottom layer).
"""

from __future__ import annotations

from gan.config import ConfigError
from gan.errors import UserError


class TrackingError(UserError):
    """The tracking store, a run or a registered model cannot be used as asked."""


class ClusterError(UserError):
    """The Ray cluster cannot be reached or cannot run what was asked."""


class SearchSpaceError(ConfigError):
    """A search space file is invalid; the message names the file and the key."""


class RunDiverged(RuntimeError):
    """Not a user error (exit 1): the health guard stopped a run whose GAN failed; the run
    is FAILED with the reason in its stopped_reason tag and keeps what it logged."""


class TrackingLost(RuntimeError):
    """Not a user error (exit 1): the tracking server went away mid-run and was not back
    in time. The run trained on; what it would have logged is kept on local disk (the
    message says where) and `train --resume RUN_ID` sends it once the server is back."""


__all__ = ["ClusterError", "ConfigError", "RunDiverged", "SearchSpaceError", "TrackingError", "TrackingLost",
           "UserError"]
