"""Every ```python block of README.md and of the documentation pages runs as written, on
the toy world.

The blocks run in reading order (README.md, then the site's pages in the order of the nav in
mkdocs.yml), each in a fresh namespace (so a name a block does not define fails), in one
working directory that a fixture fills with what the blocks read: toy-world images and
stores under the documented paths (``runs/clip-train/layer_22`` holds the toy CLIP's
block 4; the toy CLIP has 6 blocks). A block may read what an earlier one wrote (the
README's tour trains ``runs/sae-l22``; the caching guide writes ``runs/acts``, which the
training guide reads). :func:`substitutions` swaps hub ids for the shipped toy models and
shrinks sizes; each one must still match the documentation's text, so an edit that makes
one stale fails here too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
FRONT_PAGE_LINES = 250  # README.md is the front page; the rest lives in docs/


def substitutions(data_root: Path) -> dict[str, str]:
    """Documented text -> what runs offline on a CPU in seconds."""
    from vlmsae import toyworld

    return {
        "openai/clip-vit-large-patch14-336": str(toyworld.clip_path()),
        "llava-hf/llava-1.5-7b-hf": str(toyworld.llava_path()),
        "/data/imagenet": str(data_root),
        'device="cuda"': 'device="cpu"',
        "torch.float16": "torch.float32",
        "steps=110_000": "steps=4",
        "batch_size=4096": "batch_size=64",
        "batch_size=256": "batch_size=16",
        "(11, 22)": "(2, 4)",  # toy CLIP blocks
        "[11, 22]": "[2, 4]",
        "    sae,\n    22,": "    sae,\n    4,",
        "layer=22": "layer=4",  # the block the toy LLaVA reads
        "n=2000": "n=64",
        "mateuszpach/sae-for-vlm": str(data_root.parent / "hub-sae"),  # laid out as on the hub
    }


def _nav_pages(nav: list) -> list[str]:
    """The page paths of a mkdocs nav, in order."""
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def doc_pages() -> list[Path]:
    """README.md, then every page of the site in nav order."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    return [README, *(DOCS / page for page in _nav_pages(nav))]


def doc_blocks() -> list[tuple[str, int, str]]:
    """``(page, line number, source)`` of every python block, in reading order."""
    blocks = []
    for page in doc_pages():
        text = page.read_text(encoding="utf-8")
        name = page.relative_to(ROOT).as_posix()
        blocks += [
            (name, text[: m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)
        ]
    return blocks


def _cache_as(enc, data_root: Path, split: str, out: Path) -> None:
    """Cache block 4 of the toy CLIP (CLS) and store it where the README has block 22."""
    from vlmsae.encoders import CacheConfig, cache_activations

    cfg = CacheConfig(layers=(4,), tokens="cls", batch_size=32, workers=0, progress=False)
    cache_activations(enc, data_root, out, cfg, split=split)
    (out / "layer_4").rename(out / "layer_22")


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    """A working directory holding every file the README blocks read."""
    import vlmsae
    from vlmsae import toyworld
    from vlmsae.encoders import Encoder, embed_images

    root = tmp_path_factory.mktemp("readme")
    data = root / "imagenet"
    toyworld.export_imagefolder(data, split="train", n=64)
    toyworld.export_imagefolder(data, split="val", n=48)
    enc = Encoder.from_pretrained(toyworld.clip_path())
    _cache_as(enc, data, "train", root / "runs" / "clip-train")
    _cache_as(enc, data, "val", root / "runs" / "clip-val")
    embed_images(enc, data, root / "runs" / "dino-val", split="val", workers=0, progress=False)
    rng = np.random.default_rng(0)
    vlmsae.ActivationStore.write(root / "runs" / "acts-val", rng.normal(size=(256, 768)))
    vlmsae.SAE(vlmsae.SAEConfig(d_in=128, expansion=2, sparsity="topk", k=8)).save(
        root / "runs" / "sae-llava"
    )  # the toy LLaVA's tower is the toy CLIP's (width 128)
    release = (
        root
        / "hub-sae"
        / (
            "batch_top_k_20_x8/imagenet_train_activations_clip-vit-large-patch14-336_22_"
            "post_mlp_residual_batch_top_k_20_x8/trainer_0"
        )
    )  # the paper's release layout, as a local folder (no hub here)
    vlmsae.SAE(vlmsae.SAEConfig(d_in=128, expansion=2, sparsity="topk", k=8)).save(release)
    first = sorted((data / "val").rglob("*.png"))[0]
    from PIL import Image

    with Image.open(first) as im:
        im.convert("RGB").save(root / "cat.jpg")
    return root


def test_the_docs_have_the_blocks_this_test_expects():
    blocks = doc_blocks()
    pages = {page for page, _, _ in blocks}
    assert len(blocks) >= 9 and "README.md" in pages, [(p, line) for p, line, _ in blocks]
    text = "\n".join(page.read_text(encoding="utf-8") for page in doc_pages())
    stale = [old for old in substitutions(Path("/x")) if old not in text]
    assert not stale, f"substitutions that no longer match the documentation: {stale}"


def test_every_page_with_python_blocks_is_in_the_nav():
    """A page the nav leaves out would not be run here (nor shown on the site)."""
    listed = set(doc_pages())
    missing = [p.relative_to(ROOT).as_posix() for p in sorted(DOCS.rglob("*.md"))
               if BLOCK.search(p.read_text(encoding="utf-8")) and p not in listed]  # fmt: skip
    assert not missing, f"pages with python blocks missing from mkdocs.yml's nav: {missing}"


def test_readme_is_a_front_page_whose_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= FRONT_PAGE_LINES
    targets = [t.split("#")[0] for t in LINK.findall(text) if "://" not in t]
    broken = [t for t in targets if not (ROOT / t).is_file()]
    assert targets and not broken, f"README.md links to missing files: {broken}"
    linked = {(ROOT / t).resolve() for t in targets}
    guides = sorted((DOCS / "guide").glob("*.md"))
    assert guides and not [g.name for g in guides if g.resolve() not in linked]


def test_every_python_block_of_the_docs_runs(readme_dir, monkeypatch):
    monkeypatch.chdir(readme_dir)
    subs = substitutions(readme_dir / "imagenet")
    for page, line, source in doc_blocks():
        for old, new in subs.items():
            source = source.replace(old, new)
        code = compile(source, f"{page} (python block at line {line})", "exec")
        try:
            exec(code, {"__name__": f"doc_block_{line}"})
        except Exception as e:  # name the block: the traceback points into the page's text
            raise AssertionError(f"{page} block at line {line} fails: {e!r}") from e
    written = ["sae-l22/sae.safetensors", "sae/sae.safetensors", "clip-l/layer_2/manifest.json",
               "oracle-emb/manifest.json", "clip-emb/manifest.json"]  # fmt: skip
    assert all((readme_dir / "runs" / w).is_file() for w in written)
    shutil.rmtree(readme_dir / "runs" / "acts")  # 30 MB of random rows
