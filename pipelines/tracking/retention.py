"""Checkpoint retention: a run keeps its newest `keep_checkpoints` checkpoints and the
one of its best eval; the rest are deleted from its artifacts as new ones arrive."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipelines.tracking import names


def prune_checkpoints(client: Any, run_id: str, keep: int, also_keep: str | None = None) -> list[str]:
    """Delete a run's checkpoints but the newest `keep` (and `also_keep`, the best eval's);
    returns what was deleted. Stores that cannot delete keep everything (with a warning)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    found = sorted(a.path for a in client.list_artifacts(run_id, names.CHECKPOINT_DIR) if a.path.endswith(".pt"))
    doomed = [p for p in found[:-keep] if Path(p).name != also_keep]
    if not doomed:
        return []
    repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri, tracking_uri=client.tracking_uri)
    try:
        for p in doomed:
            repo.delete_artifacts(p)
    except (NotImplementedError, OSError) as e:
        print(f"warning: old checkpoints kept: this artifact store cannot delete ({e})", file=sys.stderr)
        return []
    return doomed
