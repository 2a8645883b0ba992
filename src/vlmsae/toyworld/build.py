"""``build_toyworld``: train the toy CLIP, LLaVA and DINOv2 (the independent embedder) from
scratch and save them.

The build is deterministic: the same seed, config and thread count give the same
weights (CPU kernels are deterministic at a fixed thread count). The shipped models in
``vlmsae/toyworld/models`` were made by ``build_toyworld()`` with the defaults.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vlmsae import __version__
from vlmsae.core.io import write_json
from vlmsae.toyworld.batches import make_batch, make_image_processor
from vlmsae.toyworld.clip import ClipTrainConfig, make_clip_processor, train_clip
from vlmsae.toyworld.llava import LlavaTrainConfig, make_llava_processor, train_llava
from vlmsae.toyworld.ssl import SslTrainConfig, similarity_vs_truth, train_ssl
from vlmsae.toyworld.worlds import DEFAULT_WORLD, WORLDS, get_world

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the toy models."""

    seed: int = 0
    """World seed (images) and model seed (weights, batch order)."""
    n_train: int = get_world().build_n_train
    """Training images, rendered once and shared by both models."""
    clip: ClipTrainConfig = field(default_factory=lambda: ClipTrainConfig(**get_world().build_clip))
    """The toy CLIP's size and first schedule (its ``seed`` is replaced by ``seed``)."""
    clip_more: tuple[tuple[int, float], ...] = ()
    """Further CLIP phases, each ``(steps, peak lr)``: training continues from the previous
    phase's weights with a fresh optimizer, warmup and cosine decay, and batches drawn with
    seed ``seed + phase``. None by default."""
    llava: LlavaTrainConfig = field(
        default_factory=lambda: LlavaTrainConfig(**get_world().build_llava)
    )
    """The toy LLaVA's size and schedule (its ``seed`` is replaced by ``seed``)."""
    dino: SslTrainConfig = field(default_factory=lambda: SslTrainConfig(**get_world().build_dino))
    """The independent embedder's size and self-supervised schedule (``seed`` replaced)."""
    threads: int = 1
    """torch CPU threads; part of the recipe, since reductions depend on it."""
    world: str = DEFAULT_WORLD
    """The toy world (one of ``WORLDS``: ``shapes`` or ``emoji``). The defaults above are
    the default world's recipe; :func:`default_config` gives any world's."""

    def __post_init__(self) -> None:
        if self.n_train < 64:
            raise ValueError(f"n_train must be >= 64, got {self.n_train}")
        if any(steps < 1 or not 0 < lr < 1 for steps, lr in self.clip_more):
            raise ValueError(f"clip_more phases need steps >= 1 and 0 < lr < 1: {self.clip_more}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def default_config(world: str | None = None, seed: int = 0) -> BuildConfig:
    """The recipe of the shipped models of ``world`` (default: the default world)."""
    w = get_world(world)
    return BuildConfig(
        seed=seed,
        world=w.name,
        n_train=w.build_n_train,
        clip=ClipTrainConfig(**w.build_clip),
        llava=LlavaTrainConfig(**w.build_llava),
        dino=SslTrainConfig(**w.build_dino),
    )


def _save(model: Any, processor: Any, out_dir: Path) -> None:
    """``save_pretrained`` into a fresh folder, swapped in only once complete."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


STAGES = ("clip", "llava", "dino")


def _check_overwrite(out: Path, stages: tuple[str, ...], overwrite: bool) -> None:
    from vlmsae.core.errors import UserError

    there = [s for s in stages if (out / s).exists()]
    if there and not overwrite:
        shipped = out.resolve() in {get_world(w).models_dir.resolve() for w in WORLDS}
        what = "the shipped toy models" if shipped else "models"
        raise UserError(
            f"{out} already holds {what} ({', '.join(there)}); pass --overwrite "
            "(overwrite=True) to replace them, or choose another --out"
        )


def build_toyworld(
    out_dir: str | Path | None = None,
    seed: int = 0,
    config: BuildConfig | None = None,
    stages: tuple[str, ...] = STAGES,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the toy models and save them under ``out_dir/clip``, ``out_dir/llava`` and
    ``out_dir/dino`` (the independent embedder, with how well its similarities track the
    truth's in the build record).

    Args:
        out_dir: models folder; default: the package's own, i.e. the shipped models.
        overwrite: replace models that ``out_dir`` already holds (without it, a folder
            with a ``clip`` / ``llava`` model of a stage to build is refused, so that the
            shipped models are never replaced by accident).
        seed: used when ``config`` is not given.
        config: the full recipe (default ``BuildConfig(seed=seed)``).
        stages: ``("llava",)`` retrains only the LLaVA around the CLIP already in
            ``out_dir/clip`` (saving and loading are exact, so the result is the same as
            a full build's); ``("dino",)`` trains only the embedder, which reads no other
            model.

    Returns the build record also written to ``out_dir/build.json``.
    """
    if not stages or set(stages) - set(STAGES):
        raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {stages}")
    import torch

    cfg = config or default_config(None, seed)
    world = get_world(cfg.world)
    out = Path(out_dir) if out_dir is not None else world.models_dir
    _check_overwrite(out, stages, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    timings: dict[str, float] = {}
    notes = world.build_notes(out)
    try:
        t0 = time.perf_counter()
        records = list(world.iter_world("train", cfg.n_train, cfg.seed))
        data = make_batch(records, cfg.seed, world=world)
        timings["render_s"] = time.perf_counter() - t0
        clip_cfg = ClipTrainConfig(**{**asdict(cfg.clip), "seed": cfg.seed})
        if "clip" in stages:
            t0 = time.perf_counter()
            clip = train_clip(data, clip_cfg)
            for phase, (steps, lr) in enumerate(cfg.clip_more, start=1):
                more = replace(clip_cfg, steps=steps, lr=lr, seed=cfg.seed + phase)
                clip = train_clip(data, more, model=clip)
            timings["clip_s"] = time.perf_counter() - t0
            _save(clip, make_clip_processor(world), out / "clip")
        if "llava" in stages:
            from transformers import CLIPModel

            clip = CLIPModel.from_pretrained(out / "clip").eval()
            t0 = time.perf_counter()
            llava_cfg = LlavaTrainConfig(**{**asdict(cfg.llava), "seed": cfg.seed})
            llava = train_llava(data, clip, llava_cfg)
            timings["llava_s"] = time.perf_counter() - t0
            _save(llava, make_llava_processor(clip_cfg.patch_size, world), out / "llava")
        if "dino" in stages:  # no label, caption or other model: images only
            t0 = time.perf_counter()
            dino = train_ssl(data.pixel_values_NCHW, replace(cfg.dino, seed=cfg.seed))
            timings["dino_s"] = time.perf_counter() - t0
            _save(dino, make_image_processor(), out / "dino")
            notes["dino_vs_truth"] = similarity_vs_truth(out, world, seed=cfg.seed)
    finally:
        torch.set_num_threads(threads)
    record = {
        "vlmsae_version": __version__,
        "torch_version": torch.__version__,
        "config": asdict(cfg),
        "stages": list(stages),
        "timings": timings,
        **notes,
    }
    write_json(out / f"build-{'-'.join(stages)}.json", record)
    log.info("built the toy models in %s (%s)", out, timings)
    return record
