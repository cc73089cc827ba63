"""The `gan-pipeline` command line: the only package that knows argparse.

Owns: the parser and every flag (parser.py, flags.py), what each sub-command does with
its flags (commands.py), and here the entry point, which maps errors to exit codes:
a gan.errors.UserError is one line and exit 2 (never a traceback; set
GAN_PIPELINES_DEBUG=1 to see one), Ctrl-C is 130, anything else one line and exit 1.

May import every other part of pipelines/; nothing imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from gan.errors import UserError
from pipelines.errors import TrackingLost


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _quiet()
    return run_command(args.func, args)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    debug = bool(os.environ.get("GAN_PIPELINES_DEBUG"))
    try:
        return func(args)
    except UserError as e:
        if debug:
            raise
        print(f"gan-pipeline {args.command}: error: {_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gan-pipeline {args.command}: interrupted", file=sys.stderr)
        return 130
    except TrackingLost as e:  # not a bug: the message says where the work is and what to run
        if debug:
            raise
        print(f"gan-pipeline {args.command}: stopped: {_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line for the user, the run is already marked
        if debug:
            raise
        print(f"gan-pipeline {args.command}: failed: {type(e).__name__}: {_line(e)} "
              "(GAN_PIPELINES_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


MAX_LINE = 300  # an error is one line a person reads, not a dump of the input


def _line(error: BaseException) -> str:
    first = (str(error).splitlines() or [""])[0]
    return first if len(first) <= MAX_LINE else first[: MAX_LINE - 3] + "..."


def _quiet() -> None:
    # MLflow configures its loggers when first imported: tell it via the environment.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow's tqdm bars for artifact uploads/downloads (checkpoints, models): on a terminal only
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if sys.stderr.isatty() else "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the CLI prints its own links
    # No usage pings from training jobs (often on machines without internet); and MLflow's
    # telemetry thread unsets a variable while `mlflow server` copies its environment, which
    # failed a sweep's private server at start (KeyError '_MLFLOW_TELEMETRY_SESSION_ID').
    # MLFLOW_DISABLE_TELEMETRY=false opts back in.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # A lost tracking server: MLflow's defaults retry one call for minutes in silence.
    # Bounded: ~4 tries, 30 s each at most, then the command fails with one line.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    quiet_known_warnings()
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)


# Warnings that say nothing about this code, by category and the module that issues them;
# every other warning shows (a deprecation of an API this code calls must be seen: the
# test suite fails on one, pyproject.toml's filterwarnings).
KNOWN_NOISE: tuple[tuple[str, type[Warning], str], ...] = (
    # Optuna's importance plot on the sweep's parent run, for a sweep of a few trials.
    ("No artists with labels found to put in legend", UserWarning, "optuna"),
    ("Some regimes for parameter", UserWarning, "optuna"),
    # MLflow's server app imports Starlette's WSGI bridge (a sweep's private server).
    ("starlette.middleware.wsgi is deprecated", UserWarning, "mlflow"),
)


def quiet_known_warnings() -> None:
    for message, category, module in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


__all__ = ["main"]
