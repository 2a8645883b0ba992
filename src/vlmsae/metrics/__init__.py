"""Metrics stage: Monosemanticity Score, reconstruction metrics, top-activating images,
uniqueness, hierarchy depth and agreement with human judgements.

All functions are pure: they take arrays (dense, ``scipy.sparse`` CSR, torch tensors) or
activation stores and return named results.
"""

from __future__ import annotations

from vlmsae.metrics.agreement import agreement, read_pairs
from vlmsae.metrics.hierarchy import (
    Hierarchy,
    encode_taxonomy,
    hierarchy,
    inat_label_path,
    label_paths_from_images,
)
from vlmsae.metrics.maxms import max_ms_stats, max_ms_summary
from vlmsae.metrics.ms import (
    MSResult,
    compare_sae_raw,
    monosemanticity,
    monosemanticity_score,
    summarize_ms,
)
from vlmsae.metrics.recon import ReconAccumulator, dead_fraction, l0, normalized_mse, r2
from vlmsae.metrics.tables import ms_table, tradeoff_table
from vlmsae.metrics.top_images import MIN_ACTIVE, TopImages, kept_neurons, top_images
from vlmsae.metrics.uniqueness import Uniqueness, uniqueness

__all__ = [
    "MIN_ACTIVE",
    "Hierarchy",
    "MSResult",
    "ReconAccumulator",
    "TopImages",
    "Uniqueness",
    "agreement",
    "compare_sae_raw",
    "dead_fraction",
    "encode_taxonomy",
    "hierarchy",
    "inat_label_path",
    "kept_neurons",
    "l0",
    "max_ms_stats",
    "max_ms_summary",
    "label_paths_from_images",
    "monosemanticity",
    "monosemanticity_score",
    "ms_table",
    "normalized_mse",
    "r2",
    "read_pairs",
    "summarize_ms",
    "top_images",
    "tradeoff_table",
    "uniqueness",
]
