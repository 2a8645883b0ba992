"""WebDataset shards as an image source: ``'shards/{00000..01023}.tar'`` (brace syntax), a glob,
one ``.tar`` file or a folder of them.

A sample is the run of consecutive members that share a key (WebDataset's rule: the member
name up to the first dot of its base name, ``webdataset.tariterators.base_plus_ext``); its
image is the member with an image extension (``.jpg``, ``.png``, ``.webp``, ...), its label the
``.cls`` member (an integer) or a field of the ``.json`` member (``label_field``, default
``label``), its caption the ``.txt`` member. Samples without an image member are listed in
:attr:`~vlmsae.data.images.ImageDataset.skipped` with the reason.

Listing reads only the tar headers (and the small label members); a :class:`MemberReader`
pickled into a DataLoader worker reads an image's bytes at its offset (``os.pread``), so the
order is stable, a resumed run and every torchrun rank start anywhere, and decoding follows
:func:`~vlmsae.data.decode.open_rgb` (pixel budget from the header, before decoding).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vlmsae.core.errors import UserError
from vlmsae.data.decode import Decoded, open_rgb
from vlmsae.data.locate import expand_files, file_list, require

if TYPE_CHECKING:
    from vlmsae.data.images import ImageDataset

log = logging.getLogger(__name__)
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"})
_KEY = re.compile(r"^tar:(.*?\.tar)#(.*)$", re.IGNORECASE | re.DOTALL)
_SMALL = 1 << 20  # label and caption members larger than this are not read


class Member(NamedTuple):
    """Where a member's bytes are in its shard."""

    name: str
    offset: int
    size: int


class Sample(NamedTuple):
    """One WebDataset sample: its key and its members by extension."""

    key: str
    members: dict[str, Member]


def load_shards(
    spec: str, split: str | None, *, keep: slice, limit: int | None, label_field: str | None
) -> ImageDataset:
    """List the samples of WebDataset shards as an :class:`~vlmsae.data.images.ImageDataset`
    whose keys are ``tar:SHARD#IMAGE_MEMBER``."""
    from vlmsae.data.images import ImageDataset

    pattern = spec
    if split:
        if not Path(spec).is_dir():
            raise UserError(f"--split {split}: {spec} is not a folder with split subfolders")
        pattern = os.path.join(spec, split)
    shards = expand_files(pattern, ".tar")
    entries: list[tuple[int, Member, Sample]] = []
    skipped: list[tuple[str, str]] = []
    for s, shard in enumerate(shards):
        for sample in index_shard(shard, skipped):
            image = _image_member(sample)
            if image is None:
                exts = ", ".join("." + e for e in sample.members) or "none"
                skipped.append((f"tar:{shard}#{sample.key}", f"no image member (members: {exts})"))
            else:
                entries.append((s, image, sample))
    for key, reason in skipped:
        log.warning("skipped %s: %s", key, reason)
    entries = entries[keep][:limit]
    if not entries:
        raise UserError(f"--data {spec}: no samples with an image in {len(shards)} shard(s)")
    labels, classes, captions = _annotations(shards, entries, label_field or "label")
    log.info("%s: %d images, %d shards, %d classes", spec, len(entries), len(shards), len(classes))
    return ImageDataset(
        os.path.abspath(spec),
        split,
        "webdataset",
        tuple(f"tar:{shards[s]}#{m.name}" for s, m, _ in entries),
        labels,
        classes,
        skipped=tuple(skipped),
        source={
            "kind": "webdataset",
            "pattern": spec,
            "split": split,
            "shards": file_list(shards),
            "classes": list(classes),
        },
        reader=MemberReader(shards, entries),
        label_sets={label_field or "label": (labels, classes)} if classes else {},
        captions=captions,
    )


def index_shard(shard: str, skipped: list[tuple[str, str]] | None = None) -> list[Sample]:
    """The samples of one shard, in order, from its headers (a damaged shard: the samples
    before the damage, and the damage in ``skipped``)."""
    wds = require("webdataset.tariterators", "wds")
    samples: list[Sample] = []
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = wds.base_plus_ext(info.name)
                if key is None:
                    continue
                if not samples or samples[-1].key != key:
                    samples.append(Sample(key, {}))
                samples[-1].members[ext.lower()] = Member(info.name, info.offset_data, info.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        if skipped is None:
            raise
        skipped.append((f"tar:{shard}", f"unreadable after {len(samples)} samples: {e}"))
    return samples


def _image_member(sample: Sample) -> Member | None:
    for ext, member in sample.members.items():
        if ext.rsplit(".", 1)[-1] in IMAGE_EXTS:
            return member
    return None


def _annotations(
    shards: list[str], entries: list[tuple[int, Member, Sample]], field: str
) -> tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...]]:
    """Labels (``.cls``, else ``.json[field]``), class names and captions (``.txt``)."""
    raw: list[Any] = []
    captions: list[str] = []
    for s, _, sample in entries:
        value = None
        if "cls" in sample.members:
            value = _text(shards[s], sample.members["cls"])
            value = int(value) if value and value.strip().lstrip("-").isdigit() else None
        elif "json" in sample.members:
            try:
                meta = json.loads(_text(shards[s], sample.members["json"]) or "null")
            except json.JSONDecodeError:
                meta = None
            value = meta.get(field) if isinstance(meta, dict) else None
        raw.append(value)
        captions.append(_text(shards[s], sample.members["txt"]) if "txt" in sample.members else "")
    if all(v is None for v in raw):
        labels, classes = (-1,) * len(raw), ()
    elif all(v is None or isinstance(v, str) for v in raw):
        classes = tuple(sorted({v for v in raw if v is not None}))
        index = {c: i for i, c in enumerate(classes)}
        labels = tuple(index.get(v, -1) if v is not None else -1 for v in raw)
    else:
        ints = [int(v) if isinstance(v, int) and not isinstance(v, bool) else -1 for v in raw]
        labels, classes = tuple(ints), tuple(str(i) for i in range(max(ints) + 1))
    return labels, classes, tuple(captions) if any(captions) else ()


def _text(shard: str, member: Member) -> str | None:
    if member.size > _SMALL:
        return None
    return _pread(shard, member).decode("utf-8", errors="replace")


def _pread(shard: str, member: Member) -> bytes:
    fd = os.open(shard, os.O_RDONLY)
    try:
        return os.pread(fd, member.size, member.offset)
    finally:
        os.close(fd)


class MemberReader:
    """Decodes the image member of sample ``i`` (picklable; each worker opens the shards)."""

    def __init__(self, shards: list[str], entries: list[tuple[int, Member, Sample]]) -> None:
        self.shards = list(shards)
        self.shard_N = np.asarray([s for s, _, _ in entries], np.int32)
        self.offset_N = np.asarray([m.offset for _, m, _ in entries], np.int64)
        self.size_N = np.asarray([m.size for _, m, _ in entries], np.int64)
        self._fds: dict[int, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}}  # file descriptors stay in their process

    def __len__(self) -> int:
        return len(self.shard_N)

    def read(self, i: int) -> Decoded:
        s = int(self.shard_N[i])
        try:
            if s not in self._fds:
                self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
            data = os.pread(self._fds[s], int(self.size_N[i]), int(self.offset_N[i]))
        except OSError as e:
            return Decoded(None, f"cannot read {self.shards[s]}: {e}")
        if len(data) < self.size_N[i]:
            return Decoded(None, f"{self.shards[s]} is shorter than its index (truncated shard)")
        return open_rgb(data)

    def __del__(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)


def read_member(key: str) -> Decoded:
    """Open the image of a ``tar:SHARD#MEMBER`` key (the explorer, grids, labels)."""
    match = _KEY.match(key)
    if not match:
        raise ValueError(f"not a tar member key: {key!r}")
    shard, name = match.groups()
    member = _members(shard, os.path.getmtime(shard)).get(name)
    if member is None:
        return Decoded(None, f"{shard} has no member {name}")
    return open_rgb(_pread(shard, member))


@functools.lru_cache(maxsize=16)
def _members(shard: str, mtime: float) -> dict[str, Member]:
    return {m.name: m for sample in index_shard(shard) for m in sample.members.values()}
