"""Metrics stage: Monosemanticity Score, reconstruction metrics, top-activating images,
uniqueness, hierarchy depth and agreement with human judgements.

All functions are pure: they take arrays (dense, ``scipy.sparse`` CSR, torch tensors) or
activation stores and return named results.
"""

from __future__ import annotations

from vlmsae.metrics.ms import (
    MSResult,
    compare_sae_raw,
    monosemanticity,
    monosemanticity_score,
    summarize_ms,
)

__all__ = [
    "MSResult",
    "compare_sae_raw",
    "monosemanticity",
    "monosemanticity_score",
    "summarize_ms",
]
