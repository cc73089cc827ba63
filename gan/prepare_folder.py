"""A folder of images prepared once (`folder:PATH`), in bounded memory.

Each image is opened, decoded near the target size (JPEG draft mode: libjpeg scales by
1/2, 1/4 or 1/8 while decoding), converted, centre-cropped to a square and resized with
bicubic resampling, then appended to the shard being written; only one image and one
shard are held at a time. The copy is kept under the data dir, named by a key over the
folder's absolute path, its image files' relative paths, sizes and modification times,
and the image size: the next run finds it from a directory listing, decoding nothing,
and a changed folder (a file added, removed or rewritten) gets a new copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gan.images import DataError, ImageData
from gan.prepared import FORMAT_VERSION, load_prepared
from gan.prepared_writer import Prepared, Progress, ShardWriter, find_reusable, location, tqdm_progress

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FOLDER_DEFAULT_SIZE = 32
GRAY_MODES = ("1", "L", "I", "I;16", "F")  # kept as one channel; every other mode becomes RGB
# Draft mode decodes to at least this many times the target size, so the bicubic resize
# still has pixels to average, and at 1/4 of full size at least: libjpeg's 1/8 keeps only
# each block's mean (0.6 grey levels off full decoding on average, 7 at sharp edges, where
# 1/4 and 1/2 stay within 1), and is barely faster (the entropy decoding is the same).
DRAFT_MARGIN = 4
DRAFT_LIMIT = 1 / 4
SKIP_HINT = "remove it, or skip bad files: gan-pipeline data prepare folder:PATH --skip-bad"


class BadImage(Exception):
    """One file that cannot be used; `reason` completes 'dataset folder file F ...'."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"dataset folder file {str(file)!r} {reason}")
        self.file, self.reason = file, reason


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
                   progress: Progress | None = None) -> Prepared:
    """Prepare `path` at `image_size` (0: 32) once, into data_dir/prepared/ (or `out`),
    or find the copy made before. skip_bad: bad files are listed in the manifest and
    left out instead of failing."""
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
    with ShardWriter(final, (1 if mode == "L" else 3, size, size), False, len(good)) as writer:
        for done, f in enumerate(good, 1):
            try:
                writer.add(decode(f, mode, size))
            except BadImage as e:
                if not skip_bad:
                    raise DataError(f"{e}: {SKIP_HINT}") from None
                skipped.append({"file": str(f.relative_to(root)), "reason": e.reason})
            if progress is not None:
                progress(done, len(good))
        return writer.finish(f"folder:{root}", root.name, key, size, skipped)


def scan_folder(path: str | Path) -> None:
    """What preparing would refuse without decoding a pixel (a missing or empty folder, a
    file that does not open, mixed gray and colour): checks to run before another refusal."""
    root = Path(path).expanduser().resolve()
    _decide_mode(root, list_images(root), False, [])


def load_folder(spec: str, image_size: int, data_dir: str | Path) -> ImageData:
    """`folder:PATH` for training: its prepared copy in memory, made first if missing
    (saying so in one line on stderr)."""
    with tqdm_progress(f"preparing {spec}") as progress:
        prepared = prepare_folder(spec[len("folder:"):], image_size, data_dir, progress=progress)
    m = prepared.manifest
    if not prepared.reused:
        print(f"dataset {spec}: prepared {m.count} images at {m.image_size} px once, kept in {m.path} "
              "(later runs read it; gan-pipeline data prepare does this ahead)", file=sys.stderr)
    return load_prepared(m.path, name=spec)


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


@contextlib.contextmanager
def opened(file: Path) -> Iterator[Image.Image]:
    """Image.open with the decompression-bomb refusal; any failure, in opening or in
    decoding within the block, is a BadImage naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL only warns below 2x its limit: refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(file, f"is too large to decode safely (over {Image.MAX_IMAGE_PIXELS} pixels): "
                       "resize it") from None
    except UnidentifiedImageError:  # no format PIL knows (its message only repeats the name)
        raise BadImage(file, "is not a readable image") from None
    except Exception as e:  # noqa: BLE001 - PIL signals a corrupt file with many types (OSError, SyntaxError, ...)
        detail = (str(e).splitlines() or [""])[0][:80] or type(e).__name__
        raise BadImage(file, f"is not a readable image ({detail})") from None


def decode(file: Path, mode: str, size: int) -> np.ndarray:
    """One file as uint8 [C, size, size]: draft-decoded, converted, centre square, bicubic."""

    with opened(file) as im:
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2  # the centre square, in the file's pixels
        scale, k = max(DRAFT_MARGIN * size / s, DRAFT_LIMIT), 1.0
        if im.format == "JPEG" and scale < 1:
            drafted = im.draft(None, (math.ceil(w * scale), math.ceil(h * scale)))
            if drafted is not None:  # decoded at 1/2, 1/4 or 1/8: the same square, in its pixels
                k = drafted[1][2] / w
        box = (left * k, top * k, (left + s) * k, (top + s) * k)
        array = np.asarray(_square(im.convert(mode), box, size))
    return array[None] if mode == "L" else array.transpose(2, 0, 1)


def _square(im: Image.Image, box: tuple[float, float, float, float], size: int) -> Image.Image:
    """`box` of `im` resized to size x size, bicubic. Cropped to whole pixels first, so a
    square at integer bounds is exactly today's crop-then-resize; a drafted image's
    fractional square keeps its place (rounding it moved the picture by up to half a
    decoded pixel: 4 of the original's at 1/8, visible on sharp edges)."""
    from PIL import Image

    x0, y0, x1, y1 = box
    whole = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
    inner = (x0 - whole[0], y0 - whole[1], x1 - whole[0], y1 - whole[1])
    return im.crop(whole).resize((size, size), Image.Resampling.BICUBIC, box=inner)
