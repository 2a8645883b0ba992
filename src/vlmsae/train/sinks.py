"""Training metrics to TensorBoard or Weights & Biases, besides ``metrics.jsonl``.

``metrics.jsonl`` stays the source of truth; a sink only mirrors the metrics of each log
point to a dashboard. Both backends are optional extras (``pip install
'vlmsae[tensorboard]'`` / ``'vlmsae[wandb]'``), imported only when asked for::

    with open_sinks(["tensorboard"], out_dir, cfg) as on_step:
        train_sae(data, cfg, out_dir, on_step=on_step)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from vlmsae.core.errors import UserError

SINKS = ("tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
"""Folder of the TensorBoard event files, inside the run directory."""

OnStep = Callable[[int, dict[str, Any]], None]


class MetricsSink(Protocol):
    """Where the metrics of a log point go: ``log(step, scalars)``, then ``close()``."""

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def flat_scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` record as ``{"loss": .., "val/r2": ..,
    "group_loss/0": ..}``; ``step``, non-numbers and non-finite values are left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if key == "step" and not prefix:
            continue
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{name}/"))
        elif isinstance(value, (list, tuple)):
            out.update(flat_scalars({str(i): v for i, v in enumerate(value)}, f"{name}/"))
        elif _is_number(value) and math.isfinite(value):
            out[name] = float(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(
            f"--log-to {extra} needs the optional package '{extra}', which is not installed "
            f"({e}); install it with: pip install 'vlmsae[{extra}]' (or drop --log-to {extra})"
        ) from None


class TensorBoardSink:
    """Scalars to ``<run>/tensorboard`` (``tensorboard --logdir <run>``); the writer is
    created at the first log point, so that nothing is written before training starts."""

    def __init__(self, run_dir: str | Path) -> None:
        self._writer_cls = _require("torch.utils.tensorboard", "tensorboard").SummaryWriter
        self.log_dir, self._writer = Path(run_dir) / TENSORBOARD_DIR, None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = self._writer_cls(log_dir=str(self.log_dir))
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


class WandbSink:
    """Scalars to a Weights & Biases run (project ``$WANDB_PROJECT`` or ``vlmsae``, named
    after the run directory). The run id is derived from the directory's absolute path, so
    ``--resume`` continues the same W&B run."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None) -> None:
        self._wandb = _require("wandb", "wandb")
        self.run_dir, self.config, self._run = Path(run_dir), config, None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self._run is None:
            path = str(self.run_dir.resolve())
            self._run = self._wandb.init(
                project=os.environ.get("WANDB_PROJECT", "vlmsae"),
                name=self.run_dir.name,
                id=hashlib.sha1(path.encode()).hexdigest()[:16],
                resume="allow",
                dir=path,
                config=self.config,
            )
        self._run.log(scalars, step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()


def make_sink(name: str, run_dir: str | Path, config: dict[str, Any] | None = None) -> MetricsSink:
    """The sink called ``name`` (one of :data:`SINKS`) for the run in ``run_dir``."""
    if name == "tensorboard":
        return TensorBoardSink(run_dir)
    if name == "wandb":
        return WandbSink(run_dir, config)
    raise UserError(f"--log-to {name!r}: choose one of {', '.join(SINKS)}")


@contextlib.contextmanager
def open_sinks(
    names: Sequence[str], run_dir: str | Path, cfg: Any = None
) -> Iterator[OnStep | None]:
    """An ``on_step(step, metrics)`` callback for :func:`~vlmsae.train.run.train_sae` that
    sends every log point to the sinks ``names`` (``None`` when there are none); the sinks
    are closed on exit. A missing optional package fails here, before training starts."""
    config = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
    sinks = [make_sink(n, run_dir, config) for n in dict.fromkeys(names)]
    if not sinks:
        yield None
        return

    def on_step(step: int, metrics: dict[str, Any]) -> None:
        if not metrics:  # metrics are filled at log points only
            return
        scalars = flat_scalars(metrics)
        for sink in sinks:
            sink.log(step, scalars)

    try:
        yield on_step
    finally:
        for sink in sinks:
            sink.close()
