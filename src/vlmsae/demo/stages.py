"""The data-producing stages of the demo: world, activations, embeddings, SAEs.

Each stage is the library function a user would call (the same code path as on real
models) and skips its work when its output is already complete, so an interrupted demo
picks up where it stopped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmsae.data.store import MANIFEST, ActivationStore
from vlmsae.demo.config import HOOK_PROJECTION, DemoConfig

log = logging.getLogger(__name__)


def _complete_store(path: Path) -> bool:
    try:
        return ActivationStore(path).manifest["complete"]
    except Exception:  # missing or interrupted: (re)build it
        return False


def export_world(cfg: DemoConfig) -> Path:
    """Render the train and test splits of ``cfg.world`` as ImageFolders (iNaturalist
    layout). An output directory that holds another world's demo is refused: resuming
    would mix the two; so are missing models, before any image is rendered."""
    from vlmsae.toyworld import export_imagefolder

    root = Path(cfg.out_dir) / "world"
    splits = (("train", cfg.n_train), ("test", cfg.n_test))
    for split, _ in splits:
        if (root / split / "attributes.csv").exists():
            check_world(root / split, cfg)
    clip_of(cfg), embedder_of(cfg)
    for split, n in splits:
        if not (root / split / "attributes.csv").exists():
            export_imagefolder(root, split=split, n=n, seed=cfg.seed, world=cfg.toy_world)
    return root


def check_world(split_dir: Path, cfg: DemoConfig) -> None:
    """Raise ``UserError`` where the exported ``split_dir`` is not of ``cfg.world`` with
    ``cfg.objects`` objects per image."""
    from vlmsae.core.errors import UserError
    from vlmsae.toyworld.worlds import world_of_split

    found = world_of_split(split_dir)
    if found.name != cfg.world:
        raise UserError(
            f"{cfg.out_dir} holds a demo of the {found.name} world, and this run is of the "
            f"{cfg.world} world; give another --out, remove {cfg.out_dir}, or pass "
            f"--world {found.name} to resume it"
        )
    wanted = cfg.toy_world
    if found.options != wanted.options:
        have, want = (
            ", ".join(f"{k}={v}" for k, v in w.options.items()) or "its default options"
            for w in (found, wanted)
        )
        raise UserError(
            f"{cfg.out_dir} holds a demo of the {found.name} world with {have}, and this run "
            f"asks for {want}; give another --out, remove {cfg.out_dir}, or pass the same "
            "--objects to resume it"
        )


def clip_of(cfg: DemoConfig) -> Path:
    """The toy CLIP of ``cfg.world`` (in ``cfg.models_dir``, default the shipped one)."""
    from vlmsae.core.errors import UserError
    from vlmsae.toyworld import clip_path

    try:
        return clip_path(cfg.models_dir, world=cfg.world)
    except FileNotFoundError as err:
        raise UserError(f"{err}, or give --models-dir with the {cfg.world} world's models") from err


def embedder_of(cfg: DemoConfig) -> str:
    """The independent embedder of ``cfg``: ``cfg.embedder``, else the world's toy DINOv2
    (``dino`` in ``cfg.models_dir``, or the shipped ``toyworld:WORLD/dino``)."""
    from vlmsae.core.errors import UserError
    from vlmsae.encoders.hub import resolve_alias

    if cfg.embedder is not None:
        return resolve_alias(cfg.embedder, kind="dino")
    if cfg.models_dir is not None:
        path = Path(cfg.models_dir) / "dino"
    else:
        path = Path(resolve_alias(f"toyworld:{cfg.world}/dino", kind="dino"))
    if not (path / "config.json").is_file():
        raise UserError(
            f"no toy dino model (the independent embedder MS is scored with) in {path}; "
            f"build it with `vlmsae toyworld build --world {cfg.world} --stages dino`, or "
            "give --embedder or --models-dir"
        )
    return str(path)


def cache_world(cfg: DemoConfig, world: Path) -> dict[str, dict[str, Path]]:
    """Cache every hook of the toy CLIP (CLS token) for both splits: ``{split: {hook: dir}}``."""
    from vlmsae.encoders.cache import CacheConfig, cache_activations

    out: dict[str, dict[str, Path]] = {}
    for split in ("train", "test"):
        split_dir = Path(cfg.out_dir) / "acts" / split
        stores = {
            h: split_dir / ("post_projection" if h == HOOK_PROJECTION else h) for h in cfg.hooks
        }
        if not all(_complete_store(p) for p in stores.values()):
            cache_cfg = CacheConfig(
                layers=cfg.layers,
                hookpoints=("post_mlp_residual", "post_projection"),
                tokens="cls",
                dtype="float32",
                batch_size=256,
                workers=0,
                resume=(split_dir / "post_projection" / MANIFEST).exists(),
                progress=False,
            )
            cache_activations(clip_of(cfg), world, split_dir, cache_cfg, split=split)
        out[split] = stores
    return out


EMBEDDINGS = ("dino", "clip", "oracle")
"""The embeddings MS is scored with, the main one first."""


@dataclass(frozen=True)
class Embeddings:
    """The embedding stores MS is computed with, for the test split."""

    dino: Path
    """The independent embedder's (the world's toy DINOv2, trained self-supervised on images
    alone: the paper's DINOv2): the main MS of every finding."""
    clip: Path
    """The toy CLIP's image embedding: the model being decomposed scores itself."""
    oracle: Path
    """Ground-truth attributes, one-hot per attribute: the truth MS is checked against."""

    def store(self, name: str) -> Path:
        """The store of embedding ``name`` (one of :data:`EMBEDDINGS`)."""
        return {"dino": self.dino, "clip": self.clip, "oracle": self.oracle}[name]


def embed_world(cfg: DemoConfig, world: Path) -> Embeddings:
    """Write the embedding stores of the test images and check they align row by row."""
    from vlmsae.encoders.cache import embed_images
    from vlmsae.toyworld import write_oracle_embeddings

    emb_dir = Path(cfg.out_dir) / "embeddings"
    emb = Embeddings(emb_dir / "dino", emb_dir / "clip", emb_dir / "oracle")
    for path, model in ((emb.dino, embedder_of(cfg)), (emb.clip, str(clip_of(cfg)))):
        if not _complete_store(path):
            embed_images(model, world, path, split="test", workers=0, progress=False)
    if not _complete_store(emb.oracle):
        write_oracle_embeddings(world / "test", emb.oracle)
    lists = [[Path(p).resolve() for p in ActivationStore(emb.store(e)).images] for e in EMBEDDINGS]
    assert all(x == lists[0] for x in lists), "the embedding stores list different images"
    return emb


@dataclass(frozen=True)
class SAERun:
    """One trained SAE of the demo."""

    hook: str
    arch: str
    expansion: int
    k: int
    path: Path
    seed: int = 0

    @property
    def config(self) -> str:
        """The configuration, the same for every seed."""
        return f"{self.hook}-{self.arch}-x{self.expansion}-k{self.k}"

    @property
    def name(self) -> str:
        return f"{self.config}-s{self.seed}"


def planned_saes(cfg: DemoConfig) -> list[SAERun]:
    """The Table's grid (hook × arch × expansion at the default k) plus the K sweep, each
    trained with every seed of ``cfg.seed_list``."""
    root = Path(cfg.out_dir) / "saes"
    runs = [
        SAERun(hook, arch, e, cfg.k, Path())
        for hook in cfg.hooks
        for arch in cfg.archs
        for e in cfg.expansions
    ]
    sweep_exp = max([e for e in cfg.expansions if e < 16] or cfg.expansions)
    runs += [
        SAERun(
            cfg.hooks[-2] if len(cfg.hooks) > 1 else cfg.hooks[0], "batchtopk", sweep_exp, k, Path()
        )
        for k in cfg.k_sweep
    ]
    unique = {r.config: r for r in runs}
    return [
        SAERun(r.hook, r.arch, r.expansion, r.k, root / f"{r.config}-s{seed}", seed)
        for seed in cfg.seed_list
        for r in unique.values()
    ]


def sae_config(cfg: DemoConfig, run: SAERun, d_in: int):
    """The SAE configuration of ``run`` on activations of width ``d_in``."""
    from vlmsae.sae import SAEConfig

    return SAEConfig(
        d_in=d_in,
        expansion=run.expansion,
        sparsity="batchtopk",
        k=min(run.k, d_in * run.expansion),
        group_fractions=cfg.group_fractions if run.arch == "matryoshka" else None,
    )


def _train_job(runs: list[SAERun], train_cfgs: list, train_dir: Path, val_dir: Path) -> int:
    """Train the SAEs of one hook and seed on one read of each batch (a sweep; a worker
    process may run this); an interrupted run resumes on its own. Returns the count."""
    import torch

    from vlmsae.sae.checkpoint import has_trainer_state
    from vlmsae.train import train_sae, train_sweep

    torch.manual_seed(runs[0].seed)
    fresh = []
    for run, train_cfg in zip(runs, train_cfgs, strict=True):
        if has_trainer_state(run.path):  # interrupted: continue it where it stopped
            train_sae(train_dir, train_cfg, out_dir=run.path, val=val_dir, resume=True)
        else:
            fresh.append((run, train_cfg))
    if fresh:
        train_sweep(
            train_dir, [c for _, c in fresh], [r.path for r, _ in fresh], val=val_dir
        )  # bit-identical to training each alone (tests/test_sweep.py)
    return len(runs)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker: toy matrices gain nothing from more


def _run_jobs(jobs: list[tuple], workers: int) -> None:
    """Run training jobs here, or in ``workers`` processes (seeded: same results)."""
    from vlmsae.core.progress import tqdm

    bar = tqdm(total=sum(len(job[0]) for job in jobs), desc="train SAEs", unit="sae")

    def names(job: tuple) -> str:
        return ", ".join(r.name for r in job[0])

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            log.info("train %d SAEs as one sweep: %s", len(job[0]), names(job))
            bar.update(_train_job(*job))
        bar.close()
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # no fork of a process that holds torch's thread pools
    with ProcessPoolExecutor(min(workers, len(jobs)), ctx, initializer=_worker_init) as pool:
        futures = {pool.submit(_train_job, *job): job for job in jobs}
        log.info("train %d sweeps in %d processes", len(jobs), min(workers, len(jobs)))
        for done in as_completed(futures):
            bar.update(done.result())  # a failed run stops the demo with its own error
            log.info("trained %s", names(futures[done]))
    bar.close()


def log_every(steps: int) -> int:
    """Steps between validation log points: a divisor of ``3 * steps // 4`` (the
    convergence check reads R² there and at the end), halved while it leaves fewer than 8
    log points."""
    every = math.gcd(steps, 3 * steps // 4) or steps
    while every % 2 == 0 and steps // every < 8:
        every //= 2
    return max(1, every)


def train_saes(cfg: DemoConfig, acts: dict[str, dict[str, Path]]) -> list[SAERun]:
    """Train every planned SAE (skipping finished ones) on the train split: the SAEs of
    each hook and seed as one sweep (one read of each batch), in ``cfg.workers``
    processes."""
    from vlmsae.train import TrainConfig

    runs = planned_saes(cfg)
    groups: dict[tuple[str, int], list] = {}  # the SAEs of one hook and seed: one sweep
    for run in runs:
        if (run.path / "sae.safetensors").exists() and (run.path / "summary.json").exists():
            continue
        store = ActivationStore(acts["train"][run.hook])
        sae_cfg = sae_config(cfg, run, store.d)
        paper_lr = TrainConfig(sae=sae_cfg).learning_rate  # 2e-4 / sqrt(d_sae / 2**14)
        train_cfg = TrainConfig(
            sae=sae_cfg,
            lr=paper_lr * cfg.lr_scale,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            seed=run.seed,
            warmup_steps=max(1, cfg.steps // 20),
            threshold_start_step=cfg.steps // 4,
            dead_after=cfg.batch_size * max(1, cfg.steps // 5),
            log_every=log_every(cfg.steps),
            progress=False,
        )
        groups.setdefault((run.hook, run.seed), []).append((run, train_cfg))
    jobs = [
        ([r for r, _ in g], [c for _, c in g], acts["train"][hook], acts["test"][hook])
        for (hook, _), g in groups.items()
    ]
    jobs.sort(key=lambda job: -sum(r.expansion for r in job[0]))  # the largest first
    _run_jobs(jobs, cfg.workers)
    return runs


def test_activations(acts: dict[str, dict[str, Path]], hook: str) -> np.ndarray:
    """Dense ``float32 [N, d]`` test activations of one hook (small at toy scale)."""
    return ActivationStore(acts["test"][hook]).to_numpy()
