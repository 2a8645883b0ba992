"""Files of a training run: checkpoints with resumable trainer state, metrics, evaluation.

A training checkpoint is the SAE checkpoint (``config.json`` + ``sae.safetensors``, in raw
units) plus the trainer state under ``checkpoints/`` (a copy of the weights in training
units, Adam moments, dead-latent counters, RNG state, step, config, normalisation scale),
written as one atomic unit (see :func:`vlmsae.sae.checkpoint.save_trainer_state`). The
trainer state is self-contained, so a crash between it and the SAE files loses nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmsae.core.errors import UserError
from vlmsae.core.io import atomic_write_text, output_error, read_json, to_json
from vlmsae.data.provenance import check_same_images, source_differences
from vlmsae.sae import checkpoint as ckpt
from vlmsae.sae.model import SAE
from vlmsae.train.config import TrainConfig, lr_factor, recipe_of
from vlmsae.train.data import BatchSource
from vlmsae.train.losses import variance_metrics

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run must restore."""

    step: int
    """Completed optimizer steps (= batches consumed)."""
    examples_since_fired_S: Tensor
    """int64 [S]: training examples since each latent last fired (dead-latent detection)."""
    last_checkpoint: int | None = None
    """Step of the last checkpoint written, if any."""
    norm_factor: float = 1.0
    """The training data is divided by this (1 without ``normalize_activations``)."""


class MetricsLog:
    """Appends one JSON object per log point to ``metrics.jsonl``; on resume, drops the
    lines written after the checkpoint being resumed (they will be produced again)."""

    def __init__(self, out_dir: Path, start_step: int) -> None:
        self.path = out_dir / METRICS_FILE
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [json.dumps(m) for m in self.read(self.path) if m["step"] <= start_step]
            atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def append(self, metrics: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(to_json(metrics, indent=None) + "\n")
        except OSError as e:  # a full disk: one line for the user (a cut line is skipped)
            converted = output_error(self.path, e)
            if converted is e:
                raise
            raise converted from e

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The complete lines of a metrics file; a line cut by a crash is skipped."""
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping a line cut short by an interrupted write", path)
        return records

    @classmethod
    def last(cls, out_dir: Path) -> dict[str, Any] | None:
        """The last log point of the run in ``out_dir``, if any."""
        path = out_dir / METRICS_FILE
        records = cls.read(path) if path.exists() else []
        return records[-1] if records else None


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
    state: TrainState,
    cfg: TrainConfig,
    source: BatchSource,
) -> None:
    """Trainer state first (self-contained), then the SAE checkpoint, both atomic."""
    optim_tensors, param_groups = _optimizer_tensors(optimizer)
    tensors = {
        **{f"sae.{k}": v for k, v in sae.state_dict().items()},
        **optim_tensors,
        "examples_since_fired": state.examples_since_fired_S,
        "rng.torch": torch.get_rng_state(),
    }
    norm_factor = state.norm_factor if cfg.normalize_activations else None
    meta = {
        "step": state.step,
        "train": cfg.to_dict(),
        "param_groups": param_groups,
        "data": source.description,
        "norm_factor": norm_factor,
    }
    ckpt.save_trainer_state(out_dir, tensors, meta)
    publish_sae(out_dir, sae, state, cfg, source)
    log.debug("checkpoint at step %d in %s", state.step, out_dir)


def publish_sae(
    out_dir: Path, sae: SAE, state: TrainState, cfg: TrainConfig, source: BatchSource
) -> None:
    """Write the SAE files of the run (raw units) for the trainer state's step, with the
    provenance of the training data (``source``) where the data was a store."""
    norm_factor = state.norm_factor if cfg.normalize_activations else None
    extra = {"source": source.provenance} if source.provenance else {}
    sae.save(out_dir, norm_factor=norm_factor, train=cfg.to_dict(), step=state.step, **extra)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_run(saved: dict[str, Any], cfg: TrainConfig, out_dir: Path, step: int) -> None:
    """The resumed run must have the interrupted run's recipe; run options may change, and
    ``steps`` may grow (the run is extended)."""
    saved = _flat(json.loads(json.dumps(recipe_of(saved))))  # tuples became lists on disk
    now = _flat(json.loads(json.dumps(cfg.recipe())))
    diff = [
        k
        for k in sorted(set(saved) | set(now))
        if k != "steps" and saved.get(k, "(absent)") != now.get(k, "(absent)")
    ]
    if diff:
        detail = "; ".join(
            f"{k} {saved.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}" for k in diff
        )
        raise ValueError(
            f"cannot resume {out_dir}: {len(diff)} training setting(s) differ from the "
            f"interrupted run's: {detail}; use the same settings or another --out"
        )
    if cfg.steps < step:
        raise ValueError(
            f"cannot resume {out_dir} with steps={cfg.steps}: the run is already at step {step}; "
            f"give steps >= {step} (a larger value extends the run)"
        )


def check_same_data(out_dir: Path, source: BatchSource, allow_mismatch: bool = False) -> None:
    """Refuse to resume ``out_dir`` on other data than it was trained on: the store's model,
    hook point, layer and tokens, its images (fingerprint) and its rows (checksums) are
    compared with the ``source`` its ``config.json`` records. ``allow_mismatch`` (the CLI's
    ``--allow-mismatch``) turns a difference into a warning."""
    config_path = out_dir / ckpt.CONFIG_FILE
    recorded = (read_json(config_path).get("source") or {}) if config_path.exists() else {}
    current = source.provenance or {}
    if not recorded or not current:
        return  # trained on a tensor or an iterable: nothing recorded to compare
    what_run, what_now = f"the run in {out_dir}", f"--activations {current.get('store')}"
    diffs = source_differences(recorded, current)
    same_rows = recorded.get("rows_sha256") in (None, current.get("rows_sha256"))
    if not diffs and same_rows:
        check_same_images(recorded, current, what_run, what_now, allow_mismatch=allow_mismatch)
        return
    what = ", ".join([*diffs, *([] if same_rows else ["its rows (checksums)"])])
    message = (
        f"{what_now} is not the data {what_run} was trained on ({what} differ: the store was "
        "cached again since)"
    )
    if allow_mismatch:
        log.warning("%s; resuming anyway (--allow-mismatch)", message)
        return
    raise UserError(
        f"{message}; resume with the store it was trained on, start a new run, or pass "
        "--allow-mismatch to continue on this data"
    )


def load_resume_state(
    out_dir: Path,
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    cfg: TrainConfig,
    source: BatchSource,
    *,
    publish: bool = True,
    allow_mismatch: bool = False,
) -> None:
    """Restore weights, optimizer, counters, RNG and step from ``out_dir`` (``publish``:
    this process may rewrite the SAE files when a crash left them behind the state), after
    checking that ``source`` is the data the run was trained on (:func:`check_same_data`)."""
    if not ckpt.has_trainer_state(out_dir):
        raise FileNotFoundError(
            f"nothing to resume in {out_dir}: no {ckpt.POINTER_FILE} (the run wrote no "
            "checkpoint yet); start it again without --resume"
        )
    tensors, meta = ckpt.load_trainer_state(out_dir)
    _check_same_run(meta["train"], cfg, out_dir, int(meta["step"]))
    check_same_data(out_dir, source, allow_mismatch)
    device = next(sae.parameters()).device
    weights = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("sae.")}
    sae.load_state_dict(weights)
    per_param: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value  # Adam moves them
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    for group in optimizer.param_groups:  # moments in their parameter's memory layout: the
        for p in group["params"]:  # fused kernel walks parameter and state storage together
            for name, value in optimizer.state[p].items():
                if isinstance(value, Tensor) and value.shape == p.shape:
                    optimizer.state[p][name] = torch.empty_like(p).copy_(value)
    state.step = int(meta["step"])
    state.examples_since_fired_S.copy_(tensors["examples_since_fired"])
    state.last_checkpoint = state.step
    state.norm_factor = float(meta.get("norm_factor") or 1.0)
    config_path = out_dir / ckpt.CONFIG_FILE
    if publish and (not config_path.exists() or read_json(config_path).get("step") != state.step):
        publish_sae(out_dir, sae, state, cfg, source)  # a kill fell between state and SAE
    for group in optimizer.param_groups:  # the lr of the next step (the schedule of a run
        group["lr"] = cfg.learning_rate * lr_factor(state.step, cfg)  # extended by --steps)
    torch.set_rng_state(tensors["rng.torch"])
    log.info("resuming %s from step %d", out_dir, state.step)
