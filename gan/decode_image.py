"""One image file decoded for a prepared dataset: opened safely, decoded near the target
size (JPEG draft mode), converted, centre-cropped to a square, resized bicubic. What
can go wrong with one file is a BadImage naming it."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from gan.image_folder import LocalFolder, UriFolder

    ImageFolder = LocalFolder | UriFolder

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

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"dataset folder file {file!r} {reason}")
        self.file, self.reason = file, reason


@contextlib.contextmanager
def opened(folder: ImageFolder, name: str) -> Iterator[Image.Image]:
    """A file of `folder` opened by PIL, with the decompression-bomb refusal; any failure,
    in reading, opening or decoding within the block, is a BadImage naming the file."""
    from PIL import Image, UnidentifiedImageError

    file = folder.show(name)
    try:
        with warnings.catch_warnings():  # PIL only warns below 2x its limit: refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(folder.open(name)) as im:
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(file, f"is too large to decode safely (over {Image.MAX_IMAGE_PIXELS} pixels): "
                       "resize it") from None
    except UnidentifiedImageError:  # no format PIL knows (its message only repeats the name)
        raise BadImage(file, "is not a readable image") from None
    except Exception as e:  # noqa: BLE001 - PIL signals a corrupt file with many types (OSError, SyntaxError, ...)
        detail = (str(e).splitlines() or [""])[0][:80] or type(e).__name__
        raise BadImage(file, f"is not a readable image ({detail})") from None


def decode(folder: ImageFolder, name: str, mode: str, size: int) -> np.ndarray:
    """One file as uint8 [C, size, size]: draft-decoded, converted, centre square, bicubic."""
    with opened(folder, name) as im:
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
