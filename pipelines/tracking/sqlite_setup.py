"""Opening an MlflowClient, with a new sqlite store set up once even when another process
opens it at the same moment.

MLflow creates a sqlite store's tables and runs its migrations in whichever process
first opens the file, without a lock: two processes opening a new store together (a
`gan-pipeline train` and an `mlflow ui` or a script polling the store, two trials) both
set it up, and the slower one fails (`table experiments already exists`, `duplicate
column name`, `database is locked`, or a schema seen half-way up as out of date). The
set-up goes on from wherever the schema stands, so the process that lost waits until
the schema stops changing (the other finished, or gave up) and opens the store again, a
bounded number of times. A failure that changed nothing in the file is no race: it
propagates at once.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

SETUP_TRIES = 5  # openings of a new sqlite store, the first included
QUIET_S = 1.0  # the schema unchanged this long: whoever was setting it up has stopped
SETTLE_MAX_S = 60.0  # the longest wait for it (a migration from scratch takes 2-5 s)
POLL_S = 0.1


def open_client(uri: str, db: Path | None) -> Any:
    """An MlflowClient on `uri`; `db`: its sqlite file (None for any other store)."""
    from mlflow.tracking import MlflowClient

    if db is None:
        return MlflowClient(uri)
    db = db.expanduser()
    db.parent.mkdir(parents=True, exist_ok=True)  # sqlite makes the file, not its folder
    for attempt in range(1, SETUP_TRIES + 1):
        before = schema_state(db)
        try:
            return MlflowClient(uri)
        except Exception:
            if attempt == SETUP_TRIES or settled_state(db) == before:
                raise
            time.sleep(random.uniform(0.0, 0.3))  # two losers do not start again in step
    raise AssertionError("unreachable")


def schema_state(db: Path) -> Any:
    """What the schema of the sqlite file `db` is now: (sqlite's schema version, alembic's
    revisions), read without creating the file; None when there is no file, and a value
    equal to no other when it cannot be read now (a writer holds it)."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=1)) as c:
            version = c.execute("PRAGMA schema_version").fetchone()[0]
            try:
                revisions = tuple(sorted(r[0] for r in c.execute("SELECT version_num FROM alembic_version")))
            except sqlite3.OperationalError:  # no such table (yet)
                revisions = ()
            return version, revisions
    except sqlite3.Error:
        return object()


def settled_state(db: Path, quiet_s: float = QUIET_S, max_s: float = SETTLE_MAX_S) -> Any:
    """The schema state of `db` once it has not changed for `quiet_s` (or `max_s` passed)."""
    deadline = time.monotonic() + max_s
    last, since = schema_state(db), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        now = schema_state(db)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last
