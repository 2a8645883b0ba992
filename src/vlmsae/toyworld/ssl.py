"""The toy world's independent embedder: a tiny DINOv2 trained without labels.

The paper scores MS with DINOv2, an image encoder that never saw the model being
decomposed nor any caption. The toy world's counterpart is an HF ``Dinov2Model`` built from
a config and trained self-supervised (SimCLR's contrastive loss on two augmented views of
each training image; no label, caption or other model is read), so that ``vlmsae embed``
loads it through the same adapter as the real DINOv2, and its ``pooler_output`` (the
normalised CLS token) is the embedding (``post_projection``).

Augmentations act on the processor's ``pixel_values`` (32 x 32): a random resized crop
(affine resampling), a horizontal flip, brightness / contrast / per-channel jitter and pixel
noise. Training is deterministic at a fixed thread count, like the other toy models.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmsae.core.progress import progress
from vlmsae.toyworld.batches import MODEL_IMAGE_SIZE

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SslTrainConfig:
    """Size and self-supervised schedule of the toy DINOv2."""

    width: int = 96
    """Hidden size of the ViT (heads of 32)."""
    layers: int = 4
    """Transformer blocks."""
    patch_size: int = 8
    """ViT patch side in pixels (32 x 32 input -> 16 patches + CLS)."""
    head_width: int = 128
    """Output width of the projection head the loss reads (dropped after training)."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 128
    """Images per step (two views each)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    temperature: float = 0.2
    """Softmax temperature of the contrastive loss."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Range of the crop's area as a fraction of the image."""
    seed: int = 0
    """Seed of the weights, the batch order and the augmentations."""

    def __post_init__(self) -> None:
        if self.width % 32 != 0:
            raise ValueError(f"width must be a multiple of 32 (heads of 32), got {self.width}")
        if MODEL_IMAGE_SIZE % self.patch_size != 0:
            raise ValueError(f"patch_size must divide {MODEL_IMAGE_SIZE}, got {self.patch_size}")
        if min(self.layers, self.steps, self.batch_size, self.head_width) < 1:
            raise ValueError("layers, steps, batch_size and head_width must be >= 1")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 < self.lr < 1 or self.temperature <= 0:
            raise ValueError("lr must be in (0, 1) and temperature > 0")


def make_ssl_encoder(cfg: SslTrainConfig) -> Any:
    """A randomly initialised tiny ``Dinov2Model`` (seeded by ``cfg.seed``)."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=cfg.width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.width // 32,
        mlp_ratio=2,
        image_size=MODEL_IMAGE_SIZE,
        patch_size=cfg.patch_size,
        layerscale_value=1.0,
    )
    torch.manual_seed(cfg.seed)
    return Dinov2Model(config)


def two_views(pixels_BCHW: torch.Tensor, cfg: SslTrainConfig, gen: torch.Generator):
    """Two independently augmented views ``[B, C, H, W]`` of each image."""
    return _augment(pixels_BCHW, cfg, gen), _augment(pixels_BCHW, cfg, gen)


def _augment(x_BCHW: torch.Tensor, cfg: SslTrainConfig, gen: torch.Generator) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    b = x_BCHW.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, *shape, generator=gen)

    # random resized crop: side = sqrt(area), centre anywhere the crop stays inside
    side_B = uniform(*cfg.crop_scale).sqrt()
    shift_B2 = (uniform(-1.0, 1.0, 2)) * (1 - side_B[:, None])
    flip_B = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta_B23 = torch.zeros(b, 2, 3)
    theta_B23[:, 0, 0] = side_B * flip_B
    theta_B23[:, 1, 1] = side_B
    theta_B23[:, :, 2] = shift_B2
    grid = F.affine_grid(theta_B23, list(x_BCHW.shape), align_corners=False)
    out = F.grid_sample(
        x_BCHW, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    contrast_B111 = uniform(0.7, 1.3)[:, None, None, None]
    brightness_B111 = uniform(-0.3, 0.3)[:, None, None, None]
    tint_BC11 = uniform(-0.1, 0.1, 3)[:, :, None, None]
    noise = 0.05 * torch.randn(out.shape, generator=gen)
    return out * contrast_B111 + brightness_B111 + tint_BC11 + noise


def contrastive_loss(z1_BE: torch.Tensor, z2_BE: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view must pick its partner among the other ``2B - 1`` views."""
    import torch
    import torch.nn.functional as F

    z_NE = F.normalize(torch.cat([z1_BE, z2_BE]), dim=1)
    n = z_NE.shape[0] // 2
    logits_NN = z_NE @ z_NE.T / temperature
    logits_NN.fill_diagonal_(float("-inf"))  # a view is not its own partner
    partner_N = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits_NN, partner_N)


def train_ssl(pixels_NCHW: torch.Tensor, cfg: SslTrainConfig) -> Any:
    """Train the toy DINOv2 on ``pixels_NCHW`` (the processor's output; no labels) and
    return it in eval mode. The projection head is used for the loss only."""
    import torch
    from torch import nn

    model = make_ssl_encoder(cfg)
    head = nn.Sequential(
        nn.Linear(cfg.width, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.head_width)
    )
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
        ),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    n = pixels_NCHW.shape[0]
    losses = []
    for step in progress(range(cfg.steps), desc="toy DINOv2 (self-supervised)"):
        idx = torch.randint(n, (cfg.batch_size,), generator=gen)
        view1, view2 = two_views(pixels_NCHW[idx], cfg, gen)
        pooled = model(pixel_values=torch.cat([view1, view2])).pooler_output
        loss = contrastive_loss(*head(pooled).chunk(2), cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, cfg.steps // 10) == 0:
            log.info("toy DINOv2 step %d/%d: loss %.4f", step + 1, cfg.steps, losses[-1])
    model.eval()
    model.train_losses = losses  # the build record reads the curve
    return model


def embed_pixels(model: Any, pixels_NCHW: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """``pooler_output`` (the embedding ``vlmsae embed`` stores) of every image."""
    import torch

    with torch.inference_mode():
        parts = [
            model(pixel_values=pixels_NCHW[lo : lo + batch]).pooler_output
            for lo in range(0, len(pixels_NCHW), batch)
        ]
    return torch.cat(parts)


def similarity_vs_truth(
    models_dir: str | Path, world: Any, *, seed: int = 0, n: int = 2000, n_pairs: int = 200_000
) -> dict[str, Any]:
    """How well each model's image similarities track the truth's, on ``n`` held-out
    (``val``) images: Spearman's ρ between the cosine of the model's embeddings and of the
    oracle embedding over ``n_pairs`` random image pairs, and per attribute how often an
    image's nearest neighbour shares its value (the oracle's own rate beside them).
    Models: ``dino`` (pooled output) and ``clip`` (``image_embeds``) where ``models_dir``
    holds them."""
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from transformers import CLIPModel, Dinov2Model

    from vlmsae.toyworld.batches import make_batch
    from vlmsae.toyworld.embeddings import oracle_embedding

    records = list(world.iter_world("val", n, seed))
    pixels = make_batch(records, seed, world=world).pixel_values_NCHW
    truth_NE = oracle_embedding(records, world)
    embeddings = {"oracle": truth_NE}
    models_dir = Path(models_dir)
    if (models_dir / "dino" / "config.json").is_file():
        dino = Dinov2Model.from_pretrained(models_dir / "dino").eval()
        embeddings["dino"] = embed_pixels(dino, pixels).numpy()
    if (models_dir / "clip" / "config.json").is_file():
        clip = CLIPModel.from_pretrained(models_dir / "clip").eval()
        with torch.inference_mode():
            out = clip.get_image_features(pixel_values=pixels)
        embeddings["clip"] = getattr(out, "pooler_output", out).numpy()
    rng = np.random.default_rng(seed)
    i, j = rng.integers(n, size=n_pairs), rng.integers(n, size=n_pairs)
    i, j = i[i != j], j[i != j]
    values = {a: np.array([str(getattr(r, a)) for r in records]) for a in world.attributes}
    result: dict[str, Any] = {"n_images": n, "n_pairs": int(len(i))}
    truth_sim = _cosines(truth_NE, i, j)
    for name, emb_NE in embeddings.items():
        neighbour = _nearest(emb_NE, np.random.default_rng(seed))
        result[name] = {
            "spearman_vs_truth": float(spearmanr(_cosines(emb_NE, i, j), truth_sim).statistic),
            "neighbour_shares": {a: float(np.mean(v[neighbour] == v)) for a, v in values.items()},
        }
    return result


def _cosines(emb_NE: Any, i: Any, j: Any) -> Any:
    import numpy as np

    unit = emb_NE / np.maximum(np.linalg.norm(emb_NE, axis=1, keepdims=True), 1e-12)
    return (unit[i] * unit[j]).sum(1)


def _nearest(emb_NE: Any, rng: Any) -> Any:
    """Each image's nearest other image by cosine (ties broken at random: the oracle has many)."""
    import numpy as np

    unit = emb_NE / np.maximum(np.linalg.norm(emb_NE, axis=1, keepdims=True), 1e-12)
    sim_NN = unit @ unit.T + 1e-6 * rng.random((len(unit), len(unit)))
    np.fill_diagonal(sim_NN, -np.inf)
    return sim_NN.argmax(1)
