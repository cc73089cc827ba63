"""Prepared datasets from folders, and their format (gan/prepare_folder.py, gan/prepared.py,
gan/prepared_writer.py): real image files written here, decoded by PIL, prepared into real
shards. Built-in datasets and `gan-pipeline data prepare`: tests/test_prepare_command.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from image_files import old_folder, photo, photo_folder
from PIL import Image

from gan.config import ConfigError, make_config
from gan.data import DataError, load_dataset
from gan.prepare_folder import prepare_folder
from gan.prepared import MANIFEST, load_prepared, open_prepared
from gan.prepared_writer import ShardWriter, slug


@pytest.fixture
def photos(tmp_path) -> Path:
    return photo_folder(tmp_path)


# --------------------------------------------------------------------------- folders


def test_large_photos_prepare_to_what_decoding_them_whole_gave(photos, tmp_path):
    prepared = prepare_folder(photos, 32, tmp_path / "data")
    m = prepared.manifest
    assert not prepared.reused and m.path.parent == tmp_path / "data" / "prepared"
    assert m.path.name.startswith("photos-32px-") and m.source == f"folder:{photos}"
    assert (m.count, m.shape, m.mode, m.has_labels, m.skipped) == (4, (3, 32, 32), "RGB", False, ())
    new = load_prepared(m.path).images.numpy().astype(int)
    old = old_folder(photos, 32).astype(int)
    # The JPEGs decode at 1/4 scale (draft mode): a fifth of a grey level off on average; the
    # outermost pixels a few more, as the filter there now sees the square's true neighbours
    # (a crop at whole decoded pixels holds up to half a pixel more). The PNG decodes whole: exact.
    diff = np.abs(new - old)
    assert diff.mean() < 0.3 and diff[:, :, 1:-1, 1:-1].max() <= 2 and diff.max() <= 6
    assert np.array_equal(new[0], old[0])  # more/tall.png sorts first, as paths sort
    # A shard reads alone, memory-mapped and without pickle: what a streaming reader needs.
    shard = np.load(m.path / m.shards[0].file, mmap_mode="r", allow_pickle=False)
    assert shard.dtype == np.uint8 and shard.shape == (4, 3, 32, 32) and np.array_equal(shard[1:2], new[1:2])


def test_small_gray_images_match_the_old_loader_exactly(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(3):
        photo(folder / f"{i}.png", 30 + 7 * i, 24 + 5 * i, seed=i, mode="L")
    Image.new("1", (20, 20), 1).save(folder / "bits.png")
    m = prepare_folder(folder, 16, tmp_path / "data").manifest
    assert m.shape == (1, 16, 16) and m.mode == "L"
    assert np.array_equal(load_prepared(m.path).images.numpy(), old_folder(folder, 16))


def test_a_second_prepare_reuses_the_copy_without_opening_an_image(photos, tmp_path, capsys):
    data = load_dataset(f"folder:{photos}", tmp_path / "data", 32)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prepared 4 images at 32 px once" in err, err
    (copy,) = (tmp_path / "data" / "prepared").iterdir()
    written = (copy / MANIFEST).stat().st_mtime_ns
    # Each image's bytes become garbage of the same size and time: only a decoder could tell.
    for f in photos.rglob("*.*"):
        st = f.stat()
        f.write_bytes(b"\0" * st.st_size)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = prepare_folder(photos, 32, tmp_path / "data")
    assert again.reused and again.path == copy and (copy / MANIFEST).stat().st_mtime_ns == written
    reloaded = load_dataset(f"folder:{photos}", tmp_path / "data", 32)
    assert capsys.readouterr().err == ""  # reused: nothing to say
    assert np.array_equal(reloaded.images.numpy(), data.images.numpy())
    assert data.fingerprint() == reloaded.fingerprint() == again.manifest.digest[:16]


def test_a_changed_folder_gets_a_new_copy(photos, tmp_path):
    first = prepare_folder(photos, 32, tmp_path / "data")
    photo(photos / "p9.jpg", 640, 480, seed=9)
    added = prepare_folder(photos, 32, tmp_path / "data")
    assert not added.reused and added.path != first.path and added.manifest.count == 5
    os.utime(photos / "p0.jpg", ns=(0, 10**18))  # rewritten: a new time
    touched = prepare_folder(photos, 32, tmp_path / "data")
    assert not touched.reused and touched.path not in (first.path, added.path)
    assert touched.manifest.digest == added.manifest.digest  # the same pixels: the same digest
    other_size = prepare_folder(photos, 16, tmp_path / "data")
    assert not other_size.reused and other_size.manifest.shape == (3, 16, 16)


def test_the_digest_names_the_pixels(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(2):
        photo(a / f"{i}.png", 16, 16, seed=i)
        photo(b / f"{i}.png", 16, 16, seed=i)
    da = prepare_folder(a, 16, tmp_path / "data").manifest
    db = prepare_folder(b, 16, tmp_path / "data").manifest
    assert da.path != db.path and da.digest == db.digest  # two folders, the same images
    pixels = np.asarray(Image.open(b / "1.png")).copy()
    pixels[5, 5, 0] ^= 1
    Image.fromarray(pixels).save(b / "1.png")
    changed = prepare_folder(b, 16, tmp_path / "data").manifest
    assert changed.digest != da.digest and changed.shards[0].sha256 != da.shards[0].sha256


@pytest.mark.parametrize("bad", ["garbage", "truncated"])
def test_a_bad_file_is_one_line_naming_it_and_nothing_is_created(photos, tmp_path, bad):
    name = photos / "more" / "broken.jpg"
    if bad == "garbage":  # no image header: found while reading headers, before any folder is made
        name.write_bytes(b"not a jpeg at all")
    else:  # a whole header, cut data: found while decoding, after the shard folder was made
        data = photo(tmp_path / "whole.jpg", 800, 600, seed=3).read_bytes()
        name.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        prepare_folder(photos, 32, tmp_path / "data")
    msg = str(err.value)
    assert "\n" not in msg and str(name) in msg and "is not a readable image" in msg and "--skip-bad" in msg
    assert not (tmp_path / "data").exists()


def test_skip_bad_records_and_counts_the_bad_files(photos, tmp_path):
    whole = photo(tmp_path / "whole.jpg", 800, 600, seed=3).read_bytes()
    (photos / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (photos / "more" / "junk.png").write_bytes(b"junk")
    m = prepare_folder(photos, 32, tmp_path / "data", skip_bad=True).manifest
    assert m.count == 4 and len(m.skipped) == 2
    assert {s["file"] for s in m.skipped} == {"cut.jpg", "more/junk.png"}
    assert all("is not a readable image" in s["reason"] for s in m.skipped)
    assert json.loads((m.path / MANIFEST).read_text())["skipped"] == list(m.skipped)


def test_empty_missing_and_mixed_folders_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images"):
        prepare_folder(empty, 32, tmp_path / "data")
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        prepare_folder(tmp_path / "nope", 32, tmp_path / "data")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    photo(mixed / "colour.jpg", 64, 48, seed=1)
    photo(mixed / "gray.png", 64, 48, seed=2, mode="L")
    with pytest.raises(DataError) as err:
        prepare_folder(mixed, 32, tmp_path / "data")
    assert "mixes gray and colour images (gray.png is L, colour.jpg is RGB)" in str(err.value)
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- the format


def test_a_corrupted_shard_or_manifest_is_refused_in_one_line(photos, tmp_path):
    m = prepare_folder(photos, 32, tmp_path / "data").manifest
    shard = m.path / m.shards[0].file
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF  # one pixel's bits, past the .npy header
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="does not match its sha256") as err:
        load_prepared(m.path)
    assert "\n" not in str(err.value) and str(shard) in str(err.value)
    shard.write_bytes(bytes(raw[:-5000]))  # cut short
    with pytest.raises(DataError, match="cannot be read"):
        load_prepared(m.path)
    manifest = json.loads((m.path / MANIFEST).read_text())
    manifest["count"] = 3
    (m.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="its shards hold 4 images, not count=3"):
        open_prepared(m.path)
    manifest["count"], manifest["shards"][0]["file"] = 4, "../../etc/passwd"
    (m.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="shard entry"):
        open_prepared(m.path)
    with pytest.raises(DataError, match="is not a prepared dataset"):
        open_prepared(photos)


def test_prepared_path_datasets_load_and_validate(photos, tmp_path):
    m = prepare_folder(photos, 32, tmp_path / "data").manifest
    data = load_dataset(f"prepared:{m.path}")
    assert data.name == f"prepared:{m.path}" and data.shape == (3, 32, 32) and data.fingerprint() == m.digest[:16]
    assert load_dataset(f"prepared:{m.path}", image_size=16).shape == (3, 16, 16)  # resized as any dataset
    assert make_config({"dataset": f"prepared:{m.path}"}).dataset == f"prepared:{m.path}"
    with pytest.raises(ConfigError, match="folder:PATH, prepared:PATH"):
        make_config({"dataset": "prepared:"})
    with pytest.raises(DataError, match="is not a prepared dataset"):
        load_dataset(f"prepared:{photos}")


def test_a_killed_or_losing_writer_never_leaves_a_whole_looking_copy(tmp_path):
    final = tmp_path / "data" / "prepared" / "x-8px-abc"
    images = np.arange(5 * 64, dtype=np.uint8).reshape(5, 1, 8, 8)
    with pytest.raises(RuntimeError), ShardWriter(final, (1, 8, 8), False, 5) as w:
        w.add_batch(images)
        raise RuntimeError("killed")
    assert not (tmp_path / "data").exists()  # the partial folder and the parents it made are gone
    # A partial folder of a preparer that died (a real, finished process) is cleared by the next one.
    final.parent.mkdir(parents=True)
    stale = final.parent / f".{final.name}.partial-{slug(socket.gethostname())}-{_finished_pid()}-0a0a0a"
    stale.mkdir()
    # Two preparers of one copy: both finish, the second uses the first's copy and drops its own.
    first, second = ShardWriter(final, (1, 8, 8), False, 5), ShardWriter(final, (1, 8, 8), False, 5)
    with first, second:
        first.add_batch(images)
        second.add_batch(images[::-1].copy())
        won = first.finish("x", "x", "key", 8)
        lost = second.finish("x", "x", "key", 8)
    assert not won.reused and lost.reused and lost.path == won.path == final.resolve()
    assert np.array_equal(load_prepared(final).images.numpy(), images)
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]  # no partial folder left


def test_two_processes_preparing_one_folder_at_once_end_with_one_copy(photos, tmp_path):
    for i in range(3, 12):  # long enough to prepare that both are at it together
        photo(photos / f"p{i}.jpg", 1200, 900, seed=i)
    code = ("import sys; from gan.prepare_folder import prepare_folder; "
            "p = prepare_folder(sys.argv[1], 32, sys.argv[2]); print(p.path, p.manifest.digest)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(photos), str(tmp_path / "data")], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0] and outs[0] == outs[1], outs
    (copy,) = (tmp_path / "data" / "prepared").iterdir()  # one copy, no partial folder left
    assert str(copy) in outs[0] and load_prepared(copy).digest in outs[0]


def _finished_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
