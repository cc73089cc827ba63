"""What a run could not send while its tracking server was away, kept on local disk
until it can be sent: per-step metric rows, evals (grid + scores), copy-check panels, the
generators that earned a best/final role, and checkpoints, in the order they happened.

One folder per run, <cache>/offline/<run_id>/: `meta.json` (who writes it, the run's
config and image shape, since when the server is gone), `events.jsonl` (one JSON line an
event; arrays and weights in files beside it) and `sent` (how many events already
reached the server: a replay interrupted by a second outage resumes after them, so no
step is logged twice). Nothing here is unpickled: grids are PNGs, weights load with
weights_only, the rest is JSON.

A kill while an event is appended leaves a torn last line: that event never happened
(its callback never returned), so reading skips it, with a warning, and the next append
cuts it off first. A torn line before others is damage, not a kill, and an error.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from gan.checkpoint import checkpoint_name
from gan.metrics.base import cache_root
from pipelines.errors import TrackingError

OFFLINE_DIR = "offline"


def outbox_dir(run_id: str) -> Path:
    return cache_root() / OFFLINE_DIR / run_id


class Outbox:
    """The local spool of one run. Events in memory are dicts with live objects (a grid
    array, a generator module, a checkpoint path); on disk, JSON plus files."""

    def __init__(self, run_id: str) -> None:
        self.run_id, self.dir = run_id, outbox_dir(run_id)
        self.log = self.dir / "events.jsonl"
        self._said_torn = False

    def exists(self) -> bool:
        return self.log.exists()

    def open(self, cfg: dict[str, Any] | None, image_shape: tuple[int, ...] | None, reason: str) -> None:
        """Start (or continue) spooling: record this process as the writer."""
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.meta() or {"since": time.time(), "cfg": cfg, "image_shape": list(image_shape or ())}
        meta.update(host=socket.gethostname(), pid=os.getpid(), reason=reason)
        _write_atomic(self.dir / "meta.json", json.dumps(meta))

    def meta(self) -> dict[str, Any] | None:
        path = self.dir / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def writer_alive(self) -> bool:
        """Whether the process that spools here still runs (on this host)."""
        meta = self.meta() or {}
        if meta.get("host") != socket.gethostname() or meta.get("pid") in (None, os.getpid()):
            return False
        try:
            os.kill(int(meta["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def check_writer_gone(self) -> None:
        """TrackingError (exit 2) while the process that spools here still runs: its writes
        are not this process's to send, nor its run to take (its lease may look stale
        right after an outage)."""
        if self.writer_alive():
            raise TrackingError(f"run {self.run_id}: pid {(self.meta() or {}).get('pid')} on this machine still "
                                f"trains it, keeping its writes in {self.dir} while the tracking server was away: "
                                "let it end")

    def keep(self, event: dict[str, Any]) -> None:
        """Append one event; its payload goes to a file beside the log."""
        line = {k: v for k, v in event.items() if k not in ("grid", "generator", "path")}
        step = int(event.get("step", 0))
        if "grid" in event:
            from PIL import Image

            # by kind: an improved eval keeps two pictures at its step (its copy check, its grid)
            name = f"{'copies' if event['kind'] == 'copies' else 'grid'}_{step:09d}.png"
            Image.fromarray(event["grid"]).save(self.dir / name)
            line["grid"] = name
        if "generator" in event:
            import torch

            name = f"generator_{step:09d}.pt"
            state = {k: v.detach().cpu() for k, v in event["generator"].state_dict().items()}
            torch.save(state, self.dir / name)
            line["generator"] = name
        if "path" in event:  # a checkpoint: moved in (it lives nowhere else now)
            name = checkpoint_name(int(event["epoch"]))
            shutil.copyfile(event["path"], self.dir / name)
            line["path"] = name
        self._cut_torn_tail()
        with open(self.log, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def pending(self, build_generator: Any = None) -> list[dict[str, Any]]:
        """The events not yet sent, payloads loaded back. build_generator() makes an empty
        generator of the run's architecture for a kept state dict."""
        events = []
        for event in self._events()[self.sent():]:
            if "grid" in event:
                from PIL import Image

                event["grid"] = np.asarray(Image.open(self.dir / event["grid"]))
            if "generator" in event:
                import torch

                generator: nn.Module = build_generator()
                generator.load_state_dict(torch.load(self.dir / event["generator"], weights_only=True))
                event["generator"] = generator
            if "path" in event:
                event["path"] = self.dir / event["path"]
            events.append(event)
        return events

    def sent(self) -> int:
        """How many events already reached the server (never more than are kept; an
        unreadable count is 0: a replay skips what the server already holds)."""
        path = self.dir / "sent"
        try:
            count = int(path.read_text())
        except (OSError, ValueError):
            return 0
        return max(0, min(count, self.size()))

    def mark_sent(self, count: int) -> None:
        _write_atomic(self.dir / "sent", str(count))

    def size(self) -> int:
        """How many whole events are kept (a torn last line is none)."""
        return len(self._events())

    def _events(self) -> list[dict[str, Any]]:
        """The kept events as written, without a torn last line (said once)."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        events = []
        for n, raw in enumerate(lines, start=1):
            try:
                events.append(json.loads(raw))
            except json.JSONDecodeError:
                if n < len(lines):
                    raise TrackingError(
                        f"{self.log} line {n} is not a JSON event (only the last line can be torn by a kill): "
                        "the outbox is damaged; move it aside to go on without what it keeps") from None
                self._say_torn()
        return events

    def _cut_torn_tail(self) -> None:
        """An append after a torn last line would glue onto it: cut it off first (a whole
        event that lost only its newline gets the newline)."""
        if not self.log.exists() or self.log.stat().st_size == 0:
            return
        with open(self.log, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()  # rare (a kill mid-append): the whole log is read once
            cut = data.rfind(b"\n") + 1
            try:
                json.loads(data[cut:])
                f.write(b"\n")
            except ValueError:
                self._say_torn()
                f.truncate(cut)

    def _say_torn(self) -> None:
        if not self._said_torn:
            self._said_torn = True
            print(f"warning: {self.log}: its last event is torn (the process was killed while writing it); "
                  "it is skipped", file=sys.stderr)

    def drop_checkpoints(self, keep: int, also_keep: str | None) -> None:
        """The retention policy, offline: the newest `keep` kept checkpoint files (and the
        best eval's) stay; a replay skips the events whose file is gone."""
        if keep <= 0:
            return
        found = sorted(self.dir.glob("epoch_*.pt"))
        for path in found[:-keep]:
            if path.name != also_keep:
                path.unlink()

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    """A kill mid-write leaves the old file, never half of the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
