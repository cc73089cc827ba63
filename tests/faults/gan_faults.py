"""Test-only fault injection: the product carries no test switches.

A test that needs a process to die at an exact point puts this folder on PYTHONPATH
(Python then imports its sitecustomize.py, which installs these hooks, at start-up in
every process the test starts: the CLI, a local Ray's workers, Tune's trial actors) and
GAN_PIPELINES_FAULTS naming a folder; a test's own process calls install(folder). A
fault is armed by a file in that folder and fires once (its file is removed as it fires):

    die_at_eval       (text: N) kill -9 as the N-th scored eval of a run is about to be
                      logged: its losses are in the run, its scores not
    die_when_pruned   kill -9 as Tune stops a sweep trial, before it closes its run
    slow_when_pruned  (text: S) the first trial Tune stops takes S seconds longer to close
    fail_once         a Ray Train rank 1 exits after its first checkpoint reached Ray
    fail_at_eval      (text: N) the N-th eval a run logs in a process raises, once: a
                      crash the run is marked FAILED for, after a checkpoint (counted
                      per run: a test's own process has logged other runs' evals before)
    fail_in_run       (text: a run-name prefix, such as t04) the first eval of the run whose
                      name starts with it raises, once: armed before a sweep, it crashes
                      exactly that trial, however fast the trials before it end
    hold              the first eval waits while the file exists (not removed as it
                      fires); `held` then holds the run's id: a test acts mid-run

The product's modules are patched right after they are imported, and only when armed
at call time, so a long-lived worker can be armed after it started.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

FAULTS = os.environ.get("GAN_PIPELINES_FAULTS")


def fire(name: str) -> str | None:
    """The armed fault's text, disarming it; None when it is not armed (or another
    process fired it first: unlink is atomic)."""
    path = Path(FAULTS or "") / name
    try:
        text = path.read_text()
        path.unlink()
    except FileNotFoundError:
        return None
    return text


def _patch_callbacks(module: Any) -> None:
    cls = module.MlflowCallbacks
    original = cls.on_scored
    seen = {"n": 0}

    def on_scored(self: Any, epoch: int, step: int, *args: Any, **kwargs: Any) -> None:
        seen["n"] += 1
        armed = Path(FAULTS or "") / "die_at_eval"
        if armed.exists() and armed.read_text().strip() == str(seen["n"]) and fire("die_at_eval") is not None:
            self.flush()  # the losses so far are in the run
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, epoch, step, *args, **kwargs)

    original_eval = cls.on_eval
    evals: dict[str, int] = {}

    def on_eval(self: Any, *args: Any, **kwargs: Any) -> None:
        evals[self.run_id] = n = evals.get(self.run_id, 0) + 1
        failing = Path(FAULTS or "") / "fail_at_eval"
        if failing.exists() and failing.read_text().strip() == str(n) and fire("fail_at_eval") is not None:
            raise RuntimeError("injected by the test's fail_at_eval fault")
        named = Path(FAULTS or "") / "fail_in_run"
        if named.exists() and self.client.get_run(self.run_id).info.run_name.startswith(named.read_text().strip()) \
                and fire("fail_in_run") is not None:
            raise RuntimeError("injected by the test's fail_in_run fault")
        hold = Path(FAULTS or "") / "hold"
        if hold.exists():
            (Path(FAULTS or "") / "held").write_text(self.run_id)
            while hold.exists():
                time.sleep(0.1)
        original_eval(self, *args, **kwargs)

    cls.on_scored, cls.on_eval = on_scored, on_eval


def _patch_runs(module: Any) -> None:
    cls = getattr(module, "TrackedRun", None)
    if cls is None:  # a build without the lifecycle object (a test run against an old build)
        return
    original_prune = cls.prune

    def prune(self: Any, reason: str) -> None:
        if fire("die_when_pruned") is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        slow = fire("slow_when_pruned")
        if slow is not None:
            time.sleep(float(slow))
        original_prune(self, reason)

    cls.prune = prune


# Ray Train registers a checkpoint only once it has polled every rank's report (every
# 2 s); a rank that dies before that poll takes the report with it. Wait past two polls.
_FAIL_AFTER_S = 5.0


def _patch_worker(module: Any) -> None:
    cls = module.RayTrainCallbacks
    original = cls.on_checkpoint

    def on_checkpoint(self: Any, epoch: int, step: int, state: dict) -> None:
        original(self, epoch, step, state)
        if self.rank == 1 and fire("fail_once") is not None:
            time.sleep(_FAIL_AFTER_S)
            os._exit(1)

    cls.on_checkpoint = on_checkpoint


PATCHES = {
    "pipelines.tracking.callbacks": _patch_callbacks,
    "pipelines.tracking.runs": _patch_runs,
    "pipelines.distributed.worker": _patch_worker,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a patched module so the patch runs
    right after the module's own code."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader, patch = spec.loader, PATCHES[name]
        run_module = loader.exec_module  # type: ignore[attr-defined]

        def exec_module(module: Any) -> None:
            run_module(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install(folder: str | None = None) -> None:
    """Patch the product's modules: those imported already now, the others as they are."""
    global FAULTS
    FAULTS = folder or FAULTS
    if not FAULTS or any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        return
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _PatchAfterImport())
