"""What a run could not send while its tracking server was away, kept on local disk
until it can be sent: per-step metric rows, evals (grid + scores), the generators that
earned a best/final role, and checkpoints, in the order they happened.

One folder per run, <cache>/offline/<run_id>/: `meta.json` (who writes it, the run's
config and image shape, since when the server is gone), `events.jsonl` (one JSON line an
event; arrays and weights in files beside it) and `sent` (how many events already
reached the server: a replay interrupted by a second outage resumes after them, so no
step is logged twice). Nothing here is unpickled: grids are PNGs, weights load with
weights_only, the rest is JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from gan.checkpoint import checkpoint_name
from gan.metrics.base import cache_root

OFFLINE_DIR = "offline"


def outbox_dir(run_id: str) -> Path:
    return cache_root() / OFFLINE_DIR / run_id


class Outbox:
    """The local spool of one run. Events in memory are dicts with live objects (a grid
    array, a generator module, a checkpoint path); on disk, JSON plus files."""

    def __init__(self, run_id: str) -> None:
        self.run_id, self.dir = run_id, outbox_dir(run_id)

    def exists(self) -> bool:
        return (self.dir / "events.jsonl").exists()

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

    def keep(self, event: dict[str, Any]) -> None:
        """Append one event; its payload goes to a file beside the log."""
        line = {k: v for k, v in event.items() if k not in ("grid", "generator", "path")}
        step = int(event.get("step", 0))
        if "grid" in event:
            from PIL import Image

            name = f"grid_{step:09d}.png"
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
        with open(self.dir / "events.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def pending(self, build_generator: Any = None) -> list[dict[str, Any]]:
        """The events not yet sent, payloads loaded back. build_generator() makes an empty
        generator of the run's architecture for a kept state dict."""
        lines = (self.dir / "events.jsonl").read_text().splitlines()
        events = []
        for raw in lines[self.sent():]:
            event = json.loads(raw)
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
        path = self.dir / "sent"
        return int(path.read_text()) if path.exists() else 0

    def mark_sent(self, count: int) -> None:
        _write_atomic(self.dir / "sent", str(count))

    def size(self) -> int:
        path = self.dir / "events.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

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
