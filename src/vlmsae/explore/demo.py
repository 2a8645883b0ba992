"""The demo's explorer: labels and the neuron browser of one toy-world SAE.

``vlmsae demo`` calls :func:`explore_demo` once its SAEs are trained and links the
returned ``index.html`` from its report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def explore_demo(
    out_dir: str | Path,
    sae_dir: str | Path,
    activations: str | Path,
    embeddings: Mapping[str, str | Path],
    clip: str = "toyworld",
    min_active: int = 16,
) -> dict[str, Any]:
    """Label the neurons of ``sae_dir`` with the toy CLIP (``clip``: default the shipped
    one of the store's world) over the world's concepts and build its browser into
    ``out_dir/explore``: one MS column per ``{embedder name: embedding store}`` (the first
    ranks, as the demo's findings do: give the independent embedder's first), heatmaps
    recomputed with the toy CLIP.

    Returns ``{"index": path of index.html, "ms": the embedders of the MS columns, "labels":
    the label summary (``toyworld``: the share of neurons with oracle MS >= 0.8 whose label
    is one of their true concepts, and the share over every labelled neuron)}``.
    """
    from vlmsae.data.store import ActivationStore
    from vlmsae.explore.build import build_site
    from vlmsae.explore.labels import label_sae
    from vlmsae.explore.site import ExploreConfig

    out_dir = Path(out_dir)
    labels = label_sae(sae_dir, activations, out_dir / "labels", clip=clip, vocab="toyworld")
    model = ActivationStore(activations).manifest.get("model")
    site = build_site(
        sae_dir, activations, out_dir / "explore", embeddings=dict(embeddings),
        labels=out_dir / "labels" / "labels.csv", model=model,
        cfg=ExploreConfig(title="vlmsae demo neurons", min_active=min_active),
    )  # fmt: skip
    log.info("demo explorer: %s", site.index_html)
    return {"index": site.index_html, "ms": list(embeddings), "labels": labels}


def explore_demo_run(cfg: Any, runs: list[Any], acts: dict, emb: Any) -> dict[str, Any]:
    """:func:`explore_demo` for a ``vlmsae demo`` run: the widest Matryoshka SAE (else
    BatchTopK) at the default k on the last transformer block, written into
    ``cfg.out_dir`` (``explore/index.html``, ``labels/``).

    Args mirror ``run_demo``'s locals: the ``DemoConfig``, the trained ``SAERun`` list,
    ``{split: {hook: store dir}}`` of the cached activations and the ``Embeddings``.
    """
    hook = cfg.hooks[-2] if len(cfg.hooks) > 1 else cfg.hooks[0]
    candidates = [r for r in runs if r.k == cfg.k and r.hook == hook]
    pick = max(candidates, key=lambda r: (r.arch == "matryoshka", r.expansion))
    from vlmsae.toyworld import clip_path

    clip = str(clip_path(cfg.models_dir, world=cfg.world))
    # the findings' MS (the independent embedder) first: it ranks the browser's neurons
    embeddings = {"toy DINOv2": emb.dino, "toy CLIP": emb.clip, "oracle": emb.oracle}
    result = explore_demo(cfg.out_dir, pick.path, acts["test"][hook], embeddings, clip,
                          min_active=cfg.min_active)  # fmt: skip
    return {"sae": pick.name, **result}
