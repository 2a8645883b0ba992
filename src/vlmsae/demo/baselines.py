"""Untrained SAEs: the baseline every MS statistic of the demo must clear.

Two of the same width and k as each trained configuration: ``init`` is the SAE the trainer
starts from (``W_enc = W_decᵀ``, ``b_dec`` at the geometric median of the first training
batch), ``random`` has an independent random encoder and ``b_dec = 0``. Their neurons are
scored exactly like a trained SAE's; a finding only counts where it clears both.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlmsae.sae import SAE, SAEConfig

KINDS = ("init", "random")
"""The untrained baselines: the trainer's initialisation, and a fully random SAE."""


def untrained_sae(
    sae_cfg: SAEConfig, train_store: str | Path, kind: str, *, seed: int, batch_size: int
) -> SAE:
    """An untrained SAE (eval mode) of ``kind`` in :data:`KINDS`, seeded like training."""
    from vlmsae.train.data import make_source
    from vlmsae.train.step import geometric_median

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(sae_cfg, generator=gen)  # the trainer's weights at step 0 (same seed)
    with torch.no_grad():
        if kind == "init":
            batches = make_source(train_store).batches(batch_size, seed, 0)
            sae.b_dec.copy_(geometric_median(next(iter(batches)).float()))
        else:
            w_SD = torch.randn(sae_cfg.d_sae, sae_cfg.d_in, generator=gen)
            sae.W_enc.copy_((w_SD / w_SD.norm(dim=1, keepdim=True)).t())
    return sae.eval()
