// vlmsae neuron card: the neuron page's "Download PNG" draws the same card as
// `vlmsae explore --cards` (vlmsae/explore/cards.py) on a canvas: title, statistics line,
// the top 16 images (4×4, centre-cropped) with their activations.
"use strict";

(function () {
  const TILE = 160, SIDE = 4, PAD = 12, HEAD = 64;
  const SCALE = 2; // pixels per layout unit: a card that prints (1328 × 1432)

  function fmt(v, digits) {
    if (v === null || v === undefined) return "–";
    return digits ? v.toFixed(digits) : String(Math.round(v));
  }

  // the same two lines as cards.card_lines
  function cardLines(index, id) {
    const cols = index.columns, meta = index.meta;
    const col = (name) => (name in cols ? cols[name][id] : null);
    const title = `neuron ${id}` + (col("label") ? ` — ${col("label")}` : "");
    const parts = [];
    if ("ms" in cols) {
      const n = col("ms_n_active");
      const first = (meta.ms || []).find((m) => m.column === "ms");
      const name = first ? `MS (${first.embedder})` : "MS";
      parts.push(`${name} ${fmt(col("ms"), 3)}` + (n !== null ? ` (n_active ${fmt(n, 0)})` : ""));
    }
    if ((meta.group_sizes || []).length > 1) parts.push(`group ${fmt(col("group"), 0)}`);
    parts.push(`active on ${fmt(col("n_active"), 0)} of ${meta.n_images} images`);
    parts.push(`max ${fmt(col("max_act"), 3)}`);
    return [title, parts.join(" · ")];
  }

  function draw(canvas, index, id, top, images, withImages) {
    const [title, stats] = cardLines(index, id);
    canvas.width = SCALE * (2 * PAD + SIDE * TILE);
    canvas.height = SCALE * (HEAD + SIDE * TILE + PAD);
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.scale(SCALE, SCALE);
    ctx.imageSmoothingQuality = "high";
    ctx.fillStyle = "#000";
    ctx.font = "bold 20px sans-serif";
    ctx.fillText(title, PAD, 28);
    ctx.font = "13px sans-serif";
    ctx.fillText(stats, PAD, 50);
    top.slice(0, SIDE * SIDE).forEach(([, act], j) => {
      const x = PAD + (j % SIDE) * TILE, y = HEAD + Math.floor(j / SIDE) * TILE;
      const img = images[j];
      if (withImages && img && img.complete && img.naturalWidth > 0) {
        const s = Math.min(img.naturalWidth, img.naturalHeight);
        ctx.drawImage(img, (img.naturalWidth - s) / 2, (img.naturalHeight - s) / 2, s, s,
          x, y, TILE, TILE);
      } else {
        ctx.fillStyle = "#c8c8c8";
        ctx.fillRect(x, y, TILE, TILE);
      }
      const text = act.toPrecision(3).replace(/\.?0+$/, "");
      ctx.font = "12px sans-serif";
      const w = ctx.measureText(text).width;
      ctx.fillStyle = "rgba(0,0,0,0.6)";
      ctx.fillRect(x + 4, y + TILE - 22, w + 8, 18);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, x + 8, y + TILE - 8);
    });
  }

  // Thumbnails of a site built with --copy-images come as data URLs (data/thumbs/*.js): a
  // canvas holding them may be read back even on a page opened from file://.
  const thumbs = {}, pending = {};
  window.vlmsaeThumb = function (name, url) {
    thumbs[name] = url;
    (pending[name] || []).forEach((resolve) => resolve(url));
    delete pending[name];
  };

  function loadThumb(name) {
    if (thumbs[name]) return Promise.resolve(thumbs[name]);
    return new Promise((resolve, reject) => {
      if (pending[name]) { pending[name].push(resolve); return; }
      pending[name] = [resolve];
      const s = document.createElement("script");
      s.src = name.replace(/^images\/(.*)\.png$/, "data/thumbs/$1.js");
      s.onerror = () => reject(new Error(`cannot load ${s.src}: the site is incomplete; ` +
        "rebuild it with vlmsae explore --copy-images"));
      document.head.append(s);
    });
  }

  function thumbImages(index, top) {
    return Promise.all(top.slice(0, SIDE * SIDE).map(([img]) => {
      const name = index.images[img];
      if (!name) return null;
      return loadThumb(name).then((url) => {
        const im = new Image();
        im.src = url;
        return im.decode().then(() => im);
      });
    }));
  }

  // A promise of {url: PNG data URL of the card, withImages}. Browsers forbid reading back
  // a canvas holding images of another origin, and every file:// page is its own origin:
  // without thumbnails (a site built without --copy-images) such a page gets the card with
  // grey tiles (withImages false), and the page says how to get the images. (Served over
  // http, the linked images are of the page's origin and are drawn.)
  window.vlmsaeCardPNG = function (canvas, index, id, top, pageImages) {
    const images = index.meta.thumbs ? thumbImages(index, top) : Promise.resolve(pageImages);
    return images.then((imgs) => {
      draw(canvas, index, id, top, imgs, true);
      try {
        return { url: canvas.toDataURL("image/png"), withImages: true };
      } catch (err) {
        if (err.name !== "SecurityError") throw err;
        draw(canvas, index, id, top, imgs, false);
        return { url: canvas.toDataURL("image/png"), withImages: false };
      }
    });
  };
})();
