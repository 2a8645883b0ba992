"""CLI commands of the encoders stage: ``vlmsae cache`` and ``vlmsae embed``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import typer

from vlmsae.core.cli_errors import user_errors
from vlmsae.core.cli_options import progress_options
from vlmsae.core.config_cli import ConfigArgs, ConfigOptions, config_options
from vlmsae.core.numbers import fmt
from vlmsae.encoders.cache import CacheConfig

StoredDtype = Literal["float16", "float32"]
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
_MODEL_DTYPE_HELP = "Compute dtype; auto: float32 on CPU, float16 on GPU."
_DATA_HELP = (
    "Images: a folder (ImageNet, iNaturalist 2021, CUB-200-2011, ImageFolder, flat; layout "
    "detected), hf:ORG/NAME[:CONFIG] (local HF cache), a datasets.save_to_disk folder, "
    "'DIR/*.parquet', or WebDataset shards 'DIR/{00000..00099}.tar' (docs: data-sources)."
)
_IMAGE_COLUMN_HELP = "Image column of an HF / Parquet source (default: its one Image feature)."
_LABEL_COLUMN_HELP = (
    "Label column(s) C[,C...] of an HF / Parquet source (default: its one ClassLabel), or the "
    ".json field of WebDataset labels (default: .cls, else 'label')."
)


def _source(
    data: str, split: str | None, limit: int | None, every: int, image_column: str | None,
    label_column: str | None,
):  # fmt: skip
    from vlmsae.data.sources import open_source

    labels = tuple(c.strip() for c in (label_column or "").split(",") if c.strip())
    return open_source(data, split, limit=limit, every=every, image_column=image_column,
                       label_columns=labels)  # fmt: skip


CACHE_OPTIONS = ConfigOptions(
    CacheConfig,
    skip=("progress",),  # --progress / --quiet
    flags={"layers": "--layer", "hookpoints": "--hookpoint"},
    choices={"dtype": get_args(StoredDtype)},
    help={"layers": "Block(s) L[,L...] of post_mlp_residual; negative from the end."},
)
EMBED_OPTIONS = ConfigOptions(CacheConfig, only=("batch_size", "workers", "resume"))


def register(app: typer.Typer) -> None:
    app.command("cache")(progress_options(cache))
    app.command("embed")(progress_options(embed))


def _parse_layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise typer.BadParameter(
            f"{text!r}: expected comma-separated integers such as 11,17,-1", param_hint="--layer"
        ) from e


def _device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(model: str, device: str, model_dtype: str, revision: str | None):
    import torch

    from vlmsae.encoders.adapters import Encoder

    if model_dtype == "auto":
        model_dtype = "float32" if device == "cpu" else "float16"
    if model_dtype not in ("float32", "bfloat16", "float16"):
        raise typer.BadParameter("choose auto, float32, bfloat16 or float16", "--model-dtype")
    if model_dtype == "float16" and device == "cpu":
        raise typer.BadParameter("float16 compute on CPU is ~500x slower; use float32 or bfloat16")
    return Encoder.from_pretrained(
        model, revision=revision, device=device, dtype=getattr(torch, model_dtype)
    )


@config_options(cfg=CACHE_OPTIONS)
def cache(
    model: str = typer.Option(..., "--model", help="Hub id or local model folder."),
    data: str = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Output directory (one store per hook point)."),
    split: str = typer.Option(
        None, "--split", help="Split: folder (train, val; CUB: train|test) or dataset split."
    ),
    limit: int = typer.Option(None, "--limit", help="Use only the first N images (after --every)."),
    every: int = typer.Option(1, "--every", help="Use every N-th image."),
    image_column: str = typer.Option(None, "--image-column", help=_IMAGE_COLUMN_HELP),
    label_column: str = typer.Option(None, "--label-column", help=_LABEL_COLUMN_HELP),
    sae: Path = typer.Option(None, "--sae", help="SAE checkpoint: also store its codes (CSR)."),
    sae_layer: str = typer.Option(
        None,
        "--sae-hookpoint",
        help="Layer or post_projection the SAE reads (default: its config).",
    ),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if any)."),
    model_dtype: ModelDtype = typer.Option("auto", "--model-dtype", help=_MODEL_DTYPE_HELP),
    revision: str = typer.Option(None, "--revision", help="Hub revision of the model."),
    allow_mismatch: bool = typer.Option(
        False,
        "--allow-mismatch",
        help="Apply --sae even where it was trained on another model, layer or tokens.",
    ),
    *,
    cfg: ConfigArgs[CacheConfig],
) -> None:
    """Cache activations of a vision model at hook points (one store per layer).

    Writes OUT/layer_L/ per --layer, OUT/post_projection/, with --sae the SAE codes in
    OUT/codes_layer_L/ (sparse), and OUT/summary.json; --resume continues a killed run.
    """
    from vlmsae.encoders.cache import cache_activations

    config = cfg.build()
    sae_hook = None if sae_layer in (None, "") else sae_layer
    if sae_hook is not None and sae_hook != "post_projection":
        sae_hook = int(_parse_layers(sae_hook)[0])
    with user_errors(ValueError):  # the library's checks of the options and the data
        dataset = _source(data, split, limit, every, image_column, label_column)
        dev = _device(device)
        encoder = _load(model, dev, model_dtype, revision)
        result = cache_activations(
            encoder, dataset, out, config, sae=sae, sae_hookpoint=sae_hook, device=dev,
            allow_mismatch=allow_mismatch,
        )  # fmt: skip
    for name, path in result.stores.items():
        typer.echo(f"{name}: {path}")
    typer.echo(
        f"{result.n_images:,} images ({result.n_skipped:,} skipped), "
        f"{fmt(result.images_per_s)} images/s; summary in {out / 'summary.json'}"
    )


@config_options(cfg=EMBED_OPTIONS)
def embed(
    model: str = typer.Option(..., "--model", help="Hub id or local model folder."),
    data: str = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Output embedding store directory."),
    split: str = typer.Option(
        None, "--split", help="Split: folder (train, val; CUB: train|test) or dataset split."
    ),
    dtype: StoredDtype = typer.Option("float32", "--dtype", help="Stored dtype."),
    limit: int = typer.Option(None, "--limit", help="Use only the first N images (after --every)."),
    every: int = typer.Option(1, "--every", help="Use every N-th image."),
    image_column: str = typer.Option(None, "--image-column", help=_IMAGE_COLUMN_HELP),
    label_column: str = typer.Option(None, "--label-column", help=_LABEL_COLUMN_HELP),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if any)."),
    model_dtype: ModelDtype = typer.Option("auto", "--model-dtype", help=_MODEL_DTYPE_HELP),
    revision: str = typer.Option(None, "--revision", help="Hub revision of the model."),
    *,
    cfg: ConfigArgs[CacheConfig],
) -> None:
    """Write an embedding store (post_projection, one row per image) for the MS score.

    The paper used DINOv2 ViT-B (facebook/dinov2-base) and CLIP ViT-B/32 embeddings.
    """
    from vlmsae.encoders.cache import embed_images

    with user_errors(ValueError):  # the library's checks of the options and the data
        dataset = _source(data, split, limit, every, image_column, label_column)
        dev = _device(device)
        encoder = _load(model, dev, model_dtype, revision)
        result = embed_images(
            encoder,
            dataset,
            out,
            dtype=dtype,
            device=dev,
            **cfg.values,  # batch_size, workers, resume
        )
    typer.echo(
        f"{out}: {result.n_images:,} images ({result.n_skipped:,} skipped), "
        f"{fmt(result.images_per_s)} images/s"
    )
