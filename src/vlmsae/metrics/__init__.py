"""Metrics stage: Monosemanticity Score, top-activating images, uniqueness, hierarchy."""

from vlmsae.metrics.hierarchy import (
    LCADepths,
    depth_by_group,
    label_paths,
    lca_depths,
    parse_taxonomy_name,
)
from vlmsae.metrics.top_images import TopImages, top_images
from vlmsae.metrics.uniqueness import Uniqueness, uniqueness

__all__ = [
    "LCADepths",
    "TopImages",
    "Uniqueness",
    "depth_by_group",
    "label_paths",
    "lca_depths",
    "parse_taxonomy_name",
    "top_images",
    "uniqueness",
]
