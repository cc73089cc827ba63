"""Reading a run back: what it already holds, so a resumed or restarted run continues
where it stopped (last step, newest checkpoint, sample grids, eval scores), gathered as
Restored."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gan.callbacks import SHIFT_KEY
from gan.checkpoint import load_checkpoint
from gan.config import RunConfig, make_config
from gan.step_metrics import STEP_METRICS
from pipelines.compat.mlflow_api import image_file_pattern
from pipelines.tracking import names

# The sample grids' files, as log_image names them (its naming: compat.mlflow_api); group 1 the step.
_GRID_FILE = image_file_pattern(names.GRID_KEY)


def logged_config(client: Any, run_id: str) -> Any:
    """The run's resolved config as it logged it (config.yaml, parsed safely: it may be
    another user's), or None when it has none (not a gan-pipelines training run)."""
    import tempfile

    from gan.config import safe_yaml

    if names.CONFIG_FILE not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory(prefix="gan-config-") as tmp:
        text = Path(client.download_artifacts(run_id, names.CONFIG_FILE, tmp)).read_text()
    return safe_yaml(text, f"run {run_id}'s {names.CONFIG_FILE}")


def last_logged_step(client: Any, run_id: str) -> int:
    """The highest step already logged for the per-step losses (0 for a fresh run)."""
    history = client.get_metric_history(run_id, STEP_METRICS[0])
    return max((m.step for m in history), default=0)


def last_eval_step(client: Any, run_id: str) -> int:
    """The step of the run's last logged eval (0 for none): each metric kind resumes from
    its own floor, so an eval a kill interrupted is redone, once."""
    return max((m.step for m in client.get_metric_history(run_id, names.EPOCH)), default=0)


class NoIntactCheckpoint(Exception):  # noqa: N818 - a condition the caller reports
    """Every checkpoint of the run is unreadable (the message names them)."""


def latest_checkpoint(client: Any, run_id: str, dest: str | Path) -> dict[str, Any] | None:
    """Download and load (weights_only) the newest intact checkpoint of a run: a torn or
    corrupt newest one falls back to the one before it, with a warning. None when the run
    has none; NoIntactCheckpoint when it has some and none loads."""
    found = sorted(a.path for a in client.list_artifacts(run_id, names.CHECKPOINT_DIR) if a.path.endswith(".pt"))
    bad = []
    for name in reversed(found):
        local = client.download_artifacts(run_id, name, str(dest))
        try:
            state = load_checkpoint(local)
        except Exception as e:  # noqa: BLE001 - torn zip, wrong format, unpickling refused: all unusable
            bad.append(f"{Path(name).name} ({type(e).__name__})")
            print(f"warning: checkpoint {name} of run {run_id} is unreadable ({type(e).__name__}); "
                  "trying the one before it", file=sys.stderr)
            continue
        return state
    if bad:
        raise NoIntactCheckpoint(f"run {run_id} has no intact checkpoint left: {', '.join(bad)}")
    return None


def logged_eval_history(client: Any, run_id: str) -> list[tuple[int, dict[str, float]]]:
    """The eval metrics a run holds, by step: every metric logged at an eval step (the
    steps of the `epoch` metric that on_eval writes) other than the per-step losses and the
    system metrics (sampled at steps of their own, which an eval's step may equal)."""
    eval_steps = {m.step for m in client.get_metric_history(run_id, names.EPOCH)}
    keys = {k for k in client.get_run(run_id).data.metrics if not k.startswith(names.SYSTEM_PREFIX)}
    keys -= set(STEP_METRICS) | {names.EPOCH}
    history: dict[int, dict[str, float]] = {s: {} for s in eval_steps}
    for key in sorted(keys):
        for m in client.get_metric_history(run_id, key):
            if m.step in history:
                history[m.step][key] = m.value
    return sorted(history.items())


def logged_grids(client: Any, run_id: str, dest: str | Path) -> list[tuple[int, np.ndarray]]:
    """The sample grids a run already logged, by step (to rebuild the GIF after a resume)."""
    from PIL import Image

    frames = []
    for art in client.list_artifacts(run_id, names.IMAGES_DIR):
        m = _GRID_FILE.match(Path(art.path).name)
        if m:
            path = client.download_artifacts(run_id, art.path, str(dest))
            frames.append((int(m.group(1)), np.asarray(Image.open(path))))
    return sorted(frames, key=lambda f: f[0])


def eval_epochs(client: Any, run_id: str) -> dict[int, int]:
    """step -> epoch of a run's evals (on_eval logs `epoch` at the eval's step)."""
    return {m.step: int(m.value) for m in client.get_metric_history(run_id, names.EPOCH)}


@dataclass
class Restored:
    """Where a run continues from: its newest intact checkpoint (None: from the start),
    the last step of each kind it holds (losses, evals) and its grids so far. `warm`: the
    weights a fresh run starts from instead of its seed's (a fine-tune of another run's
    checkpoint, `train --from --warm`); `state`, when there is one, wins."""

    state: dict[str, Any] | None = None
    floor: int = 0
    eval_floor: int = 0
    frames: list[tuple[int, np.ndarray]] = field(default_factory=list)
    warm: dict[str, Any] | None = None

    @property
    def run_step(self) -> int | None:
        """The run's step the state continues from: its training step, plus its step shift
        (a population member's state may be another member's, which took other steps)."""
        if self.state is None:
            return None
        return int(self.state["step"]) + int(self.state.get(SHIFT_KEY, 0))

    def config(self, cfg: RunConfig) -> RunConfig:
        """The config the run continues with: its checkpoint's own (it reproduces the run)."""
        return make_config(self.state["config"]) if self.state is not None else cfg
