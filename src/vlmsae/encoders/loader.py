"""Decode and preprocess images in DataLoader workers, a whole batch per worker call.

The images come from an :class:`~vlmsae.data.sources.ImageReader` (files of a folder, rows of
a Hugging Face dataset, members of WebDataset shards), pickled into each worker; a plain
list of paths reads files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from vlmsae.data.decode import FileReader
from vlmsae.data.sources import ImageReader

log = logging.getLogger(__name__)


class ImageBatch(NamedTuple):
    """One batch of dataset images, ready for the model."""

    index: np.ndarray
    """``int64 [B']`` dataset indices of the images that decoded."""
    pixel_values: torch.Tensor | None
    """``[B', C, H, W]`` preprocessed images (None when every image of the batch failed)."""
    skipped: list[tuple[int, str, str]]
    """``(dataset index, key, reason)`` of images that could not be used."""
    end: int
    """Dataset index one past the last image of this batch."""


class _BatchDecoder(Dataset):
    """``dataset[list of indices]`` -> :class:`ImageBatch` (runs inside a worker)."""

    def __init__(self, reader: ImageReader, keys: Sequence[str], processor: Any) -> None:
        self.reader = reader
        self.paths = keys
        self.processor = processor

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, indices: list[int]) -> ImageBatch:
        good: list[int] = []
        images = []
        skipped: list[tuple[int, str, str]] = []
        for i in indices:
            decoded = self.reader.read(i)
            if decoded.image is None:
                skipped.append((i, self.paths[i], decoded.error or "unreadable"))
            else:
                good.append(i)
                images.append(decoded.image)
        pixels = self._preprocess(good, images, skipped) if images else None
        if pixels is None:
            good = []
        else:
            bad = {i for i, _, _ in skipped}
            good = [i for i in good if i not in bad]
        return ImageBatch(np.asarray(good, np.int64), pixels, skipped, max(indices) + 1)

    def _preprocess(
        self, good: list[int], images: list[Any], skipped: list[tuple[int, str, str]]
    ) -> torch.Tensor | None:
        try:
            return self._call(images)
        except (ValueError, OSError, RuntimeError):  # find the image the processor refuses
            pieces = []
            for i, im in zip(good, images, strict=True):
                try:
                    pieces.append(self._call([im]))
                except (ValueError, OSError, RuntimeError) as e:
                    skipped.append((i, self.paths[i], f"preprocessing failed: {e}"))
            skipped.sort()
            return torch.cat(pieces) if pieces else None

    def _call(self, images: list[Any]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


def image_batches(
    paths: Sequence[str],
    processor: Any,
    *,
    batch_size: int,
    workers: int = 0,
    start: int = 0,
    stop: int | None = None,
    reader: ImageReader | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of images ``start, start + 1, ..., stop - 1`` of ``paths``, in order.

    ``paths`` are the images' keys (what a skipped image is recorded as); ``reader`` decodes
    them (default: the files of ``paths``). Batches cover ``[start + k * batch_size,
    start + (k + 1) * batch_size)`` so that a run resumed at a batch boundary sees the same
    batches as an uninterrupted one.
    """
    if processor is None:
        raise ValueError("the encoder has no image processor: cannot preprocess images")
    stop = len(paths) if stop is None else min(stop, len(paths))
    sampler = BatchSampler(range(start, stop), batch_size, drop_last=False)
    return DataLoader(
        _BatchDecoder(reader or FileReader(paths), paths, processor),
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers > 0 else None,  # batches in flight: 2 per worker
        persistent_workers=False,
    )
