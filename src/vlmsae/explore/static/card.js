// vlmsae neuron card: the neuron page's "Download PNG" draws the same card as
// `vlmsae explore --cards` (vlmsae/explore/cards.py) on a canvas: title, statistics line,
// the top 16 images (4×4, centre-cropped) with their activations.
"use strict";

(function () {
  const TILE = 160, SIDE = 4, PAD = 12, HEAD = 64;

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
      parts.push(`MS ${fmt(col("ms"), 3)}` + (n !== null ? ` (n_active ${fmt(n, 0)})` : ""));
    }
    if ((meta.group_sizes || []).length > 1) parts.push(`group ${fmt(col("group"), 0)}`);
    parts.push(`active on ${fmt(col("n_active"), 0)} of ${meta.n_images} images`);
    parts.push(`max ${fmt(col("max_act"), 3)}`);
    return [title, parts.join(" · ")];
  }

  function draw(canvas, index, id, top, images, withImages) {
    const [title, stats] = cardLines(index, id);
    canvas.width = 2 * PAD + SIDE * TILE;
    canvas.height = HEAD + SIDE * TILE + PAD;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
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

  // A PNG data URL of the card. Browsers forbid reading back a canvas holding images of
  // another origin, and every file:// page is its own origin: there the card is drawn with
  // grey tiles (withImages false) and the page says to open the site with --serve.
  window.vlmsaeCardPNG = function (canvas, index, id, top, images) {
    draw(canvas, index, id, top, images, true);
    try {
      return { url: canvas.toDataURL("image/png"), withImages: true };
    } catch (err) {
      if (err.name !== "SecurityError") throw err;
      draw(canvas, index, id, top, images, false);
      return { url: canvas.toDataURL("image/png"), withImages: false };
    }
  };
})();
