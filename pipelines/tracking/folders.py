"""Whether a folder can be made and written, found out by trying, not by asking.

os.access asks the permission bits, and root passes every such question: on a read-only
filesystem (/sys, /proc, a read-only mount) it still says yes, and the command then
fails with a PermissionError after its store and runs exist. So a door check makes the
folder's missing parents and writes a file in it, then removes all it made: a refused
command leaves nothing behind, an accepted one finds the place as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def try_folder(folder: str | Path) -> None:
    """Make `folder` (and its missing parents), write a file in it, and remove all of it
    again; the OSError of the step that failed (its filename names where) if one did."""
    folder = Path(folder).expanduser().absolute()
    missing = []  # innermost first
    existing = folder
    while not existing.exists():  # / always exists
        missing.append(existing)
        existing = existing.parent
    made: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:  # made meanwhile by someone else: theirs to keep
                continue
            made.append(d)
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        except OSError as e:  # named by the folder, not by the probe's random name
            raise OSError(e.errno, e.strerror, str(folder)) from None
        os.close(fd)
        os.unlink(probe)
    finally:
        for d in reversed(made):
            with contextlib.suppress(OSError):  # not empty: someone else is using it now
                d.rmdir()
