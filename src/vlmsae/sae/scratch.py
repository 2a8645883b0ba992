"""Buffers kept across training steps, one per name and thread.

A sweep trains its SAEs one after another on one thread: sharing these ``[B, S]`` and
``[G, B, D]`` buffers keeps the memory of one step, not one per SAE, and saves the page
faults that fresh temporaries of that size cost.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

_SCRATCH: dict[tuple[int, str], Tensor] = {}


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The buffer of ``name`` for this thread, replaced when shape, dtype or device change
    (its next user overwrites it)."""
    key = (threading.get_ident(), name)
    buf = _SCRATCH.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
        _SCRATCH.pop(key, None)  # free the old one first
        buf = _SCRATCH[key] = torch.empty(shape, dtype=dtype, device=device)
    return buf


def release_thread_buffers() -> None:
    """Free this thread's buffers (the trainer calls it when training ends)."""
    for key in [k for k in _SCRATCH if k[0] == threading.get_ident()]:
        del _SCRATCH[key]
