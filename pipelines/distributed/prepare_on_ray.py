"""`data prepare folder:PATH --parallel`: the folder's chunks decoded by Ray Data tasks.

gan/prepare_chunks.py cuts the folder into chunks of a shard's worth of files; here each
chunk is a row of a Ray Data dataset, and `map` decodes it into its shard on whichever
node has a free CPU: a local Ray uses every core of this machine, a cluster every node.
The tasks write into the writer's partial folder, so on a cluster the folder to prepare
and the place to write must be on a filesystem every node sees (--data-dir /shared/...).
A bad file comes back as the chunk's error (not as a task failure, which Ray would retry
and wrap): the first one, in file order, is the command's one line, and the partial
folder goes with it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

from gan.images import DataError
from gan.prepare_chunks import ChunkDone, ChunkJob, prepare_chunk
from gan.prepared import Shard


def ray_runner(address: str | None) -> Callable[[list[ChunkJob], Callable[[int], None]], Iterator[ChunkDone]]:
    """A Runner (gan/prepare_chunks.py) on the Ray at `address` (None: a local Ray, started
    here when the chunks are ready to run and stopped when they are done)."""

    def run(jobs: list[ChunkJob], progress: Callable[[int], None]) -> Iterator[ChunkDone]:
        import logging

        import ray.data

        from pipelines.distributed.connect import connect, disconnect

        started = connect(address, tracking_uri=None)
        # Ray Data's own bar shows the tasks on a terminal; its INFO lines about each
        # execution (what it logs off a terminal) are not for this command's user
        ray.data.DataContext.get_current().print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            rows = [{"job": json.dumps(dataclasses.asdict(job))} for job in jobs]  # plain text: Arrow-safe
            chunks = ray.data.from_items(rows, override_num_blocks=len(rows))
            done, images, failed = [], 0, []
            for row in chunks.map(_prepare_row, num_cpus=1).iter_rows():
                result = _result(row)
                if isinstance(result, str):
                    failed.append((row["index"], result))
                    continue
                done.append(result)
                images += (result.shard.count if result.shard else 0) + len(result.skipped)
                progress(images)
            if failed:
                raise DataError(min(failed)[1])  # the first bad file in the folder's order
            yield from done
        finally:
            if started:
                disconnect()

    return run


def _prepare_row(row: dict[str, Any]) -> dict[str, Any]:
    """One chunk, on a Ray Data task; its DataError travels back as text."""
    raw = json.loads(row["job"])
    job = ChunkJob(**{**raw, "files": tuple(raw["files"])})
    try:
        done = prepare_chunk(job)
    except DataError as e:
        return {"index": job.index, "error": str(e), "done": ""}
    shard = dataclasses.asdict(done.shard) if done.shard else None
    return {"index": job.index, "error": "", "done": json.dumps({"shard": shard, "skipped": list(done.skipped)})}


def _result(row: dict[str, Any]) -> ChunkDone | str:
    if row["error"]:
        return str(row["error"])
    done = json.loads(row["done"])
    shard = Shard(**done["shard"]) if done["shard"] else None
    return ChunkDone(int(row["index"]), shard, tuple(done["skipped"]))
