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
import os
import sys
from pathlib import Path

from gan.decode_image import GRAY_MODES, SKIP_HINT, BadImage, opened
from gan.images import DataError
from gan.prepare_chunks import ChunkJob, Runner, run_here
from gan.prepared import FORMAT_VERSION, Manifest
from gan.prepared_writer import Prepared, Progress, ShardWriter, find_reusable, location, tqdm_progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FOLDER_DEFAULT_SIZE = 32
# Files per chunk, and so per shard: small enough that a folder of a few thousand photos
# (tens of ms each to decode) spreads over many cores with --parallel, and the same
# whether it does or not, so a folder prepared either way has one digest.
FOLDER_CHUNK = 256


def list_images(root: Path) -> list[Path]:
    """The folder's image files (by suffix, in subfolders too), sorted as paths sort."""
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist or is not a folder")

    def unreadable(e: OSError) -> None:
        raise DataError(f"dataset folder {str(e.filename)!r} cannot be read ({e.strerror or e})")

    files = [Path(folder) / name for folder, _, names in os.walk(root, onerror=unreadable)
             for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"dataset folder {str(root)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return sorted(files)


def folder_key(root: Path, files: list[Path], image_size: int) -> str:
    """The folder's identity at a size, from a listing alone (nothing is decoded)."""
    entries = []
    for f in files:
        try:
            st = f.stat()
            entries.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
        except OSError:  # a broken link: it is reported as a bad file when it is opened
            entries.append([str(f.relative_to(root)), -1, -1])
    body = json.dumps([FORMAT_VERSION, "folder", str(root), image_size, entries], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def prepare_folder(path: str | Path, image_size: int = 0, data_dir: str | Path = "./data",
                   out: str | Path | None = None, skip_bad: bool = False,
                   progress: Progress | None = None, runner: Runner | None = None) -> Prepared:
    """Prepare `path` at `image_size` (0: 32) once, into data_dir/prepared/ (or `out`),
    or find the copy made before. skip_bad: bad files are listed in the manifest and
    left out instead of failing. runner: where the chunks are decoded (default: here,
    one after the other; gan/prepare_chunks.py)."""
    root = Path(path).expanduser().resolve()
    size = image_size or FOLDER_DEFAULT_SIZE
    files = list_images(root)
    key = folder_key(root, files, size)
    final = Path(out).expanduser().absolute() if out else location(data_dir, root.name, size, key)
    found = find_reusable(final, key)
    if found is not None:
        return Prepared(found, reused=True)
    skipped: list[dict[str, str]] = []
    mode, good = _decide_mode(root, files, skip_bad, skipped)
    with ShardWriter(final, (1 if mode == "L" else 3, size, size), False, len(good), FOLDER_CHUNK) as writer:
        names = [str(f.relative_to(root)) for f in good]
        step = writer.per_shard
        jobs = [ChunkJob(i, str(root), tuple(names[lo:lo + step]), mode, size, str(writer.partial), skip_bad)
                for i, lo in enumerate(range(0, len(names), step))]
        report = (lambda done: progress(done, len(good))) if progress is not None else (lambda done: None)
        for done in sorted((runner or run_here)(jobs, report), key=lambda d: d.index):
            skipped.extend(done.skipped)
            if done.shard is not None:
                writer.add_shard(done.shard)
        return writer.finish(f"folder:{root}", root.name, key, size, skipped)


def scan_folder(path: str | Path) -> None:
    """What preparing would refuse without decoding a pixel (a missing or empty folder, a
    file that does not open, mixed gray and colour): checks to run before another refusal."""
    root = Path(path).expanduser().resolve()
    _decide_mode(root, list_images(root), False, [])


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


def _decide_mode(root: Path, files: list[Path], skip_bad: bool,
                 skipped: list[dict[str, str]]) -> tuple[str, list[Path]]:
    """L or RGB from the files' headers alone (no pixel is decoded); mixed gray and colour
    is an error naming one file of each. Also finds the files that do not open."""
    good: list[Path] = []
    first: dict[bool, tuple[Path, str]] = {}
    for f in files:
        try:
            with opened(f) as im:
                first.setdefault(im.mode in GRAY_MODES, (f, im.mode))
        except BadImage as e:
            if not skip_bad:
                raise DataError(f"{e}: {SKIP_HINT}") from None
            skipped.append({"file": str(f.relative_to(root)), "reason": e.reason})
            continue
        good.append(f)
    if True in first and False in first:
        (gray, gray_mode), (colour, colour_mode) = first[True], first[False]
        raise DataError(f"dataset folder {str(root)!r} mixes gray and colour images ({gray.relative_to(root)} is "
                        f"{gray_mode}, {colour.relative_to(root)} is {colour_mode}): convert them to one mode, "
                        "all gray or all RGB")
    if not good:
        raise DataError(f"dataset folder {str(root)!r}: none of its {len(files)} images can be read")
    return ("L" if True in first else "RGB"), good
