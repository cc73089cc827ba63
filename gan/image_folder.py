"""A folder of image files to prepare: a local path, or any URI pyarrow's filesystems read
(s3://, gs://, abfs://, hdfs://, file://), which is where a cluster's data lives.

Both answer the same three questions: which image files are there (relative names,
sizes, modification times: the listing a prepared copy's key is made of), how to read
one, and how to name one in a message. `spec` rebuilds the folder in another process (a
Ray Data task on another node). pyarrow is imported only for a URI; credentials are
pyarrow's (the environment, an instance role): none is ever written here.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan.images import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Entry:
    name: str  # relative to the folder, '/'-separated
    size: int  # -1: unknown (a broken link: reported as a bad file when opened)
    mtime_ns: int


def image_folder(spec: str | Path) -> LocalFolder | UriFolder:
    """The folder `spec` names: a URI when it has a scheme (s3://...), else a local path."""
    text = str(spec)
    if "://" in text:
        return UriFolder(text.rstrip("/"))
    return LocalFolder(Path(text).expanduser().resolve())


@dataclass(frozen=True)
class LocalFolder:
    root: Path

    @property
    def spec(self) -> str:
        return str(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    def show(self, name: str) -> str:
        return str(self.root / name)

    def entries(self) -> list[Entry]:
        """The image files (by suffix, in subfolders too), sorted as paths sort."""
        if not self.root.is_dir():
            raise DataError(f"dataset folder {self.spec!r} does not exist or is not a folder")

        def unreadable(e: OSError) -> None:
            raise DataError(f"dataset folder {str(e.filename)!r} cannot be read ({e.strerror or e})")

        files = sorted(Path(folder) / name for folder, _, names in os.walk(self.root, onerror=unreadable)
                       for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)
        out = []
        for f in files:
            try:
                st = f.stat()
                out.append(Entry(str(f.relative_to(self.root)), st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(Entry(str(f.relative_to(self.root)), -1, -1))
        return _some(out, self.spec)

    def open(self, name: str) -> Any:
        """What PIL opens: the path (PIL reads it lazily, as far as the header first)."""
        return self.root / name


@dataclass(frozen=True)
class UriFolder:
    uri: str

    @property
    def spec(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1] or "dataset"

    def show(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def _fs(self) -> tuple[Any, str]:
        import pyarrow.fs as pafs

        try:
            return pafs.FileSystem.from_uri(self.uri)
        except Exception as e:  # noqa: BLE001 - pyarrow's errors for a bad scheme, bucket or credentials vary
            raise DataError(f"dataset folder {self.uri!r} cannot be read ({_first_line(e)})") from None

    def entries(self) -> list[Entry]:
        import pyarrow.fs as pafs

        fs, base = self._fs()
        try:
            info = fs.get_file_info(base)
            if info.type != pafs.FileType.Directory:
                raise DataError(f"dataset folder {self.uri!r} does not exist or is not a folder")
            listed = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a network or permission failure: one line
            raise DataError(f"dataset folder {self.uri!r} cannot be read ({_first_line(e)})") from None
        prefix = base.rstrip("/") + "/"
        out = [Entry(i.path[len(prefix):], i.size if i.size is not None else -1,
                     i.mtime_ns if i.mtime_ns is not None else -1)
               for i in listed if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in IMAGE_SUFFIXES]
        return _some(sorted(out, key=lambda e: e.name), self.spec)

    def open(self, name: str) -> Any:
        """The file's bytes in memory (one image at a time: PIL wants to seek)."""
        fs, base = self._fs()
        try:
            with fs.open_input_file(f"{base.rstrip('/')}/{name}") as f:
                return io.BytesIO(f.readall())
        except Exception as e:  # noqa: BLE001 - reported as this file's problem
            raise OSError(_first_line(e)) from None


def _some(entries: list[Entry], where: str) -> list[Entry]:
    if not entries:
        raise DataError(f"dataset folder {where!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return entries


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:120] or type(e).__name__
