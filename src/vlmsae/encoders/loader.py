"""Decode and preprocess images in DataLoader workers, a whole batch per worker call."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from vlmsae.data.images import open_rgb

log = logging.getLogger(__name__)


class ImageBatch(NamedTuple):
    """One batch of dataset images, ready for the model."""

    index: np.ndarray
    """``int64 [B']`` dataset indices of the images that decoded."""
    pixel_values: torch.Tensor | None
    """``[B', C, H, W]`` preprocessed images (None when every image of the batch failed)."""
    skipped: list[tuple[int, str, str]]
    """``(dataset index, path, reason)`` of images that could not be used."""
    end: int
    """Dataset index one past the last image of this batch."""


class _BatchDecoder(Dataset):
    """``dataset[list of indices]`` -> :class:`ImageBatch` (runs inside a worker)."""

    def __init__(self, paths: Sequence[str], processor: Any) -> None:
        self.paths = list(paths)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices: list[int]) -> ImageBatch:
        good: list[int] = []
        images = []
        skipped: list[tuple[int, str, str]] = []
        for i in indices:
            decoded = open_rgb(self.paths[i])
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
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of images ``start, start + 1, ...`` of ``paths``, in order.

    Batches cover ``[start + k * batch_size, start + (k + 1) * batch_size)`` so that a run
    resumed at a batch boundary sees the same batches as an uninterrupted one.
    """
    if processor is None:
        raise ValueError("the encoder has no image processor: cannot preprocess images")
    sampler = BatchSampler(range(start, len(paths)), batch_size, drop_last=False)
    return DataLoader(
        _BatchDecoder(paths, processor),
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
