"""Files of a training run: checkpoints with resumable trainer state, metrics, evaluation.

A training checkpoint is the SAE checkpoint (``config.json`` + ``sae.safetensors``) plus
``trainer_state.safetensors`` (a copy of the weights, Adam moments, dead-latent counters,
RNG state) and ``trainer_state.json`` (step, config, data description). The trainer state
carries its own copy of the weights so that it is consistent by itself even when a crash
falls between the two writes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmsae._io import atomic_write_text
from vlmsae.sae import checkpoint as ckpt
from vlmsae.sae.config import TrainConfig
from vlmsae.sae.losses import variance_metrics
from vlmsae.sae.model import SAE

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
# Fields that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("progress", "device", "log_every", "checkpoint_every", "val_rows")


class MetricsLog:
    """Appends one JSON object per log point to ``metrics.jsonl``; on resume, drops the
    lines written after the checkpoint being resumed (they will be produced again)."""

    def __init__(self, out_dir: Path, start_step: int) -> None:
        self.path = out_dir / METRICS_FILE
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= start_step
            ]
            atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def append(self, metrics: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")


@torch.no_grad()
def evaluate_sae(sae: SAE, x_ND: Tensor, batch_size: int = 4096) -> dict[str, Any]:
    """Reconstruction metrics on held-out rows, encoding as at inference (eval mode:
    BatchTopK uses its threshold). MSE, normalised MSE, R², L0 and dead fraction."""
    was_training = sae.training
    sae.eval()
    try:
        x_hats, prefixes, l0, fired = [], [], 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
        for lo in range(0, x_ND.shape[0], batch_size):
            out = sae(x_ND[lo : lo + batch_size])
            x_hats.append(out.x_hat)
            prefixes.append(out.prefix_x_hats)
            l0 += float((out.codes != 0).sum())
            fired |= (out.codes != 0).any(0).cpu()
    finally:
        sae.train(was_training)
    joined = tuple(torch.cat(p) for p in zip(*prefixes, strict=True))
    metrics = variance_metrics(x_ND, torch.cat(x_hats), joined)
    metrics["l0"] = l0 / x_ND.shape[0]
    metrics["dead_fraction"] = float((~fired).float().mean())
    metrics["n_rows"] = int(x_ND.shape[0])
    return metrics


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list]:
    sd = optimizer.state_dict()
    tensors = {
        f"optim.{idx}.{key}": value if isinstance(value, Tensor) else torch.tensor(value)
        for idx, st in sd["state"].items()
        for key, value in st.items()
    }
    return tensors, sd["param_groups"]


def save_training_checkpoint(
    out_dir: Path,
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    state: Any,
    cfg: TrainConfig,
    source: Any,
) -> None:
    """Trainer state first (self-contained), then the SAE checkpoint, both atomic."""
    optim_tensors, param_groups = _optimizer_tensors(optimizer)
    tensors = {
        **{f"sae.{k}": v for k, v in sae.state_dict().items()},
        **optim_tensors,
        "examples_since_fired": state.examples_since_fired_S,
        "rng.torch": torch.get_rng_state(),
    }
    meta = {
        "step": state.step,
        "train": cfg.to_dict(),
        "param_groups": param_groups,
        "data": source.description,
    }
    ckpt.save_trainer_state(out_dir, tensors, meta)
    sae.save(out_dir, train=cfg.to_dict(), step=state.step)
    state.last_checkpoint = state.step
    log.debug("checkpoint at step %d in %s", state.step, out_dir)


def _check_same_run(saved: dict[str, Any], cfg: TrainConfig, out_dir: Path) -> None:
    now = cfg.to_dict()
    saved = json.loads(json.dumps(saved))  # tuples became lists on disk
    now = json.loads(json.dumps(now))
    diff = [
        k
        for k in sorted(set(saved) | set(now))
        if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)
    ]
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise ValueError(
            f"cannot resume {out_dir}: the training config differs from the interrupted run's "
            f"({detail}); use the same settings or another --out"
        )


def load_resume_state(
    out_dir: Path, sae: SAE, optimizer: torch.optim.Optimizer, state: Any, cfg: TrainConfig
) -> None:
    """Restore weights, optimizer, counters, RNG and step from ``out_dir``."""
    if not (out_dir / ckpt.STATE_JSON_FILE).exists():
        raise FileNotFoundError(
            f"nothing to resume in {out_dir}: no {ckpt.STATE_JSON_FILE} (the run wrote no "
            "checkpoint yet); start it again without --resume"
        )
    tensors, meta = ckpt.load_trainer_state(out_dir)
    _check_same_run(meta["train"], cfg, out_dir)
    device = next(sae.parameters()).device
    weights = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("sae.")}
    sae.load_state_dict(weights)
    per_param: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value  # Adam moves them
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    state.step = int(meta["step"])
    state.examples_since_fired_S.copy_(tensors["examples_since_fired"])
    state.last_checkpoint = state.step
    torch.set_rng_state(tensors["rng.torch"])
    log.info("resuming %s from step %d", out_dir, state.step)
