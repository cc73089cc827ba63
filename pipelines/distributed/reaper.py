"""The local Ray a command started ends with the command, even when it is killed.

ray.init gives the processes it starts itself (gcs_server, raylet, dashboard, ...) the
kernel's parent-death signal, so a driver killed with kill -9 takes them at once. What
the raylet started does not go with them: its dashboard and runtime-env agents notice
the raylet is gone within 2 s, then wait up to 60 s telling the dead GCS about it
(measured: 61 s after a killed sweep driver on 2 cores).

So a command that starts a local Ray also starts this watcher, a small process of its
own session (Ctrl-C in a terminal does not reach it). It polls which processes descend
from the Ray processes the command started, and when the pipe it reads closes (the
command ended: normally, by an error or by SIGKILL alike) it stops those still alive:
SIGTERM, then SIGKILL, each by PID and checked by start time (never a reused PID, never
by name). A cluster joined with --ray-address is never watched.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from typing import Any

POLL_S = 0.5  # a worker started in the last poll before a kill exits by itself once its raylet is gone
GRACE_S = 1.0  # between SIGTERM and SIGKILL, as in Ray's own reaper (ray_process_reaper.py)


def start_watcher(roots: list[int]) -> subprocess.Popen | None:
    """Watch `roots` (PIDs of Ray processes this process started) and all they start;
    the returned process holds the pipe whose closing ends them (see stop_watcher)."""
    if not roots:
        return None
    return subprocess.Popen(  # noqa: S603 - this interpreter, this module
        [sys.executable, "-m", __name__, *map(str, roots)], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_watcher(watcher: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """After ray.shutdown: close the pipe, so the watcher stops any straggler and exits."""
    if watcher is None:
        return
    with contextlib.suppress(OSError):
        assert watcher.stdin is not None
        watcher.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        watcher.wait(timeout=timeout_s)


def child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


def _watch(roots: list[int]) -> list[Any]:
    """The processes of the tree under `roots`, as last seen before stdin closed."""
    import psutil

    tracked: dict[int, psutil.Process] = {}
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            tracked[pid] = psutil.Process(pid)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            return list(tracked.values())
        # Forget the dead first: their PIDs may come back as someone else's process.
        tracked = {pid: p for pid, p in tracked.items() if p.is_running()}
        for p in list(tracked.values()):
            with contextlib.suppress(psutil.Error):
                for child in p.children(recursive=True):
                    tracked.setdefault(child.pid, child)


def _stop(procs: list[Any]) -> None:
    import psutil

    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):  # gone, or its PID reused: not ours
            p.terminate()
            alive.append(p)
    _, left = psutil.wait_procs(alive, timeout=GRACE_S)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()


def main(argv: list[str]) -> None:
    _stop(_watch([int(a) for a in argv]))


if __name__ == "__main__":
    main(sys.argv[1:])
