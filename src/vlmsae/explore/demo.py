"""The demo's explorer: labels and the neuron browser of one toy-world SAE.

``vlmsae demo`` calls :func:`explore_demo` once its SAEs are trained and links the
returned ``index.html`` from its report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def explore_demo(
    out_dir: str | Path,
    sae_dir: str | Path,
    activations: str | Path,
    oracle: str | Path,
    clip: str = "toyworld",
) -> dict[str, Any]:
    """Label the neurons of ``sae_dir`` with the toy CLIP (``clip``: default the shipped
    one of the store's world) over the world's concepts and build its browser (MS under the
    ``oracle`` embedding store, heatmaps recomputed with the toy CLIP) into
    ``out_dir/explore``.

    Returns ``{"index": path of index.html, "labels": the label summary (with
    ``toyworld.accuracy``, the share of neurons with oracle MS >= 0.8 whose label is one of
    their true concepts)}``.
    """
    from vlmsae.data.store import ActivationStore
    from vlmsae.explore.build import build_site
    from vlmsae.explore.labels import label_sae
    from vlmsae.explore.site import ExploreConfig

    out_dir = Path(out_dir)
    labels = label_sae(sae_dir, activations, out_dir / "labels", clip=clip, vocab="toyworld")
    model = ActivationStore(activations).manifest.get("model")
    site = build_site(
        sae_dir, activations, out_dir / "explore", embeddings=oracle,
        labels=out_dir / "labels" / "labels.csv", model=model,
        cfg=ExploreConfig(title="vlmsae demo neurons"),
    )  # fmt: skip
    log.info("demo explorer: %s", site.index_html)
    return {"index": site.index_html, "labels": labels}


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
    result = explore_demo(cfg.out_dir, pick.path, acts["test"][hook], emb.oracle, clip)
    return {"sae": pick.name, **result}
