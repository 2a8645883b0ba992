"""Training SAEs: one run object read top to bottom, sweeps as the general case.

``train_sae(data, cfg, out_dir)`` trains one SAE; ``train_sweep`` trains many on one read
of each batch. ``TrainConfig`` holds the recipe; placement over ranks, resume state,
metric sinks and the data order live beside them.
"""

from __future__ import annotations

from vlmsae.core.errors import NonFiniteError
from vlmsae.train.config import TrainConfig
from vlmsae.train.run import train_sae
from vlmsae.train.state import evaluate_sae
from vlmsae.train.sweep import load_sweep, train_sweep

__all__ = [
    "NonFiniteError",
    "TrainConfig",
    "evaluate_sae",
    "load_sweep",
    "train_sae",
    "train_sweep",
]
