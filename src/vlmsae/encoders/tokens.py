"""Hook points and token selection: which rows a block output of shape ``[B, T, D]`` gives.

Token selections (DESIGN.md, "Hook points"):

- ``cls``: the CLS token (token 0) of every image; an error for models without one (SigLIP).
- ``mean``: the mean over all tokens; token index ``-1`` (a pooled row).
- ``all``: every token is a row; token index ``0 .. T-1``.
- ``random:N``: ``N`` distinct tokens per image, drawn from a generator seeded by
  ``(seed, image index)`` so that a resumed run draws the same tokens as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

HOOKPOINTS = ("post_mlp_residual", "post_projection")
TOKEN_CHOICES = ("cls", "mean", "all", "random:N")


@dataclass(frozen=True)
class TokenSelection:
    """A parsed token selection."""

    kind: str
    """``"cls"``, ``"mean"``, ``"all"`` or ``"random"``."""
    n: int = 0
    """Tokens per image for ``random``."""
    seed: int = 0
    """Seed of the per-image generator for ``random``."""

    def __post_init__(self) -> None:
        if self.kind not in ("cls", "mean", "all", "random"):
            raise ValueError(
                f"unknown token selection {self.kind!r}; choose one of {TOKEN_CHOICES}"
            )
        if self.kind == "random" and self.n <= 0:
            raise ValueError(f"random:N needs a positive N, got {self.n}")

    @classmethod
    def parse(cls, spec: str | TokenSelection, seed: int = 0) -> TokenSelection:
        """Parse ``"cls" | "mean" | "all" | "random:N"``."""
        if isinstance(spec, TokenSelection):
            return spec
        text = str(spec).strip().lower()
        if text in ("cls", "mean", "all"):
            return cls(text, seed=seed)
        if text.startswith("random:"):
            try:
                n = int(text.split(":", 1)[1])
            except ValueError:
                n = 0
            if n <= 0:
                raise ValueError(
                    f"token selection {spec!r}: random:N needs a positive integer N; "
                    f"choose one of {', '.join(TOKEN_CHOICES)}"
                )
            return cls("random", n, seed)
        raise ValueError(
            f"unknown token selection {spec!r}; choose one of {', '.join(TOKEN_CHOICES)}"
        )

    def __str__(self) -> str:
        return f"random:{self.n}" if self.kind == "random" else self.kind

    @property
    def pooled(self) -> bool:
        """One row per image (``cls`` or ``mean``)."""
        return self.kind in ("cls", "mean")


class SelectedRows(NamedTuple):
    """Rows chosen from a block output."""

    acts_RD: torch.Tensor
    """``[R, D]`` the selected rows."""
    image_R: np.ndarray
    """``int64 [R]`` dataset image index of each row."""
    token_R: np.ndarray
    """``int64 [R]`` token index of each row (-1 = pooled over tokens)."""


def select_tokens(
    hidden_BTD: torch.Tensor, selection: TokenSelection, image_index_B: np.ndarray
) -> SelectedRows:
    """Pick the rows of ``hidden_BTD`` (block output) that ``selection`` asks for."""
    b, t, d = hidden_BTD.shape
    image_index_B = np.asarray(image_index_B, dtype=np.int64)
    assert len(image_index_B) == b, "one image index per batch element"
    if selection.kind == "cls":
        return SelectedRows(hidden_BTD[:, 0], image_index_B, np.zeros(b, np.int64))
    if selection.kind == "mean":
        return SelectedRows(hidden_BTD.mean(dim=1), image_index_B, np.full(b, -1, np.int64))
    if selection.kind == "all":
        return SelectedRows(
            hidden_BTD.reshape(b * t, d),
            np.repeat(image_index_B, t),
            np.tile(np.arange(t, dtype=np.int64), b),
        )
    if selection.n > t:
        raise ValueError(f"random:{selection.n} asks for more tokens than the model has ({t})")
    token_BN = np.stack([random_tokens(selection, int(i), t) for i in image_index_B])
    gather = torch.as_tensor(token_BN, device=hidden_BTD.device)
    rows = torch.gather(hidden_BTD, 1, gather[..., None].expand(-1, -1, d))
    return SelectedRows(
        rows.reshape(-1, d), np.repeat(image_index_B, selection.n), token_BN.reshape(-1)
    )


def random_tokens(selection: TokenSelection, image_index: int, n_tokens: int) -> np.ndarray:
    """The sorted token indices ``random:N`` draws for one image (a pure function)."""
    rng = np.random.default_rng([selection.seed, image_index])
    return np.sort(rng.choice(n_tokens, size=selection.n, replace=False)).astype(np.int64)
