"""How fast the neuron browser opens and sorts a ×64 SAE's index (65,536 neurons) in
headless Chromium, and a screenshot of a neuron page for the docs.

    python benchmarks/explore_browser.py bench [--neurons 65536] [--json out.json]
    python benchmarks/explore_browser.py screenshot SITE_DIR NEURON docs/explore-neuron.png

``bench`` writes a synthetic site (random statistics, written by the same ``write_site`` as
``vlmsae explore``; the numbers are made up, the sizes are real) and measures in the
browser: opening the index (page load until the first 100 rows are drawn), sorting all
neurons by MS, a label search, and opening a neuron page (its shard loaded on demand).
Needs Debian's chromium + chromium-driver and selenium (docs/getting-started.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def synthetic_site(out: Path, n_neurons: int, n_images: int = 10_000, seed: int = 0) -> Path:
    """A site of ``n_neurons`` random neurons over ``n_images`` (200 distinct image files)."""
    from PIL import Image

    from vlmsae.explore.labels import VOCAB_DIR, _read_words
    from vlmsae.explore.neurons import Neighbours, NeuronData
    from vlmsae.explore.site import ExploreConfig, write_site

    rng = np.random.default_rng(seed)
    files = []
    for i in range(200):
        path = out / "images" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    paths = [files[i % len(files)] for i in range(n_images)]
    k = 16
    top = np.stack([rng.choice(n_images, k, replace=False) for _ in range(n_neurons)])
    values = -np.sort(-rng.exponential(size=(n_neurons, k)).astype(np.float32), axis=1)
    n_active = rng.integers(k, n_images // 10, n_neurons)
    near = Neighbours(rng.integers(0, n_neurons, (n_neurons, 5)), rng.random((n_neurons, 5)))
    group_sizes = [n_neurons // 16, n_neurons // 8, n_neurons // 4]
    group_sizes.append(n_neurons - sum(group_sizes))
    group = np.searchsorted(np.cumsum(group_sizes), np.arange(n_neurons), "right")
    data = NeuronData(
        n_images, top, values, n_active, values[:, 0], rng.integers(0, 50, (n_neurons, 20)),
        group, near, near, None,
    )  # fmt: skip
    ms = rng.random(n_neurons)
    ms[rng.random(n_neurons) < 0.05] = np.nan  # undefined scores are written as null
    words = _read_words(VOCAB_DIR / "imagenet.txt")
    columns = {
        "group": group, "n_active": n_active, "freq": n_active / n_images,
        "max_act": values[:, 0], "ms": ms, "ms_n_active": n_active,
        "label": [words[i] for i in rng.integers(0, len(words), n_neurons)],
        "margin": rng.random(n_neurons) * 0.1,
    }  # fmt: skip
    meta = {"arch": "matryoshka (synthetic)", "d_sae": n_neurons, "group_sizes": group_sizes}
    write_site(out / "site", data, columns, paths, meta, ExploreConfig())
    return out / "site"


def bench(n_neurons: int) -> dict:
    from browser import chromium, console_errors, wait_for

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        site = synthetic_site(Path(tmp), n_neurons)
        write_s = time.perf_counter() - t0
        index_mb = (site / "data" / "index.js").stat().st_size / 2**20
        with chromium() as d:
            d.get("about:blank")
            t0 = time.perf_counter()
            d.get((site / "index.html").as_uri())
            wait_for(d, "#rows tr[data-neuron]")
            open_s = time.perf_counter() - t0
            sort_ms = d.execute_script(
                "const t = performance.now();"
                "document.querySelector('th[data-col=ms]').click();"
                "return performance.now() - t;"
            )
            first = d.execute_script("return document.querySelector('#rows tr').dataset.neuron")
            search_ms = d.execute_script(
                "const s = document.getElementById('search'); const t = performance.now();"
                "s.value = 'shark'; s.dispatchEvent(new Event('input'));"
                "return performance.now() - t;"
            )
            t0 = time.perf_counter()
            d.get((site / "index.html").as_uri() + f"#/neuron/{n_neurons - 1}")
            d.refresh()
            wait_for(d, f'section#neuron[data-neuron="{n_neurons - 1}"]')
            page_s = time.perf_counter() - t0
            errors = console_errors(d)
    return {
        "n_neurons": n_neurons,
        "index_js_mb": round(index_mb, 2),
        "write_site_s": round(write_s, 1),
        "open_index_s": round(open_s, 2),
        "sort_by_ms_ms": round(sort_ms, 1),
        "search_ms": round(search_ms, 1),
        "open_neuron_page_s": round(page_s, 2),
        "top_neuron_after_sort": int(first),
        "console_errors": len(errors),
    }


def screenshot(site: Path, neuron: int, out: Path, width: int = 1180, height: int = 1080) -> None:
    """A PNG of one neuron page (palette-quantised to stay small)."""
    from PIL import Image

    from browser import chromium, wait_for

    with chromium(width, height) as d:
        d.get(site.resolve().as_uri() + f"/index.html#/neuron/{neuron}")
        wait_for(d, f'section#neuron[data-neuron="{neuron}"]')
        time.sleep(0.5)  # images decode
        raw = out.with_suffix(".raw.png")
        d.save_screenshot(str(raw))
    Image.open(raw).convert("RGB").quantize(colors=128).save(out, optimize=True)
    raw.unlink()
    print(f"{out}: {out.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--neurons", type=int, default=65_536)
    b.add_argument("--json", type=Path)
    s = sub.add_parser("screenshot")
    s.add_argument("site", type=Path)
    s.add_argument("neuron", type=int)
    s.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "screenshot":
        screenshot(args.site, args.neuron, args.out)
        return
    result = bench(args.neurons)
    for k, v in result.items():
        print(f"{k}: {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
