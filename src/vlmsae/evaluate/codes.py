"""One row per image of what is evaluated: an SAE's codes, or the raw neurons, of a store.

A store may hold several rows (tokens) per image; as ``vlmsae score`` does, the rows of an
image are encoded one by one and then aggregated per image (``max`` by default), streaming
over the store in chunks that end at image boundaries
(:func:`vlmsae.metrics._source.iter_images`). Only the per-image codes are kept (sparse:
``k`` entries per image at most for a TopK SAE).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from vlmsae.core.progress import progress
from vlmsae.encoders.codes import sae_codes
from vlmsae.metrics._source import image_index_of, iter_images, n_rows, read_rows

if TYPE_CHECKING:
    from vlmsae.data.store import ActivationStore
    from vlmsae.sae import SAE


class _Encoded:
    """Rows of a store as the SAE's codes, read on demand (the interface of a store that
    :func:`~vlmsae.metrics._source.iter_images` reads)."""

    is_sparse = True

    def __init__(self, store: ActivationStore, sae: SAE) -> None:
        self.store, self.sae, self.d = store, sae, sae.cfg.d_sae

    def __len__(self) -> int:
        return len(self.store)

    def iter_chunks(self) -> None:  # marks a store-like source; never called
        raise NotImplementedError

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        import torch

        x_RD = np.ascontiguousarray(read_rows(self.store, start, stop, np.float32))
        return sae_codes(self.sae, torch.from_numpy(x_RD))


def image_index(store: ActivationStore) -> np.ndarray:
    """``int64 [N]`` the store's image index of each per-image row of :func:`per_image`."""
    return np.unique(np.asarray(store.rows[:, 0]))


def per_image(
    store: ActivationStore,
    sae: SAE | None = None,
    *,
    aggregate: str = "max",
    chunk_rows: int = 8192,
    desc: str = "encode",
) -> Any:
    """``[N, S]`` one row per image of ``store``: the SAE's codes (CSR) when ``sae`` is
    given, else the store's own rows (dense float32; CSR for a code store), aggregated over
    the rows of each image with ``aggregate`` (``max`` or ``mean``)."""
    image_R = image_index_of(store)
    source: Any = store if sae is None else _Encoded(store, sae)
    blocks = []
    bar = progress(total=n_rows(store), desc=desc, unit="row")
    done = 0
    for images, block in iter_images(source, chunk_rows, image_R, aggregate, np.float32):
        blocks.append(block)
        last = images[-1]
        rows = last + 1 if image_R is None else int(np.searchsorted(image_R, last, "right"))
        bar.update(rows - done)
        done = rows
    bar.close()
    if any(sp.issparse(b) for b in blocks):
        return sp.vstack([sp.csr_matrix(b) for b in blocks], format="csr")
    return np.concatenate(blocks).astype(np.float32, copy=False)


def untrained_like(sae: SAE, seed: int = 0) -> SAE:
    """A freshly initialised SAE of the same config (shape, sparsity, k): the baseline that
    shows what the architecture alone gives. A BatchTopK SAE without a threshold encodes
    the top k latents per image."""
    import torch

    from vlmsae.sae import SAE

    out = SAE(sae.cfg, generator=torch.Generator().manual_seed(seed))
    return out.eval()
