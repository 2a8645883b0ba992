"""The neuron browser in a real headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): opened from file:// and served by `vlmsae explore --serve`.

Every page load is followed by a check that the console logged no error (a failed script or
image load is logged as SEVERE)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from browser import MISSING, available, chromium, console_errors, wait_for
from explore_fixtures import SIDE, build_tiny_site

pytestmark = pytest.mark.skipif(not available(), reason=MISSING)
N_IMAGES, D, D_SAE = 40, 8, 160  # 160 neurons: two pages of the index


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = build_tiny_site(tmp_path_factory.mktemp("browse"), N_IMAGES, D, D_SAE)
    text = (root / "site" / "data" / "index.js").read_text()
    index = json.loads(text[len("window.VLMSAE_INDEX = ") :].rstrip().rstrip(";"))
    return root / "site", index


@pytest.fixture(scope="module")
def driver():
    with chromium() as d:
        yield d


@pytest.fixture
def page(driver, site):
    """The driver; after the test, the console must hold no errors."""
    yield driver
    assert console_errors(driver) == []


def open_index(driver, site_dir, hash_: str = ""):
    driver.get((site_dir / "index.html").as_uri() + hash_)
    driver.refresh()  # a new document even when only the hash changed
    return wait_for(driver, "#rows tr[data-neuron]" if not hash_ else "section#neuron")


def row_ids(driver) -> list[int]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#rows tr')].map(r => +r.dataset.neuron)"
    )


def all_row_ids(driver) -> list[int]:
    """Row ids of every page of the index, from the current page on."""
    seen = row_ids(driver)
    while driver.find_element("id", "next").is_enabled():
        driver.find_element("id", "next").click()
        seen += row_ids(driver)
    return seen


def set_min_active(driver, n: int) -> None:
    """Type ``n`` into the index's "active on >= N images" filter."""
    box = driver.find_element("id", "min-active")
    box.clear()
    box.send_keys(str(n))


def column(driver, name: str) -> list[str]:
    return driver.execute_script(
        f"return [...document.querySelectorAll('#rows td[data-col={name}]')]"
        ".map(td => td.textContent)"
    )


def test_index_lists_every_neuron(page, site):
    site_dir, _ = site
    open_index(page, site_dir)
    set_min_active(page, 0)
    assert sorted(all_row_ids(page)) == list(range(D_SAE))
    assert page.find_element("id", "count").text == f"{D_SAE} of {D_SAE} neurons"


def test_the_list_starts_at_neurons_active_on_min_active_images(page, site):
    """The paper's rule by default (a neuron on 2 images has MS 1.0): the filter shows it,
    starts at the site's --min-active and changes the list when typed into."""
    site_dir, index = site
    n_active = index["columns"]["n_active"]
    assert index["meta"]["min_active"] == 16
    open_index(page, site_dir)
    assert page.find_element("id", "min-active").get_attribute("value") == "16"
    kept = [i for i in range(D_SAE) if n_active[i] >= 16]
    assert 0 < len(kept) < D_SAE  # the fixture has neurons on both sides
    assert sorted(all_row_ids(page)) == kept
    assert page.find_element("id", "count").text == (
        f"{len(kept)} of {D_SAE} neurons (active on ≥ 16 images)"
    )
    open_index(page, site_dir)
    set_min_active(page, 9)
    assert sorted(all_row_ids(page)) == [i for i in range(D_SAE) if n_active[i] >= 9]


def test_every_ms_column_names_its_embedder(page, site):
    site_dir, index = site
    assert [(m["column"], m["embedder"]) for m in index["meta"]["ms"]] == [
        ("ms", "emb"),
        ("ms_second", "second"),
    ]
    open_index(page, site_dir)
    heads = {c: page.find_element("css selector", f'th[data-col="{c}"]').text
             for c in ("ms", "ms_second")}  # fmt: skip
    assert heads == {"ms": "MS (emb)", "ms_second": "MS (second)"}
    n = next(i for i in range(D_SAE) if index["columns"]["ms_second"][i] is not None)
    open_index(page, site_dir, f"#/neuron/{n}")
    terms = page.execute_script(
        "return [...document.querySelectorAll('dl.stats dt')].map(d => d.textContent)"
    )
    assert {"MS (emb)", "MS (second)"} <= set(terms)


def test_sorting_by_ms_orders_the_rows(page, site):
    site_dir, index = site
    open_index(page, site_dir)
    page.find_element("css selector", 'th[data-col="ms"]').click()
    shown = [None if t == "–" else float(t) for t in column(page, "ms")]
    ms, n_active = index["columns"]["ms"], index["columns"]["n_active"]
    kept = [m for m, n in zip(ms, n_active, strict=True) if n >= 16]  # the default filter
    want = sorted((m for m in kept if m is not None), reverse=True)
    assert shown[: len(want)][:100] == pytest.approx([round(m, 3) for m in want][:100], abs=1e-3)
    assert all(a >= b for a, b in zip(shown[:-1], shown[1:], strict=True) if b is not None)
    page.find_element("css selector", 'th[data-col="ms"]').click()  # again: ascending
    shown = [float(t) for t in column(page, "ms") if t != "–"]
    assert shown == sorted(shown) and shown[0] == pytest.approx(want[-1], abs=1e-3)


def test_search_finds_a_label(page, site):
    site_dir, index = site
    labels = index["columns"]["label"]
    words = [w for w in labels if w]
    word = min(set(words), key=words.count)  # the rarest label
    open_index(page, site_dir)
    set_min_active(page, 0)
    page.find_element("id", "search").send_keys(word)
    want = {i for i, w in enumerate(labels) if w and word in w}
    assert all(word in t for t in column(page, "label"))
    assert sorted(all_row_ids(page)) == sorted(want)
    assert page.find_element("id", "count").text == f"{len(want)} of {D_SAE} neurons"


def _top_image_widths(page) -> list[int]:
    """Natural widths of the neuron page's top images, once they have loaded (0: broken)."""
    for _ in range(50):  # images load asynchronously
        sizes = page.execute_script(
            "return [...document.querySelectorAll('figure.top-image img')]"
            ".map(i => i.complete ? i.naturalWidth : -1)"
        )
        if -1 not in sizes:
            break
        time.sleep(0.1)
    return sizes


def test_permalink_opens_the_neuron_with_its_images_and_heatmaps(page, site, tmp_path):
    site_dir, index = site
    n = max(range(D_SAE), key=lambda s: index["columns"]["n_active"][s])
    open_index(page, site_dir, f"#/neuron/{n}")
    section = page.find_element("css selector", "section#neuron")
    assert section.get_attribute("data-neuron") == str(n)
    sizes = _top_image_widths(page)
    assert len(sizes) == 16 and min(sizes) > 0
    heat = page.execute_script(
        "return [...document.querySelectorAll('canvas.heatmap')].map(c => {"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let a = 0; for (let i = 3; i < d.length; i += 4) a = Math.max(a, d[i]);"
        " return [c.width, a]; })"
    )
    assert len(heat) == 16 and all(w == SIDE for w, _ in heat)
    assert max(a for _, a in heat) == 255  # the neuron's strongest patch is opaque
    shot = tmp_path / "neuron.png"
    page.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_row_link_and_a_neighbour_link_open_their_neurons(page, site):
    site_dir, _ = site
    open_index(page, site_dir)
    first = row_ids(page)[3]
    page.find_element("css selector", f'tr[data-neuron="{first}"] a').click()
    section = wait_for(page, f'section#neuron[data-neuron="{first}"]')
    link = section.find_element("css selector", "ul.neighbours a")
    target = link.get_attribute("data-neuron-link")
    link.click()
    wait_for(page, f'section#neuron[data-neuron="{target}"]')
    page.back()
    wait_for(page, f'section#neuron[data-neuron="{first}"]')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_site_opens_on_localhost(page, site):
    """A site that links its images (no --copy-images), built deeper in the tree than its
    images, is served at the root of http://127.0.0.1:PORT/ with exactly those images (under
    /_images/); the same site opened from file:// loads them by their relative paths."""
    from typer.testing import CliRunner

    from vlmsae.cli import app

    root = site[0].parent
    site_dir = root / "runs" / "linked" / "site"
    args = ["explore", "--sae", root / "sae", "--activations", root / "acts", "--out", site_dir,
            "--scores", root / "scores", "--min-active", "0"]  # fmt: skip
    assert CliRunner().invoke(app, [str(a) for a in args]).exit_code == 0
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vlmsae", "explore", "--serve", "--out", str(site_dir),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = server.stdout.readline()
        assert line == f"serving {site_dir} on http://127.0.0.1:{port}/ (Ctrl-C stops)\n"
        url = f"http://127.0.0.1:{port}/"
        page.get(f"{url}#/neuron/7")
        assert wait_for(page, "section#neuron").get_attribute("data-neuron") == "7"
        sizes = _top_image_widths(page)
        assert sizes and min(sizes) > 0, sizes  # the images load over HTTP too
        srcs = page.execute_script(
            "return [...document.querySelectorAll('figure.top-image img')].map(i => i.src)"
        )
        assert all(s.startswith(f"{url}_images/") for s in srcs), srcs
        page.get(url)
        assert len(row_ids(page)) == 100
        open_index(page, site_dir, "#/neuron/7")  # the same site from file://
        sizes = _top_image_widths(page)
        assert sizes and min(sizes) > 0, sizes
        srcs = page.execute_script(
            "return [...document.querySelectorAll('figure.top-image img')].map(i => i.src)"
        )
        assert all(s.startswith("file:///") and "_images" not in s for s in srcs), srcs
    finally:
        server.terminate()
        server.wait(10)


def test_a_served_copied_site_opens_with_its_thumbnails(page, site):
    """A site built with --copy-images is served too: its thumbnails are its own files."""
    site_dir, _ = site
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vlmsae", "explore", "--serve", "--out", str(site_dir),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert "serving" in server.stdout.readline()
        page.get(f"http://127.0.0.1:{port}/#/neuron/3")
        assert wait_for(page, "section#neuron").get_attribute("data-neuron") == "3"
        sizes = _top_image_widths(page)
        assert sizes and min(sizes) > 0, sizes
    finally:
        server.terminate()
        server.wait(10)


def test_a_missing_data_file_is_reported_on_the_page_and_in_the_console(driver, site, tmp_path):
    """The console check of the other tests sees real failures: here a shard and an image
    of a copied site are deleted."""
    import shutil

    site_dir, _ = site
    broken = tmp_path / "site"
    shutil.copytree(site_dir, broken)
    (broken / "data" / "neurons" / "00000.js").unlink()
    driver.get((broken / "index.html").as_uri() + "#/neuron/1")
    driver.refresh()
    for _ in range(50):
        errors = driver.find_elements("css selector", "#app .error")
        if errors:
            break
        time.sleep(0.1)
    assert "cannot load" in errors[0].text and "data/neurons/00000.js" in errors[0].text
    assert any("00000.js" in m["message"] for m in console_errors(driver))


@pytest.fixture(scope="module")
def emoji_site(tmp_path_factory):
    from emoji_models import emoji_models
    from explore_fixtures import build_emoji_site, read_js

    root = build_emoji_site(tmp_path_factory.mktemp("emoji"), emoji_models(tmp_path_factory))
    return root / "site", read_js(root / "site" / "data" / "index.js", "window.VLMSAE_INDEX = ")


def test_an_emoji_world_site_lists_searches_and_opens_its_neurons(driver, emoji_site):
    """The emoji world's browser: every neuron listed with its label and purity, a label
    search, and a neuron page whose top images load; no console error."""
    site_dir, index = emoji_site
    n_s = index["meta"]["d_sae"]
    open_index(driver, site_dir)
    set_min_active(driver, 0)
    assert sorted(all_row_ids(driver)) == list(range(n_s))
    labels = index["columns"]["label"]
    word = min({w for w in labels if w}, key=labels.count)
    open_index(driver, site_dir)
    set_min_active(driver, 0)
    driver.find_element("id", "search").send_keys(word)
    concepts = index["columns"]["concept"]
    want = {i for i in range(n_s) if word in f"{i} {labels[i] or ''} {concepts[i] or ''}"}
    assert sorted(all_row_ids(driver)) == sorted(want) and want
    n = max(range(n_s), key=lambda s: index["columns"]["n_active"][s])
    open_index(driver, site_dir, f"#/neuron/{n}")
    sizes = _top_image_widths(driver)
    assert sizes and min(sizes) > 0
    assert console_errors(driver) == []
