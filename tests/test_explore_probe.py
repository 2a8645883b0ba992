"""Neuron cards (PNG) and the steering probe on the neuron pages, on the toy world: the
shipped toy LLaVA, an SAE trained on every token of the vision block LLaVA reads, and a
store of those tokens; the site is built by `vlmsae explore --llava toyworld --cards`.
The browser part runs in headless Chromium (skipped where it is missing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from browser import MISSING, available, chromium, console_errors, wait_for
from vlmsae.cli import app
from vlmsae.explore.cards import read_index, read_neuron

N_IMAGES = 96
CARD_SIZE = (1200, 1380)  # 4.0 × 4.6 inches at 300 dpi


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from vlmsae.data.store import StoreWriter
    from vlmsae.steer.llava import load_llava
    from vlmsae.steer.neurons import block_outputs
    from vlmsae.steer.toy import ToySteeringConfig, train_toy_sae
    from vlmsae.toyworld import llava_path, make_world

    root = tmp_path_factory.mktemp("probe")
    llava = load_llava(llava_path())
    layer = max(llava.encoder.read_layers)
    images, _ = make_world("train", N_IMAGES, seed=0)
    torch.manual_seed(0)
    cfg = ToySteeringConfig(expansion=4, steps=120, batch_size=512)
    sae = train_toy_sae(llava, images, layer, cfg)
    sae.save(root / "sae")
    paths = []
    for i, im in enumerate(images):
        paths.append(str(root / "imgs" / f"{i:03d}.png"))
        (root / "imgs").mkdir(exist_ok=True)
        im.save(paths[-1])
    writer = StoreWriter(root / "acts", sae.cfg.d_in, kind="activations", dtype="float32",
                         meta={"model": llava.name, "hookpoint": "post_mlp_residual",
                               "layer": layer, "tokens": "all"})  # fmt: skip
    i = 0
    for h_BTD in block_outputs(llava, images, layer):
        for h_TD in h_BTD.numpy():
            writer.add(h_TD, [i] * len(h_TD), range(len(h_TD)))
            i += 1
            writer.mark(i)
    writer.close(images=paths, n_images=N_IMAGES)
    codes_NTS = sae.encode(torch.cat(list(block_outputs(llava, images, layer)))).detach()
    top2 = torch.argsort(codes_NTS.amax((0, 1)), descending=True)[:2].tolist()
    result = CliRunner().invoke(app, [str(a) for a in [
        "explore", "--sae", root / "sae", "--activations", root / "acts", "--out",
        root / "site", "--llava", "toyworld", "--steer-neurons", f"{top2[0]},{top2[1]}",
        "--cards", f"{top2[0]},0", "--copy-images"]])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    return root, llava, sae, layer, top2


def test_site_holds_the_probe_of_the_chosen_neurons(toy):
    from vlmsae.explore.probe import white_image
    from vlmsae.steer.llava import generate
    from vlmsae.steer.steering import steer_sae

    root, llava, sae, layer, top2 = toy
    index = read_index(root / "site")
    st = index["meta"]["steering"]
    assert st["neurons"] == top2 and st["layer"] == layer
    assert st["prompt"] == "What is shown in this image?"
    white = white_image()
    assert st["base"] == generate(llava, white, st["prompt"], max_new_tokens=16)
    for k in top2:
        rec = read_neuron(root / "site", index, k)
        top = index["columns"]["max_act"][k]
        assert [f for f, _, _ in rec["steer"]] == st["factors"]
        assert [a for _, a, _ in rec["steer"]] == pytest.approx([f * top for f in st["factors"]],
                                                               rel=1e-3)  # fmt: skip
        factor, alpha, answer = rec["steer"][-1]  # the strongest clamp, recomputed here
        with steer_sae(llava.encoder, sae, layer, {k: alpha}):
            assert answer == generate(llava, white, st["prompt"], max_new_tokens=16)
    others = [n for n in range(index["meta"]["n_neurons"]) if n not in top2][:20]
    assert all("steer" not in read_neuron(root / "site", index, n) for n in others)


def test_probe_picks_the_most_monosemantic_firing_neurons():
    from vlmsae.core.errors import UserError
    from vlmsae.explore.probe import ProbeConfig, probe_neurons

    cols = {"ms": np.array([0.2, np.nan, 0.9, 0.95, 0.5]), "max_act": np.array([1, 1, 1, 0, 1])}
    assert probe_neurons(cols, 5, ProbeConfig(n_neurons=2)) == [2, 4]  # 3 never fires
    assert probe_neurons(cols, 5, ProbeConfig(neurons=(1, 1, 0))) == [1, 0]
    with pytest.raises(UserError, match="out of range"):
        probe_neurons(cols, 5, ProbeConfig(neurons=(5,)))
    with pytest.raises(UserError, match="needs MS"):
        probe_neurons({"max_act": cols["max_act"]}, 5, ProbeConfig())


def test_cards_are_pngs_at_print_resolution_with_16_tiles(toy):
    root, _, _, _, top2 = toy
    card = root / "site" / "cards" / f"neuron-{top2[0]:05d}.png"
    assert card.with_suffix(".svg").is_file() and card.with_suffix(".pdf").is_file()
    with Image.open(card) as im:
        assert im.size == CARD_SIZE
        px = np.asarray(im.convert("RGB")).astype(int)
    # the 4×4 grid: every tile shows a toy image (not the white or grey of a missing one)
    x0, y0, w = 24, 1380 - 24 - 1152, 1152 // 4  # axes at 2 % margins, panel 0.96 × 1200 wide
    tiles = [px[y0 + r * w + 20 : y0 + (r + 1) * w - 40, x0 + c * w + 20 : x0 + (c + 1) * w - 20]
             for r in range(4) for c in range(4)]  # fmt: skip
    assert all(t.std() > 5 for t in tiles), [round(t.std(), 1) for t in tiles]
    assert px[:150].min() < 50  # the title is drawn in black


def test_cards_of_a_built_site_and_their_errors(toy, tmp_path):
    root = toy[0]
    runner = CliRunner()
    out = runner.invoke(app, ["explore", "--out", str(root / "site"), "--cards", "1"])
    assert out.exit_code == 0 and (root / "site" / "cards" / "neuron-00001.png").is_file()
    bad = runner.invoke(app, ["explore", "--out", str(root / "site"), "--cards", "99999"])
    assert bad.exit_code == 2 and "no neuron 99999 in this site" in bad.output
    bad = runner.invoke(app, ["explore", "--out", str(root / "site"), "--cards", "a,b"])
    assert bad.exit_code == 2 and "--cards takes neuron ids" in bad.output


def card_png(page) -> tuple[str, np.ndarray]:
    """Click "Download PNG"; the card's ``data-images`` and its pixels."""
    import base64
    import io

    button = page.find_element("id", "card-png")
    neuron = button.get_attribute("data-neuron")
    button.click()
    link = wait_for(page, "a#card-link")
    url = link.get_attribute("href")
    assert url.startswith("data:image/png;base64,")
    assert link.get_attribute("download") == f"neuron-{neuron}.png"
    png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return link.get_attribute("data-images"), np.asarray(png.convert("RGB")).astype(int)


def card_tiles(px: np.ndarray) -> list[np.ndarray]:
    """The 16 tiles of a canvas card (card.js: TILE 160, PAD 12, HEAD 64, SCALE 2), inner
    parts (the activation label left out)."""
    y, x, w = 128, 24, 320
    return [px[y + r * w + 20 : y + r * w + 260, x + c * w + 20 : x + c * w + 300]
            for r in range(4) for c in range(4)]  # fmt: skip


@pytest.mark.skipif(not available(), reason=MISSING)
def test_browser_shows_the_probe_and_downloads_the_card(toy):
    root, _, _, _, top2 = toy
    index = read_index(root / "site")
    rec = read_neuron(root / "site", index, top2[0])
    home = (root / "site" / "index.html").as_uri()
    with chromium() as page:
        page.get(home + f"#/neuron/{top2[0]}")
        panel = wait_for(page, f'#steering[data-neuron="{top2[0]}"]')
        answers = [td.text for td in panel.find_elements("css selector", "td.answer")]
        assert answers == [index["meta"]["steering"]["base"], *(a for _, _, a in rec["steer"])]
        page.get(home + f"#/neuron/{top2[1]}")
        page.refresh()
        wait_for(page, f'#steering[data-neuron="{top2[1]}"]')
        page.get(home + "#/neuron/0")
        page.refresh()
        wait_for(page, 'section#neuron[data-neuron="0"]')
        assert not page.find_elements("css selector", "#steering")  # not probed
        images, px = card_png(page)  # from file://, with the thumbnails as data URLs
        assert images == "drawn" and px.shape == (1432, 1328, 3)
        n_top = len(read_neuron(root / "site", index, 0)["top"])
        drawn = [t.std() > 5 for t in card_tiles(px)]  # a toy image, not a grey tile
        assert drawn == [j < n_top for j in range(16)] and n_top == 16
        assert px[:80].min() < 50  # the title
        assert console_errors(page) == []


@pytest.mark.skipif(not available(), reason=MISSING)
def test_browser_card_of_a_site_linking_its_images_says_how_to_get_them(toy):
    """Without --copy-images a file:// page may not export the linked images: the card
    comes with grey tiles and the page says what to do."""
    root = toy[0]
    result = CliRunner().invoke(app, [str(a) for a in [
        "explore", "--sae", root / "sae", "--activations", root / "acts",
        "--out", root / "linked", "--no-heatmaps", "--neighbours", "0"]])  # fmt: skip
    assert result.exit_code == 0, result.output
    with chromium() as page:
        page.get((root / "linked" / "index.html").as_uri() + "#/neuron/0")
        wait_for(page, 'section#neuron[data-neuron="0"]')
        images, px = card_png(page)
        assert images == "omitted" and all(t.std() < 1 for t in card_tiles(px))
        assert "--copy-images" in page.find_element("id", "card-note").text
        assert console_errors(page) == []


def test_probe_refuses_an_sae_it_cannot_steer(toy, tmp_path):
    from explore_fixtures import make_sae

    root, _, sae, _, _ = toy
    make_sae(tmp_path / "nolayer", sae.cfg.d_in, 64)  # fits the store, names no layer
    runner = CliRunner()
    base = ["explore", "--activations", str(root / "acts"), "--out", str(tmp_path / "s"),
            "--llava", "toyworld", "--no-heatmaps"]  # fmt: skip
    r = runner.invoke(app, [*base, "--sae", str(tmp_path / "nolayer"), "--steer-neurons", "0"])
    assert r.exit_code == 2 and "the SAE config names no layer" in r.output, r.output
    r = runner.invoke(app, [*base, "--raw"])
    assert r.exit_code == 2 and "--llava steers SAE neurons" in r.output, r.output
    r = runner.invoke(app, [*base, "--sae", str(root / "sae")])  # no MS to rank by
    assert r.exit_code == 2 and "needs MS" in r.output, r.output
    r = runner.invoke(app, [*base, "--sae", str(root / "sae"), "--steer-neurons", "9999"])
    assert r.exit_code == 2 and "--steer-neurons 9999 is out of range" in r.output, r.output
