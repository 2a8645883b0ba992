"""Scoring of the demo's SAEs and raw neurons on held-out toy-world images.

For every SAE: R², L0, MS under the independent embedder (the toy DINOv2), the toy CLIP's own
embedding and the oracle embedding, top images, their
label purity and (Matryoshka) LCA depth per group; the same for the raw neurons of each
hook; and the same for untrained SAEs of every configuration (the baselines). Everything
is computed by the library's metric functions on the codes, with the paper's conventions
(``cfg.min_active``: neurons active on fewer than 16 images leave uniqueness and hierarchy).

The truth is the world's (:func:`~vlmsae.toyworld.worlds.get_world`): the hierarchy is
measured against its taxonomy (shapes: family → shape → colour; emoji: Unicode's group →
subgroup → emoji) at each image's class (the main emoji); label purity against every value
an image holds (both emoji of an emoji scene, and the background).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from vlmsae.data.store import ActivationStore
from vlmsae.demo.config import DemoConfig
from vlmsae.demo.recovery import GroupContents, group_contents, recover, subst_numbers
from vlmsae.demo.stages import EMBEDDINGS, Embeddings, SAERun, sae_config, test_activations
from vlmsae.demo.truth import label_purity

if TYPE_CHECKING:
    from vlmsae.evaluate.labels import ConceptLabels
    from vlmsae.toyworld.worlds import World

log = logging.getLogger(__name__)


@dataclass
class NeuronScores:
    """Per-neuron results of one set of neurons (an SAE, or a hook's raw neurons)."""

    ms_dino: np.ndarray
    """MS under the independent embedder (the world's toy DINOv2) ``[K]``: the main MS."""
    ms_clip: np.ndarray
    """MS under the toy-CLIP image embedding ``[K]`` (the decomposed model scoring itself)."""
    ms_oracle: np.ndarray
    """MS under the ground-truth (oracle) embedding ``[K]``."""
    n_active: np.ndarray
    """Images where the neuron is > 0 ``[K]``."""
    top: np.ndarray
    """Top image indices ``[K, T]`` (-1 pads)."""
    top_values: np.ndarray
    """Their activations ``[K, T]``."""
    purity: np.ndarray
    """Label purity of the top images ``[K]``."""

    def top_images(self):
        """The :class:`~vlmsae.metrics.top_images.TopImages` (indices and values)."""
        from vlmsae.metrics.top_images import TopImages

        return TopImages(self.top, self.top_values)


@dataclass
class SAEScores:
    run: SAERun
    d_sae: int
    r2: float
    l0: float
    dead_fraction: float
    neurons: NeuronScores
    group_sizes: tuple[int, ...]
    depth_by_group: list[float]
    """Mean LCA depth of the top images per Matryoshka group (one value for a plain SAE)."""
    uniqueness: dict | None = None
    """Pairs of kept neurons above each Jaccard threshold (SAEs at the default k)."""
    kind: str = "trained"
    """``trained``, or the untrained baseline it is (``init``, ``random``)."""
    recovery: dict[str, float] | None = None
    """Concept recovery (:func:`vlmsae.demo.recovery.recover`) and, at the default k, the
    fractions recovered with the SAE spliced into the toy CLIP."""
    groups: GroupContents | None = None
    """What each Matryoshka group's kept neurons detect best, and their object depth."""


@dataclass(frozen=True)
class WorldLabels:
    """Ground truth of the held-out images, in the stores' row order."""

    taxonomy: dict[str, np.ndarray]
    """Taxonomy level (top first) -> the value of each image's class ``int64 [N]`` (the
    main emoji's group, subgroup and emoji; the shapes world's family, shape, colour)."""
    present: dict[str, np.ndarray]
    """Attribute -> the values each image holds ``bool [N, V]`` (label purity reads these:
    shapes: family, shape, colour, size, background, one value each; emoji: group,
    subgroup and emoji of both emoji where there are two, and the background)."""
    concepts: ConceptLabels | None = None
    """The same truth as concepts for :mod:`vlmsae.evaluate` (concept recovery)."""


@dataclass
class Scores:
    saes: list[SAEScores]
    """Every trained SAE (all seeds)."""
    raw: dict[str, NeuronScores]
    labels: WorldLabels
    images: list[str]
    baselines: list[SAEScores]
    """Untrained SAEs of every configuration (``kind`` init and random)."""
    raw_recovery: dict[str, dict[str, float]] | None = None
    """Concept recovery of each hook's raw neurons."""


def purity_attributes(world: World) -> tuple[str, ...]:
    """The attributes label purity checks: the world's concept attributes
    (``oracle_attributes``: every attribute but the emoji world's ``second``, whose values
    are in ``emoji`` already, and ``none`` is no concept)."""
    return world.oracle_attributes


def world_labels(world_dir: Path, images: list[str]) -> WorldLabels:
    """The truth of the test images of an exported world, in the stores' row order."""
    from vlmsae.toyworld import read_exported
    from vlmsae.toyworld.worlds import world_of_split

    world = world_of_split(world_dir / "test")
    by_path = {str(im.path.resolve()): im.record for im in read_exported(world_dir / "test")}
    records = [by_path[str(Path(p).resolve())] for p in images]
    leaves = [world.leaf(r) for r in records]
    taxonomy = {
        level: np.array([world.attributes[level].index(leaf[d]) for leaf in leaves], np.int64)
        for d, level in enumerate(world.taxonomy_levels)
    }
    present = {}
    for a in purity_attributes(world):
        held_NV = np.zeros((len(records), len(world.attributes[a])), bool)
        index = {v: i for i, v in enumerate(world.attributes[a])}
        for n, r in enumerate(records):
            held_NV[n, [index[v] for v in world.concepts(r)[a]]] = True
        present[a] = held_NV
    return WorldLabels(taxonomy, present)


def score_neurons(
    acts: np.ndarray | sp.csr_matrix, emb: Embeddings, labels: WorldLabels, top_n: int
) -> NeuronScores:
    """MS under every embedding, top images and their purity for ``acts [N, K]``."""
    from vlmsae.metrics import monosemanticity
    from vlmsae.metrics.top_images import top_images

    ms = {e: monosemanticity(acts, ActivationStore(emb.store(e))) for e in EMBEDDINGS}
    top = top_images(acts, top_n)
    return NeuronScores(
        ms_dino=ms["dino"].ms,
        ms_clip=ms["clip"].ms,
        ms_oracle=ms["oracle"].ms,
        n_active=ms["dino"].n_active,
        top=top.indices,
        top_values=top.values,
        purity=label_purity(top.indices, labels.present),
    )


def lca_depth_by_group(
    neurons: NeuronScores,
    labels: WorldLabels,
    group_sizes: tuple[int, ...],
    min_active: int,
) -> list[float]:
    """Mean LCA depth (over the world's taxonomy levels) of each group's neurons, as the
    paper computes it: neurons active on >= ``min_active`` images, rounded per neuron."""
    from vlmsae.metrics.hierarchy import encode_taxonomy, hierarchy

    levels = [values.tolist() for values in labels.taxonomy.values()]
    paths = encode_taxonomy(list(zip(*levels, strict=True)))
    res = hierarchy(paths, neurons.top_images(), group_sizes, min_active=min_active)
    return res.group_mean_depth.tolist()


def uniqueness_of(neurons: NeuronScores, min_active: int) -> dict:
    """Pairs of kept neurons whose top-image sets overlap above each Jaccard threshold."""
    from vlmsae.metrics.uniqueness import uniqueness

    u = uniqueness(neurons.top_images(), min_active=min_active)
    pairs_above = dict(zip(map(str, u.thresholds), u.n_pairs_above.tolist(), strict=True))
    return {"n_kept": int(u.kept.sum()), "n_pairs": u.n_pairs, "pairs_above": pairs_above}


def score_sae(
    run: SAERun,
    x_ND: np.ndarray,
    emb: Embeddings,
    labels: WorldLabels,
    cfg: DemoConfig,
    sae=None,
    kind: str = "trained",
) -> SAEScores:
    """Score the SAE of ``run`` (or the given untrained ``sae``) on the test activations."""
    import torch

    from vlmsae.sae import SAE

    sae = SAE.load(run.path) if sae is None else sae
    with torch.no_grad():
        x = torch.from_numpy(x_ND)
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    resid = ((x - x_hat) ** 2).sum().item()
    total = ((x - x.mean(0)) ** 2).sum().item()
    codes_csr = sp.csr_matrix(codes.numpy())
    neurons = score_neurons(codes_csr, emb, labels, cfg.top_n)
    sizes = tuple(sae.cfg.group_sizes)
    recovery, groups = None, None
    if labels.concepts is not None:
        rec = recover(codes_csr, labels.concepts, seed=cfg.seed)
        recovery = dict(rec.numbers)
        groups = group_contents(rec.latent_set, neurons.n_active, neurons.top_images(),
                                labels.taxonomy, sizes, cfg.min_active,
                                labels.concepts.sets)  # fmt: skip
        if cfg.subst_images and run.k == cfg.k:
            from vlmsae.demo.stages import clip_of

            recovery.update(subst_numbers(sae, str(clip_of(cfg)),
                                          str(Path(cfg.out_dir) / "world" / "test"),
                                          cfg.subst_images))  # fmt: skip
    log.info(
        "score %s (%s): R² %.3f, mean MS %.3f (toy DINOv2) / %.3f (oracle), %d of %d neurons "
        "without an MS (dead or constant)", run.name, kind, 1.0 - resid / total,
        np.nanmean(neurons.ms_dino) if np.isfinite(neurons.ms_dino).any() else float("nan"),
        np.nanmean(neurons.ms_oracle) if np.isfinite(neurons.ms_oracle).any() else float("nan"),
        int(np.isnan(neurons.ms_dino).sum()), len(neurons.ms_dino),
    )  # fmt: skip
    return SAEScores(
        run=run,
        d_sae=sae.cfg.d_sae,
        r2=1.0 - resid / total,
        l0=float(codes_csr.nnz / codes_csr.shape[0]),
        dead_fraction=float((neurons.n_active == 0).mean()),
        neurons=neurons,
        group_sizes=sizes,
        depth_by_group=lca_depth_by_group(neurons, labels, sizes, cfg.min_active),
        uniqueness=uniqueness_of(neurons, cfg.min_active) if run.k == cfg.k else None,
        kind=kind,
        recovery=recovery,
        groups=groups,
    )


def score_baselines(
    cfg: DemoConfig, acts, x_by_hook: dict[str, np.ndarray], emb: Embeddings, labels
) -> list[SAEScores]:
    """Score untrained SAEs (both kinds) of every configuration, seeded with ``cfg.seed``."""
    from vlmsae.demo.baselines import KINDS, untrained_sae

    out = []
    from vlmsae.sae import SAE

    seen = {r.config: r for r in runs_of_seed(cfg, cfg.seed)}
    for run in seen.values():
        store = acts["train"][run.hook]
        sae_cfg = sae_config(cfg, run, x_by_hook[run.hook].shape[1])
        trained = SAE.load(run.path).cfg if (run.path / "config.json").exists() else None
        if trained is not None:  # its hook point: the untrained SAE splices in where it does
            sae_cfg = dataclasses.replace(
                sae_cfg,
                model=trained.model,
                layer=trained.layer,
                hookpoint=trained.hookpoint,
                tokens=trained.tokens,
            )
        for kind in KINDS:
            sae = untrained_sae(sae_cfg, store, kind, seed=run.seed, batch_size=cfg.batch_size)
            out.append(score_sae(run, x_by_hook[run.hook], emb, labels, cfg, sae, kind))
    return out


def runs_of_seed(cfg: DemoConfig, seed: int) -> list[SAERun]:
    """The planned runs of one seed (one per configuration)."""
    from vlmsae.demo.stages import planned_saes

    return [r for r in planned_saes(cfg) if r.seed == seed]


def score_all(cfg: DemoConfig, acts, emb: Embeddings, runs: list[SAERun], world: Path) -> Scores:
    """Score every SAE and every hook's raw neurons on the test split."""
    from vlmsae.core.progress import tqdm

    images = ActivationStore(emb.clip).images
    labels = world_labels(world, images)
    for hook in cfg.hooks:
        hook_images = ActivationStore(acts["test"][hook]).images
        assert hook_images == images, f"{hook} test store lists other images than the embeddings"
    from vlmsae.demo.recovery import concept_labels

    concepts = concept_labels(ActivationStore(acts["test"][cfg.hooks[0]]))
    labels = dataclasses.replace(labels, concepts=concepts)
    x_by_hook = {hook: test_activations(acts, hook) for hook in cfg.hooks}
    raw = {}
    for hook, x in x_by_hook.items():
        log.info("score the raw neurons of %s (%d)", hook, x.shape[1])
        raw[hook] = score_neurons(x, emb, labels, cfg.top_n)
    raw_rec = {hook: recover(x, labels.concepts, seed=cfg.seed).numbers
               for hook, x in x_by_hook.items()}  # fmt: skip
    saes = [
        score_sae(run, x_by_hook[run.hook], emb, labels, cfg)
        for run in tqdm(runs, desc="score SAEs", unit="sae")
    ]
    baselines = score_baselines(cfg, acts, x_by_hook, emb, labels)
    return Scores(saes, raw, labels, images, baselines, raw_rec)
