"""Preparing a folder of photos once (issue 34): the loader before it against `data prepare`.

    python benchmarks/bench_prepare.py                 # 200 photos of 2000x1500 at 64 px
    python benchmarks/bench_prepare.py --n 5           # a quick check

Writes N photo-like JPEGs (smooth random shapes plus sensor-like grain, so their size on
disk is a camera's: about 2 MB at 2000x1500), then runs each way of reading them in a
process of its own, so each peak RSS is that process's alone (its own ru_maxrss):

    import    the imports only (torch, PIL, gan): the floor under every row
    old       the loader before issue 34 (a copy of gan/data.py:_folder): decode every
              image whole and keep it, then centre square and bicubic resize each
    prepare   the first `folder:PATH` use: prepare (one image at a time, JPEG draft
              mode, into shards), then load the prepared copy as training does
    again     every later run: the copy found from the folder's listing, then loaded

The files were just written, so every row reads them from the page cache (a cold disk
adds the same reading time to `old` and `prepare`, and nothing to `again`).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the children import this checkout's gan/


def write_photos(folder: Path, n: int, width: int, height: int, seed: int = 0) -> int:
    """N photo-like JPEGs (quality 95); their total size in bytes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        coarse = Image.fromarray((rng.random((height // 30, width // 30, 3)) * 255).astype(np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-26, 27, smooth.shape, dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
        (folder / f"photo-{i:04d}.jpg").write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def old_folder(path: Path, size: int):  # noqa: ANN201 - torch is imported in the child only
    """gan/data.py:_folder before issue 34, verbatim but for its error handling."""
    import torch
    from PIL import Image

    suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
    pil_images = []
    for f in files:
        with Image.open(f) as im:
            pil_images.append(im.copy())
    gray = all(im.mode in ("1", "L", "I", "I;16", "F") for im in pil_images)
    mode = "L" if gray else "RGB"

    def center_square(im: Image.Image) -> Image.Image:
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return im.crop((left, top, left + s, top + s))

    arrays = [np.asarray(center_square(im.convert(mode)).resize((size, size), 3)) for im in pil_images]
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if gray else stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked))


def child(kind: str, folder: Path, size: int, data_dir: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401 - what every run imports: part of the floor

    from gan.prepare_folder import prepare_folder
    from gan.prepared import load_prepared

    out: dict = {"kind": kind}
    t = time.perf_counter()
    if kind == "old":
        images = old_folder(folder, size)
        out["shape"] = list(images.shape)
    elif kind in ("prepare", "again"):
        prepared = prepare_folder(folder, size, data_dir)
        out["prepare_s"] = time.perf_counter() - t
        out["reused"] = prepared.reused
        t_load = time.perf_counter()
        data = load_prepared(prepared.path)
        out["load_s"] = time.perf_counter() - t_load
        out["shape"] = list(data.images.shape)
        out["digest"] = prepared.manifest.digest
        out["bytes"] = sum((prepared.path / s.file).stat().st_size for s in prepared.manifest.shards)
    out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


def run_child(kind: str, folder: Path, size: int, data_dir: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(folder), str(size), str(data_dir)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="photos (default: 200)")
    p.add_argument("--width", type=int, default=2000)
    p.add_argument("--height", type=int, default=1500)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--child", nargs=4, metavar=("KIND", "FOLDER", "SIZE", "DATA_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, folder, size, data_dir = args.child
        print(json.dumps(child(kind, Path(folder), int(size), Path(data_dir))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        folder, data_dir = Path(tmp) / "photos", Path(tmp) / "data"
        t = time.perf_counter()
        on_disk = write_photos(folder, args.n, args.width, args.height)
        print(f"{args.n} JPEGs of {args.width}x{args.height}, {on_disk / 1e6:.0f} MB on disk "
              f"(written in {time.perf_counter() - t:.0f} s); --image-size {args.image_size}", flush=True)
        rows = [run_child(kind, folder, args.image_size, data_dir) for kind in ("import", "old", "prepare", "again")]
    floor = rows[0]["peak_rss_mb"]
    print("\n| way | seconds | ms per image | peak RSS (MB) | over the imports (MB) |")
    print("|---|---|---|---|---|")
    for r in rows[1:]:
        extra = f" (prepare {r['prepare_s']:.2f} s, load {r['load_s']:.3f} s)" if "prepare_s" in r else ""
        print(f"| {r['kind']}{extra} | {r['seconds']:.2f} | {1000 * r['seconds'] / args.n:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - floor:.0f} |")
    print(f"| imports only | - | - | {floor:.0f} | 0 |")
    prep = rows[2]
    assert rows[3]["reused"] and not prep["reused"] and rows[3]["digest"] == prep["digest"]
    print(f"\nprepared: {prep['shape']} uint8 in {prep['bytes'] / 1e6:.1f} MB of shards; digest {prep['digest'][:16]}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
