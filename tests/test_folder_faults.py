"""Dataset folders that are not what they seem: hidden and empty subfolders, loose images
next to class folders, dangling and looping symbolic links."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from tiny_models import random_images
from vlmsae.core.errors import UserError
from vlmsae.data.images import detect_layout, load_dataset


def _images(folder: Path, n: int, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(random_images(n)):
        im.save(folder / f"{prefix}{i:02d}.png")


def test_hidden_and_empty_subfolders_keep_a_flat_folder_flat(tmp_path):
    _images(tmp_path, 10)
    _images(tmp_path / ".ipynb_checkpoints", 2, "copy-")  # a notebook's checkpoints
    (tmp_path / "empty").mkdir()
    data = load_dataset(tmp_path)
    assert data.layout == "flat" and len(data) == 10 and set(data.labels) == {-1}
    assert all(Path(p).parent == tmp_path for p in data.paths)


def test_hidden_folders_are_not_classes(tmp_path):
    _images(tmp_path / "cat", 3)
    _images(tmp_path / "dog", 2)
    _images(tmp_path / ".ipynb_checkpoints", 2)
    data = load_dataset(tmp_path)
    assert data.layout == "imagefolder" and data.classes == ("cat", "dog") and len(data) == 5


def test_loose_images_next_to_class_folders_are_refused(tmp_path, caplog):
    _images(tmp_path, 3)
    _images(tmp_path / "cat", 4)
    _images(tmp_path / "dog", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as e:
        load_dataset(tmp_path)
    message = str(e.value)
    assert f"{tmp_path} holds both 3 images at its top level (00.png, 01.png, 02.png)" in message
    assert "and 2 folders with images (cat/, dog/)" in message
    assert "move the loose images into a class folder" in message
    with pytest.raises(UserError):
        detect_layout(tmp_path)
    with caplog.at_level(logging.WARNING):  # an explicit layout takes one part, and says so
        assert len(load_dataset(tmp_path, layout="flat")) == 3
        assert len(load_dataset(tmp_path, layout="imagefolder")) == 6
    assert "not reading the images in folders ['cat', 'dog']" in caplog.text
    assert "3 images outside class folders are not used" in caplog.text


def test_broken_links_are_listed_with_a_reason(tmp_path, caplog):
    _images(tmp_path / "cat", 3)
    os.symlink(tmp_path / "nowhere.png", tmp_path / "cat" / "gone.png")
    os.symlink("loop.png", tmp_path / "cat" / "loop.png")  # points at itself
    os.symlink(tmp_path / "moved-away", tmp_path / "dog")  # a class folder that moved
    with caplog.at_level(logging.WARNING):
        data = load_dataset(tmp_path)
    assert data.classes == ("cat",) and len(data) == 3
    reasons = {Path(p).name: r for p, r in data.skipped}
    assert reasons["gone.png"].startswith(f"dangling symbolic link to {tmp_path / 'nowhere.png'}")
    assert reasons["loop.png"] == "symbolic link loop"
    assert reasons["dog"].startswith("dangling symbolic link")
    assert "skipped" in caplog.text and "gone.png" in caplog.text


def test_fifos_and_sockets_are_listed_as_skipped(tmp_path, caplog):
    _images(tmp_path / "cat", 2)
    os.mkfifo(tmp_path / "cat" / "pipe.png")  # reading it would block a worker forever
    os.mkfifo(tmp_path / "queue")  # at the top level, without an image extension
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "cat" / "listener"))
        with caplog.at_level(logging.WARNING):
            data = load_dataset(tmp_path)
    assert data.classes == ("cat",) and len(data) == 2
    reasons = {Path(p).name: r for p, r in data.skipped}
    assert reasons == {
        "pipe.png": "not a regular file: a FIFO (named pipe)",
        "queue": "not a regular file: a FIFO (named pipe)",
        "listener": "not a regular file: a socket",
    }
    assert "pipe.png" in caplog.text and "listener" in caplog.text
