"""`gan-pipeline data prepare` and built-in datasets prepared (gan/prepare.py): the report,
reuse, and bad input that creates nothing; real files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from image_files import photo, photo_folder, tree

from gan.data import load_dataset
from gan.prepare import prepare_dataset
from gan.prepared import open_prepared
from pipelines.cli import main


@pytest.fixture
def photos(tmp_path) -> Path:
    return photo_folder(tmp_path)


# --------------------------------------------------------------------------- built-ins and the CLI


def test_mnist_5k_prepares_with_its_labels_and_is_reused(tmp_path):
    prepared = prepare_dataset("mnist-5k", 0, tmp_path / "data")
    m = prepared.manifest
    assert (m.count, m.shape, m.mode, m.has_labels, len(m.shards)) == (5000, (1, 28, 28), "L", True, 2)
    assert [s.count for s in m.shards] == [4096, 904] and m.shard_images == 4096
    direct, loaded = load_dataset("mnist-5k"), load_dataset(f"prepared:{m.path}")
    assert np.array_equal(loaded.images.numpy(), direct.images.numpy())
    assert np.array_equal(loaded.labels.numpy(), direct.labels.numpy())
    assert prepare_dataset("mnist-5k", 0, tmp_path / "data").reused


def test_cli_data_prepare_reports_and_reuses(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "prepare", f"folder:{photos}", "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    (copy,) = (tmp_path / "data" / "prepared").iterdir()
    assert f"prepared dataset: {copy} (made now)" in out and "4 images, 3x16x16 (RGB), no labels" in out
    assert f"--dataset prepared:{copy}" in out and open_prepared(copy).digest in out
    assert main(["data", "prepare", f"folder:{photos}", "--image-size", "16"]) == 0
    assert "(reused: prepared before)" in capsys.readouterr().out
    (photos / "bad.png").write_bytes(b"x")
    (tmp_path / "mine").mkdir()  # --out: a new or an empty folder
    assert main(["data", "prepare", f"folder:{photos}", "--out", "mine", "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert f"prepared dataset: {tmp_path / 'mine'} (made now)" in out and "skipped 1 bad file (" in out
    assert open_prepared(tmp_path / "mine").skipped == ({"file": "bad.png", "reason": "is not a readable image"},)
    assert main(["data", "prepare", f"folder:{photos}", "--out", "mine"]) == 0  # the same copy: reused
    assert "(reused: prepared before)" in capsys.readouterr().out


CLI_BAD = [
    (["imagenet"], "dataset 'imagenet' is invalid: must be one of mnist-5k"),
    (["prepared:x"], "prepared:x is prepared already"),
    (["folder:empty"], "holds no images"),
    (["folder:photos"], "broken.jpg' is not a readable image"),
    (["folder:mixed"], "mixes gray and colour images"),
    (["folder:nope"], "does not exist"),
    (["mnist-5k", "--image-size", "3"], "--image-size 3 is invalid: must be 0"),
    (["mnist-5k", "--data-dir", ""], "--data-dir '' is invalid"),
    (["mnist-5k", "--data-dir", "a-file/sub"], "a prepared dataset cannot be written in"),
    (["mnist-5k", "--out", "a-file"], "a-file is a file: a prepared dataset is a folder"),
    (["mnist-5k", "--out", "photos"], "is not a prepared dataset"),
    (["folder:photos", "--out", "a-file/sub", "--skip-bad"], "a prepared dataset cannot be written in"),
]


@pytest.mark.parametrize(("args", "message"), CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_cli_bad_input_is_one_line_exit_2_and_creates_nothing(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")  # no folder can be made in a file, even by root
    (tmp_path / "empty").mkdir()
    (tmp_path / "photos").mkdir()
    photo(tmp_path / "photos" / "fine.jpg", 64, 48, seed=0)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (tmp_path / "mixed").mkdir()
    photo(tmp_path / "mixed" / "c.jpg", 64, 48, seed=1)
    photo(tmp_path / "mixed" / "g.png", 64, 48, seed=2, mode="L")
    before = tree(tmp_path)
    capsys.readouterr()
    assert main(["data", "prepare", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gan-pipeline data: error:") and err.count("\n") == 1 and message in err, err
    assert tree(tmp_path) == before  # no data dir, no prepared or partial folder


def test_parallel_prepare_on_ray_data_makes_the_same_dataset_and_fails_the_same_way(
        photos, tmp_path, monkeypatch, capsys, local_ray):
    """`--parallel`: the folder's chunks are Ray Data tasks (here on the session's local
    Ray); the copy is the serial one to the byte, and a bad file is the same one line."""
    import gan.prepared

    monkeypatch.setattr(gan.prepared, "SHARD_IMAGES", 2)  # chunks of 2 files: several tasks (as serial)
    base = ["data", "prepare", f"folder:{photos}", "--image-size", "16"]
    assert main([*base, "--out", str(tmp_path / "serial")]) == 0
    assert main([*base, "--out", str(tmp_path / "parallel"), "--parallel"]) == 0
    serial, parallel = open_prepared(tmp_path / "serial"), open_prepared(tmp_path / "parallel")
    assert len(parallel.shards) == 2 and parallel.shards == serial.shards and parallel.digest == serial.digest
    for shard in parallel.shards:
        assert (tmp_path / "parallel" / shard.file).read_bytes() == (tmp_path / "serial" / shard.file).read_bytes()
    uri = ["data", "prepare", f"folder:file://{photos}", "--image-size", "16", "--out", str(tmp_path / "uri")]
    assert main([*uri, "--parallel"]) == 0  # the tasks read the files through pyarrow
    assert open_prepared(tmp_path / "uri").digest == serial.digest
    capsys.readouterr()

    whole = photo(tmp_path / "whole.jpg", 800, 600, seed=3).read_bytes()
    (photos / "more" / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # a whole header, cut data
    assert main([*base, "--out", str(tmp_path / "bad"), "--parallel"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cut.jpg' is not a readable image" in err and "--skip-bad" in err, err
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.partial-*"))
    assert main([*base, "--out", str(tmp_path / "skip"), "--parallel", "--skip-bad"]) == 0
    skipped = open_prepared(tmp_path / "skip")
    assert skipped.count == serial.count and [s["file"] for s in skipped.skipped] == ["more/cut.jpg"]
    assert main([*base, "--ray-address", "127.0.0.1:1"]) == 2  # an address without --parallel
    assert "--ray-address is for --parallel" in capsys.readouterr().err


def test_a_folder_uri_prepares_through_pyarrow_like_the_path(photos, tmp_path, capsys):
    """folder:URI lists and reads through pyarrow's filesystems (s3://, gs://, ...: here
    file://, the one this machine has): the same images, so the same digest."""
    by_path = prepare_dataset(f"folder:{photos}", 16, tmp_path / "data").manifest
    uri = f"file://{photos}"
    by_uri = prepare_dataset(f"folder:{uri}", 16, tmp_path / "data").manifest
    assert by_uri.source == f"folder:{uri}" and by_uri.path != by_path.path
    assert by_uri.digest == by_path.digest and by_uri.count == by_path.count
    assert prepare_dataset(f"folder:{uri}", 16, tmp_path / "data").reused  # found again from the listing
    streamed = load_dataset(f"folder:{uri}", tmp_path / "data", 16, mode="stream")
    assert streamed.manifest.path == by_uri.path
    for bad, says in ((f"file://{tmp_path}/missing", "does not exist or is not a folder"),
                      ("nosuchscheme://bucket/photos", "cannot be read")):
        assert main(["data", "prepare", f"folder:{bad}", "--data-dir", str(tmp_path / "fresh")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and bad in err and says in err, err
        assert not (tmp_path / "fresh").exists()
