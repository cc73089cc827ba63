"""A folder of images prepared once (`folder:PATH`), in bounded memory.

Each image is opened, decoded near the target size (JPEG draft mode: libjpeg scales by
1/2, 1/4 or 1/8 while decoding), converted, centre-cropped to a square and resized with
bicubic resampling, then put in its chunk's shard (gan/prepare_chunks.py: a chunk is a
shard's worth of files, decoded here or on Ray Data tasks); a process holds one image
and one shard at a time. The copy is kept under the data dir, named by a key over the
folder's absolute path, its image files' relative paths, sizes and modification times,
and the image size: the next run finds it from a directory listing, decoding nothing,
and a changed folder (a file added, removed or rewritten) gets a new copy.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from gan.decode_image import GRAY_MODES, SKIP_HINT, BadImage, opened
from gan.image_folder import Entry, LocalFolder, UriFolder, image_folder
from gan.images import DataError
from gan.prepare_chunks import ChunkJob, Runner, run_here
from gan.prepared import FORMAT_VERSION, Manifest
from gan.prepared_writer import Prepared, Progress, ShardWriter, find_reusable, location, tqdm_progress

FOLDER_DEFAULT_SIZE = 32
ImageFolder = LocalFolder | UriFolder
# Files per chunk, and so per shard: small enough that a folder of a few thousand photos
# (tens of ms each to decode) spreads over many cores with --parallel, and the same
# whether it does or not, so a folder prepared either way has one digest.
FOLDER_CHUNK = 256


def folder_key(folder: ImageFolder, entries: list[Entry], image_size: int) -> str:
    """The folder's identity at a size, from a listing alone (nothing is decoded)."""
    listed = [[e.name, e.size, e.mtime_ns] for e in entries]
    body = json.dumps([FORMAT_VERSION, "folder", folder.spec, image_size, listed], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def prepare_folder(path: str | Path, image_size: int = 0, data_dir: str | Path = "./data",
                   out: str | Path | None = None, skip_bad: bool = False,
                   progress: Progress | None = None, runner: Runner | None = None) -> Prepared:
    """Prepare `path` at `image_size` (0: 32) once, into data_dir/prepared/ (or `out`),
    or find the copy made before. skip_bad: bad files are listed in the manifest and
    left out instead of failing. runner: where the chunks are decoded (default: here,
    one after the other; gan/prepare_chunks.py)."""
    folder = image_folder(path)
    size = image_size or FOLDER_DEFAULT_SIZE
    entries = folder.entries()
    key = folder_key(folder, entries, size)
    final = Path(out).expanduser().absolute() if out else location(data_dir, folder.name, size, key)
    found = find_reusable(final, key)
    if found is not None:
        return Prepared(found, reused=True)
    skipped: list[dict[str, str]] = []
    mode, names = _decide_mode(folder, [e.name for e in entries], skip_bad, skipped)
    with ShardWriter(final, (1 if mode == "L" else 3, size, size), False, len(names), FOLDER_CHUNK) as writer:
        step = writer.per_shard
        jobs = [ChunkJob(i, folder.spec, tuple(names[lo:lo + step]), mode, size, str(writer.partial), skip_bad)
                for i, lo in enumerate(range(0, len(names), step))]
        report = (lambda done: progress(done, len(names))) if progress is not None else (lambda done: None)
        for done in sorted((runner or run_here)(jobs, report), key=lambda d: d.index):
            skipped.extend(done.skipped)
            if done.shard is not None:
                writer.add_shard(done.shard)
        return writer.finish(f"folder:{folder.spec}", folder.name, key, size, skipped)


def scan_folder(path: str | Path) -> None:
    """What preparing would refuse without decoding a pixel (a missing or empty folder, a
    file that does not open, mixed gray and colour): checks to run before another refusal."""
    folder = image_folder(path)
    _decide_mode(folder, [e.name for e in folder.entries()], False, [])


def folder_prepared(spec: str, image_size: int, data_dir: str | Path) -> Manifest:
    """`folder:PATH` for training: its prepared copy, made first if missing (saying so in
    one line on stderr); gan/data.py reads it into memory or streams it."""
    with tqdm_progress(f"preparing {spec}") as progress:
        prepared = prepare_folder(spec[len("folder:"):], image_size, data_dir, progress=progress)
    m = prepared.manifest
    if not prepared.reused:
        print(f"dataset {spec}: prepared {m.count} images at {m.image_size} px once, kept in {m.path} "
              "(later runs read it; gan-pipeline data prepare does this ahead)", file=sys.stderr)
    return m


def _decide_mode(folder: ImageFolder, files: list[str], skip_bad: bool,
                 skipped: list[dict[str, str]]) -> tuple[str, list[str]]:
    """L or RGB from the files' headers alone (no pixel is decoded); mixed gray and colour
    is an error naming one file of each. Also finds the files that do not open."""
    good: list[str] = []
    first: dict[bool, tuple[str, str]] = {}
    for name in files:
        try:
            with opened(folder, name) as im:
                first.setdefault(im.mode in GRAY_MODES, (name, im.mode))
        except BadImage as e:
            if not skip_bad:
                raise DataError(f"{e}: {SKIP_HINT}") from None
            skipped.append({"file": name, "reason": e.reason})
            continue
        good.append(name)
    if True in first and False in first:
        (gray, gray_mode), (colour, colour_mode) = first[True], first[False]
        raise DataError(f"dataset folder {folder.spec!r} mixes gray and colour images ({gray} is "
                        f"{gray_mode}, {colour} is {colour_mode}): convert them to one mode, "
                        "all gray or all RGB")
    if not good:
        raise DataError(f"dataset folder {folder.spec!r}: none of its {len(files)} images can be read")
    return ("L" if True in first else "RGB"), good
