"""The SAE stage: one sparse autoencoder module, its trainer and checkpoints.

``SAE`` (pluggable sparsity: relu / topk / batchtopk / jumprelu, Matryoshka groups on
top), ``SAEConfig``, ``TrainConfig``, ``train_sae``; checkpoints are directories with
``config.json`` + ``sae.safetensors`` (``SAE.save`` / ``SAE.load``).
"""

from __future__ import annotations

from vlmsae.sae.checkpoint import CheckpointError, load_sae, save_sae
from vlmsae.sae.config import SAEConfig, TrainConfig
from vlmsae.sae.model import SAE, SAEOutput
from vlmsae.sae.sparse import ActiveLatents
from vlmsae.sae.sweep import load_sweep, train_sweep
from vlmsae.sae.train import NonFiniteError, train_sae
from vlmsae.sae.trainer_io import evaluate_sae

__all__ = [
    "SAE",
    "ActiveLatents",
    "CheckpointError",
    "NonFiniteError",
    "SAEConfig",
    "SAEOutput",
    "TrainConfig",
    "evaluate_sae",
    "load_sae",
    "load_sweep",
    "save_sae",
    "train_sae",
    "train_sweep",
]
