"""Write the neuron browser: a static site that opens from the file system.

Layout of ``out_dir``::

    index.html, app.js, card.js, style.css (copied from the package, no build step)
    data/index.js                          window.VLMSAE_INDEX = {meta, columns, images}
    data/neurons/00000.js ...              vlmsaeShard(i, [...]): SHARD_SIZE neurons each
    images/0000123.png                     (with copy_images: thumbnails, portable site)
    data/images.json                       {"schema": 1, "images": {"/_images/0000123.png":
                                           "/abs/path/of/the/image.png", ...}}: the linked
                                           images a server may answer (explore/serve.py);
                                           empty with copy_images
    data/thumbs/0000123.js                 vlmsaeThumb(name, JPEG data URL) of each thumbnail,
                                           loaded by the card export (file:// pages may not
                                           export the PNG files drawn on a canvas)

Linked images (no copy_images) are referenced twice in the index: ``images`` holds URLs
relative to ``out_dir`` (``../../imgs/a.png``) for a page opened from ``file://``, ``served``
the URL paths (``_images/0000123.png``) under which ``vlmsae explore --serve`` answers exactly
those files, listed in ``data/images.json``; the page picks by its protocol.

Data travel as JavaScript files that call a global, loaded by ``<script>`` tags, because
Chromium blocks ``fetch()`` of ``file://`` URLs. The index is columnar (one array per
column) and holds only what the table sorts on; a neuron page loads its shard on demand.
JSON has no NaN: undefined numbers are written as ``null``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import numpy as np

from vlmsae.core.errors import UserError
from vlmsae.core.io import csv_uncell
from vlmsae.data.sources import is_key, open_image
from vlmsae.explore.neurons import NeuronData

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = ("index.html", "app.js", "card.js", "style.css")
IMAGES_SCHEMA = 1
"""Version of ``data/images.json``, the allow-list of linked images a server answers."""


@dataclass(frozen=True)
class ExploreConfig:
    """How the site is built."""

    top_k: int = 16
    """Top images per neuron."""
    n_bins: int = 20
    """Bins of each neuron's activation histogram."""
    n_neighbours: int = 5
    """Nearest neurons listed per neuron (decoder cosine and top-image Jaccard)."""
    shard_size: int = 256
    """Neurons per data file loaded on demand."""
    copy_images: bool = False
    """Copy the top images as thumbnails into the site (portable); else link the originals."""
    thumb_size: int = 224
    """Longest side of copied thumbnails, pixels."""
    heatmaps: bool = True
    """Draw patch heatmaps where the store has patch tokens or the model is given."""
    title: str = "vlmsae neurons"
    """Title of the site's pages."""
    min_active: int = 16
    """List, rank and steer-probe only neurons active on >= this many images (as the
    paper's statistics do: a neuron firing on 2 images has MS 1.0); the site's filter
    starts here and changes it (0: every neuron)."""

    def __post_init__(self) -> None:
        for name in ("top_k", "n_bins", "shard_size", "thumb_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_neighbours", "min_active"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def _clean(obj: Any, digits: int = 4) -> Any:
    """Plain JSON values: numpy to Python, non-finite floats to None, floats rounded."""
    if isinstance(obj, dict):
        return {str(k): _clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist(), digits)
    if isinstance(obj, (list, tuple)):
        return [_clean(v, digits) for v in obj]
    if isinstance(obj, (np.integer, bool, np.bool_)):
        return obj.item() if hasattr(obj, "item") else obj
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if not math.isfinite(x):
            return None
        return float(f"{x:.{digits}g}")
    return obj


def site_json(obj: Any) -> str:
    """Compact JSON of ``obj`` for the site (NaN and ±Inf written as ``null``)."""
    return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False)


def _write_js(path: Path, text: str) -> None:
    from vlmsae.core.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _check_neurons(found: dict[str, Any] | None, neurons: dict[str, Any] | None, what: str) -> None:
    """Refuse a per-neuron output about other neurons than the site's (``neurons``: their
    :func:`~vlmsae.data.provenance.neuron_identity`); warn where it records none."""
    from vlmsae.data.provenance import check_same_neurons

    if found and neurons:
        check_same_neurons(neurons, found, "the site's neurons", what)
    elif neurons:
        log.warning("%s records no neuron provenance (written by an older vlmsae): cannot "
                    "check that it is about this SAE", what)  # fmt: skip


def read_scores(
    scores_dir: Path, n_neurons: int, neurons: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Numeric columns of ``vlmsae score``'s ``scores.csv`` (``ms``, ``n_active`` → the
    statistic's ``ms_n_active``, and any other score column), NaN where empty; the files
    checked to be one output's and (``neurons``: the site's neuron identity) about the
    site's neurons."""
    import io

    from vlmsae.core.outputs import read_output_bytes
    from vlmsae.metrics.fit import read_scores_output

    scores_dir = Path(scores_dir)
    path = scores_dir / "scores.csv"
    if not scores_dir.is_dir() or not (path.is_file() or (scores_dir / "output.json").is_file()):
        raise UserError(f"{path} not found: --scores must be an output directory of `vlmsae score`")
    scores = read_scores_output(scores_dir)
    what = f"--scores {scores_dir}"
    text = read_output_bytes(scores_dir, "scores.csv", scores.manifest, what).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if len(rows) != n_neurons:
        raise UserError(
            f"{path} scores {len(rows)} neurons but the SAE has {n_neurons}; give the scores of "
            "this SAE (`vlmsae score --sae SAE ...`)"
        )
    out = {}
    for col in rows[0] if rows else []:
        if col in ("neuron", "max_activation"):
            continue
        try:
            values = np.array([float(r[col]) if r[col] != "" else np.nan for r in rows])
        except ValueError:
            continue  # a text column: not a score
        out["ms_n_active" if col == "n_active" else col] = values
    _check_neurons(scores.summary.get("neurons"), neurons, what)
    return out


def read_labels(
    path: Path, n_neurons: int, neurons: dict[str, Any] | None = None
) -> tuple[list[str | None], np.ndarray]:
    """``labels.csv`` of ``vlmsae label``: label and margin per neuron, checked to be one
    output's (with its ``summary.json``) and about the site's ``neurons`` (identity)."""
    import io

    from vlmsae.core.outputs import checked_manifest, read_output_bytes, read_output_json

    path = Path(path)
    what = f"--labels {path}"
    if not path.is_file():
        raise UserError(f"{what}: no such file; give the labels.csv of `vlmsae label`")
    manifest = checked_manifest(path.parent, what)
    summary: dict[str, Any] = {}
    if manifest is not None:
        if manifest.get("command") != "label":
            raise UserError(f"{what} is not an output of `vlmsae label` (its folder holds the "
                            f"output of `vlmsae {manifest.get('command')}`)")  # fmt: skip
        summary = read_output_json(path.parent, "summary.json", manifest, what)
    text = read_output_bytes(path.parent, path.name, manifest, what).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if len(rows) != n_neurons or (rows and "label" not in rows[0]):
        raise UserError(
            f"{path} should be `vlmsae label` output with one row per neuron of this SAE "
            f"({n_neurons}); it has {len(rows)} rows"
        )
    labels = [csv_uncell(r["label"]) or None for r in rows]
    margins = np.array([float(r["margin"]) if r.get("margin") else np.nan for r in rows])
    _check_neurons(summary.get("neurons"), neurons, what)
    return labels, margins


def _thumb_js(name: str, im: Any) -> str:
    """``vlmsaeThumb(name, data URL)``: the thumbnail as a JPEG data URL, which a canvas may
    read back (a page opened from ``file://`` may not export images of other files)."""
    import base64
    import io

    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return f"vlmsaeThumb({json.dumps(name)}, {json.dumps(url)});\n"


def _image_sources(
    paths: list[str], used: np.ndarray, out_dir: Path, cfg: ExploreConfig
) -> dict[int, str | None]:
    """URL (relative to ``out_dir``) of every used image; None for unreadable ones. Images
    of a dataset or of ``.tar`` shards (source keys) are always extracted as thumbnails:
    there is no file to link."""
    src: dict[int, str | None] = {}
    for i in used.tolist():
        key = paths[i] if i < len(paths) else None
        path = None if key is None or is_key(key) else Path(key).resolve()
        if key is None or (path is not None and not path.is_file()):
            src[i] = None
            continue
        if not cfg.copy_images and path is not None:
            src[i] = quote(os.path.relpath(path, out_dir.resolve()).replace(os.sep, "/"))
            continue
        name = f"images/{i:07d}.png"
        decoded = open_image(key)  # the pixel budget holds here too
        if decoded.image is None:
            log.warning("cannot read %s: %s", key, decoded.error)
            src[i] = None
            continue
        im = decoded.image
        im.thumbnail((cfg.thumb_size, cfg.thumb_size))
        (out_dir / "images").mkdir(exist_ok=True)
        im.save(out_dir / name)
        _write_js(out_dir / "data" / "thumbs" / f"{i:07d}.js", _thumb_js(name, im))
        src[i] = name
    return src


def _served_images(
    paths: list[str], used: np.ndarray, src: dict[int, str | None], cfg: ExploreConfig
) -> list[str | None]:
    """URL path (``/_images/0000123.png``) a server answers for each linked image of
    ``used`` (None: unreadable, or copied into the site, whose own files are served)."""
    if cfg.copy_images:
        return [None] * len(used)
    return [
        f"/_images/{i:07d}{_suffix(paths[i])}" if src[i] is not None else None
        for i in used.tolist()
    ]


def _suffix(path: str) -> str:
    """The file's extension, lower case, for a served URL ('' when it is not plain)."""
    suffix = Path(path).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def _heat_quantised(heat: np.ndarray) -> np.ndarray:
    """``[T, P]`` heat of one neuron as 0..255 relative to its largest patch value."""
    heat = np.asarray(heat, np.float32)
    top = float(heat.max()) if heat.size else 0.0
    if top <= 0:
        return np.zeros(heat.shape, np.int64)
    return np.round(np.clip(heat, 0, None) / top * 255).astype(np.int64)


def neuron_records(
    data: NeuronData,
    lo: int,
    hi: int,
    image_id: dict[int, int],
    steering: dict[int, list] | None = None,
) -> list[dict]:
    """The per-neuron page data of neurons ``lo:hi`` (``steer``: ``[[factor, α, answer],
    ...]`` of the steering probe, for the probed neurons)."""
    out = []
    for s in range(lo, hi):
        keep = data.top_values[s] > 0
        rec: dict[str, Any] = {
            "id": s,
            "top": [
                [image_id[int(i)], float(v)]
                for i, v in zip(data.top_indices[s][keep], data.top_values[s][keep], strict=True)
            ],
            "hist": data.hist_counts[s],
            "near_decoder": [
                [int(i), float(v)]
                for i, v in zip(data.near_decoder.ids[s], data.near_decoder.values[s], strict=True)
                if i >= 0
            ],
            "near_jaccard": [
                [int(i), float(v)]
                for i, v in zip(data.near_jaccard.ids[s], data.near_jaccard.values[s], strict=True)
                if i >= 0
            ],
        }
        if data.heatmaps is not None:
            rec["heat"] = _heat_quantised(data.heatmaps.values[s][keep])
        if steering and s in steering:
            rec["steer"] = steering[s]
        out.append(rec)
    return out


class SiteResult(NamedTuple):
    index_html: Path
    n_neurons: int
    n_shards: int
    n_images_missing: int
    files: list[str]
    """Every file written, relative to the site folder."""


SITE_ENTRIES = (*STATIC_FILES, "data", "images", "cards")
"""Top-level names of a site folder (``cards``: written by ``--cards``)."""


def write_site(
    out_dir: Path,
    data: NeuronData,
    columns: dict[str, Any],
    image_paths: list[str],
    meta: dict[str, Any],
    cfg: ExploreConfig,
    steering: dict[int, list] | None = None,
) -> SiteResult:
    """Write the static files, the index and the neuron shards into ``out_dir``
    (``steering``: the steering probe's answers per probed neuron)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.copy_images and any(is_key(p) for p in image_paths):
        cfg = replace(cfg, copy_images=True)  # no file to link: thumbnails
    for name in STATIC_FILES:
        shutil.copyfile(STATIC_DIR / name, out_dir / name)
    used = np.unique(data.top_indices[data.top_values > 0])
    src = _image_sources(image_paths, used, out_dir, cfg)
    image_id = {int(i): j for j, i in enumerate(used.tolist())}
    n_s = len(data.n_active)
    meta = {
        **meta,
        "n_neurons": n_s,
        "n_images": data.n_images,
        "shard_size": cfg.shard_size,
        "n_bins": cfg.n_bins,
        "heat_side": data.heatmaps.side if data.heatmaps is not None else None,
        "heat_source": data.heatmaps.source if data.heatmaps is not None else None,
        "thumbs": cfg.copy_images,
    }
    index = {"meta": meta, "columns": columns, "images": [src[i] for i in used.tolist()]}
    served = _served_images(image_paths, used, src, cfg)
    if not cfg.copy_images:
        index["served"] = [url[1:] if url else None for url in served]
    pairs = zip(used.tolist(), served, strict=True)
    listing = {
        "schema": IMAGES_SCHEMA,
        "images": {url: str(Path(image_paths[i]).resolve()) for i, url in pairs if url},
    }
    _write_js(out_dir / "data" / "images.json", json.dumps(listing, indent=1) + "\n")
    _write_js(out_dir / "data" / "index.js", f"window.VLMSAE_INDEX = {site_json(index)};\n")
    n_shards = 0
    for lo in range(0, n_s, cfg.shard_size):
        records = neuron_records(data, lo, min(n_s, lo + cfg.shard_size), image_id, steering)
        shard = lo // cfg.shard_size
        text = f"vlmsaeShard({shard}, {site_json(records)});\n"
        _write_js(out_dir / "data" / "neurons" / f"{shard:05d}.js", text)
        n_shards += 1
    missing = sum(v is None for v in src.values())
    files = [*STATIC_FILES, "data/images.json", "data/index.js"]
    files += [f"data/neurons/{i:05d}.js" for i in range(n_shards)]
    if cfg.copy_images:
        names = [name for name in src.values() if name is not None]
        files += names + [f"data/thumbs/{Path(n).stem}.js" for n in names]
    return SiteResult(out_dir / "index.html", n_s, n_shards, missing, files)
