// vlmsae neuron browser: a neuron index (sort, filter, search, pages) and neuron pages
// (#/neuron/ID). Data come as <script> files (file:// forbids fetch()): data/index.js sets
// window.VLMSAE_INDEX; data/neurons/NNNNN.js call vlmsaeShard(i, records) on demand.
"use strict";

(function () {
  const INDEX = window.VLMSAE_INDEX;
  const app = document.getElementById("app");
  const PAGE_SIZE = 100;
  const COLUMN_INFO = {
    group: ["group", "Matryoshka group (nested prefix level)", 0],
    ms: ["MS", "Monosemanticity Score (vlmsae score)", 3],
    ms_n_active: ["MS n_active", "images the MS statistic counted as active", 0],
    n_active: ["active", "images where the neuron is > 0", 0],
    freq: ["frequency", "share of images where the neuron is > 0", 4],
    max_act: ["max act.", "largest activation over the images", 3],
    depth: ["depth", "mean taxonomy depth of the lowest common ancestor of top-image pairs", 2],
    label: ["label", "zero-shot label (vlmsae label)", null],
    margin: ["margin", "label confidence: cosine margin over the runner-up", 3],
    concept: ["concept", "ground-truth values >= 80% of the top images hold (toy world)", null],
    purity: ["purity", "largest share of the top images holding one value (toy world)", 2],
  };
  const state = { sortKey: null, sortDir: -1, query: "", group: "", page: 0, order: null,
    minActive: 0 };
  const shards = {};
  const waiting = {};

  if (!INDEX) {
    app.innerHTML = '<p class="error">data/index.js did not load: rebuild the site with ' +
      "<code>vlmsae explore</code>.</p>";
    return;
  }
  const cols = INDEX.columns;
  const meta = INDEX.meta;
  const N = meta.n_neurons;
  const colNames = Object.keys(cols);
  // every MS column names the embedder it was measured with (MS depends on it)
  (meta.ms || []).forEach((m) => {
    COLUMN_INFO[m.column] = [`MS (${m.embedder})`,
      `Monosemanticity Score under the ${m.embedder} embedding (${m.source})`, 3];
  });
  // the list and its ranking start at neurons active on >= min_active images (the paper's
  // rule: a neuron firing on two near-identical images scores MS 1.0); the filter changes it
  state.minActive = cols.n_active && meta.min_active ? meta.min_active : 0;
  if (meta.title) {
    document.title = meta.title;
    document.getElementById("home").textContent = meta.title;
  }
  // a local model folder is shown by its last two path components
  const model = (meta.model || "").startsWith("/") ?
    "…/" + meta.model.split("/").filter(Boolean).slice(-2).join("/") : meta.model || "";
  document.getElementById("meta").textContent =
    `${meta.arch} · ${N} neurons · ${meta.n_images} images · ${model} ` +
    `${meta.hookpoint || ""}${meta.layer != null ? " layer " + meta.layer : ""}`;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  function fmt(name, v) {
    if (v === null || v === undefined) return "–";
    const info = COLUMN_INFO[name];
    const digits = info ? info[2] : 3;
    if (typeof v === "number" && digits !== null) {
      return Number.isInteger(v) && digits === 0 ? String(v) : v.toFixed(digits);
    }
    return String(v);
  }

  // -- shards ------------------------------------------------------------------------
  window.vlmsaeShard = function (i, records) {
    shards[i] = records;
    (waiting[i] || []).forEach((resolve) => resolve(records));
    delete waiting[i];
  };

  function loadShard(i) {
    if (shards[i]) return Promise.resolve(shards[i]);
    return new Promise((resolve, reject) => {
      if (waiting[i]) { waiting[i].push(resolve); return; }
      waiting[i] = [resolve];
      const s = document.createElement("script");
      s.src = `data/neurons/${String(i).padStart(5, "0")}.js`;
      s.onerror = () => reject(new Error(`cannot load ${s.src}: the site is incomplete; ` +
        "rebuild it with vlmsae explore"));
      document.head.append(s);
    });
  }

  function neuronRecord(id) {
    const shard = Math.floor(id / meta.shard_size);
    return loadShard(shard).then((recs) => recs[id - shard * meta.shard_size]);
  }

  // -- index ---------------------------------------------------------------------------
  function filtered() {
    const q = state.query.trim().toLowerCase();
    const group = state.group === "" ? null : Number(state.group);
    const labels = cols.label || null;
    const concepts = cols.concept || null;
    let ids = state.order || [...Array(N).keys()];
    const minActive = cols.n_active ? state.minActive : 0;
    if (q || group !== null || minActive > 0) {
      ids = ids.filter((i) => {
        if (minActive > 0 && !(cols.n_active[i] >= minActive)) return false;
        if (group !== null && cols.group[i] !== group) return false;
        if (!q) return true;
        const text = `${i} ${labels ? labels[i] || "" : ""} ${concepts ? concepts[i] || "" : ""}`;
        return text.toLowerCase().includes(q);
      });
    }
    return ids;
  }

  function sortBy(key) {
    state.sortDir = state.sortKey === key ? -state.sortDir : -1;
    state.sortKey = key;
    const v = cols[key];
    const dir = state.sortDir;
    const ids = [...Array(N).keys()];
    ids.sort((a, b) => {
      const x = v[a], y = v[b];
      if (x === null || x === undefined) return y === null || y === undefined ? a - b : 1;
      if (y === null || y === undefined) return -1;
      if (x < y) return -dir;
      if (x > y) return dir;
      return a - b;
    });
    state.order = ids;
    state.page = 0;
  }

  function renderIndex() {
    const ids = filtered();
    const pages = Math.max(1, Math.ceil(ids.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    const search = el("input", { type: "search", id: "search", placeholder: "search labels",
      value: state.query });
    search.addEventListener("input", () => { state.query = search.value; state.page = 0;
      renderRows(); });
    const groupSel = el("select", { id: "group-filter" }, el("option", { value: "" }, "all groups"));
    (meta.group_sizes || []).forEach((size, g) => {
      const opt = el("option", { value: g }, `group ${g} (${size})`);
      if (String(g) === state.group) opt.selected = true;
      groupSel.append(opt);
    });
    groupSel.addEventListener("change", () => { state.group = groupSel.value; state.page = 0;
      renderRows(); });
    const minBox = el("input", { type: "number", id: "min-active", min: 0, step: 1,
      value: state.minActive, title: "list and rank only neurons active on at least this " +
      "many images (0: every neuron)" });
    minBox.addEventListener("input", () => {
      const v = Number(minBox.value);
      state.minActive = Number.isFinite(v) && v > 0 ? Math.floor(v) : 0;
      state.page = 0;
      renderRows();
    });
    const minFilter = cols.n_active ? el("label", { class: "min-active" }, "active on ≥ ",
      minBox, " images") : "";
    const head = el("tr", {}, el("th", { "data-col": "id" }, "neuron"));
    colNames.forEach((name) => {
      const info = COLUMN_INFO[name] || [name, name, 3];
      const th = el("th", { "data-col": name, title: info[1] }, info[0]);
      if (state.sortKey === name) {
        th.classList.add("sorted");
        th.setAttribute("data-dir", state.sortDir < 0 ? "▼" : "▲");
      }
      th.addEventListener("click", () => { sortBy(name); renderIndex(); });
      head.append(th);
    });
    const table = el("table", { class: "neurons", id: "neurons" }, el("thead", {}, head),
      el("tbody", { id: "rows" }));
    app.replaceChildren(el("div", { class: "controls" }, search, groupSel, minFilter,
      el("span", { id: "count" })), table, el("div", { class: "pager", id: "pager" }));
    renderRows();
  }

  function renderRows() {
    const ids = filtered();
    const pages = Math.max(1, Math.ceil(ids.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    const body = document.getElementById("rows");
    const rows = ids.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE).map((i) => {
      const tr = el("tr", { "data-neuron": i },
        el("td", {}, el("a", { href: `#/neuron/${i}` }, i)));
      colNames.forEach((name) => {
        const text = typeof cols[name][i] === "string" || name === "label" || name === "concept";
        tr.append(el("td", { class: text ? "text" : null, "data-col": name },
          fmt(name, cols[name][i])));
      });
      return tr;
    });
    body.replaceChildren(...rows);
    document.getElementById("count").textContent = `${ids.length} of ${N} neurons` +
      (cols.n_active && state.minActive > 0 ? ` (active on ≥ ${state.minActive} images)` : "");
    const pager = document.getElementById("pager");
    const prev = el("button", { id: "prev" }, "‹ prev");
    const next = el("button", { id: "next" }, "next ›");
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    prev.addEventListener("click", () => { state.page--; renderRows(); });
    next.addEventListener("click", () => { state.page++; renderRows(); });
    pager.replaceChildren(prev, ` page ${state.page + 1} of ${pages} `, next);
  }

  // -- neuron page ---------------------------------------------------------------------
  function histogram(counts, zeros, maxAct) {
    const w = 320, h = 100;
    const top = Math.max(1, ...counts);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "hist");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h + 16);
    const bw = w / counts.length;
    counts.forEach((c, b) => {
      const r = document.createElementNS(svg.namespaceURI, "rect");
      const bh = c > 0 ? Math.max(1, (h * Math.log1p(c)) / Math.log1p(top)) : 0;
      r.setAttribute("x", b * bw + 1);
      r.setAttribute("y", h - bh);
      r.setAttribute("width", bw - 2);
      r.setAttribute("height", bh);
      const t = document.createElementNS(svg.namespaceURI, "title");
      t.textContent = `${c} images in (${(b * maxAct / counts.length).toFixed(3)}, ` +
        `${((b + 1) * maxAct / counts.length).toFixed(3)}]`;
      r.append(t);
      svg.append(r);
    });
    const label = document.createElementNS(svg.namespaceURI, "text");
    label.setAttribute("x", 0);
    label.setAttribute("y", h + 13);
    label.setAttribute("font-size", 11);
    label.textContent = `0 … ${maxAct.toFixed(3)} (log counts); ${zeros} images at 0`;
    svg.append(label);
    return svg;
  }

  // A linked image (a site built without --copy-images) has two URLs: relative to the site
  // (../../imgs/a.png) for a page opened from file://, and the path under which
  // `vlmsae explore --serve` answers exactly that file (_images/0000123.png) over http.
  function imageURL(img) {
    const served = location.protocol === "file:" ? null : INDEX.served;
    return served ? served[img] : INDEX.images[img];
  }

  function drawHeat(canvas, heat) {
    const side = meta.heat_side;
    canvas.width = side;
    canvas.height = side;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(side, side);
    heat.forEach((q, p) => {
      img.data[4 * p] = 255;
      img.data[4 * p + 1] = 40;
      img.data[4 * p + 2] = 0;
      img.data[4 * p + 3] = q;
    });
    ctx.putImageData(img, 0, 0);
  }

  function neighbourList(title, items, what) {
    const ul = el("ul", { class: "neighbours", "data-kind": what });
    items.forEach(([j, v]) => ul.append(el("li", {},
      el("a", { href: `#/neuron/${j}`, "data-neuron-link": j }, `neuron ${j}`),
      ` ${what} ${v.toFixed(3)}${cols.label && cols.label[j] ? " · " + cols.label[j] : ""}`)));
    if (!items.length) ul.append(el("li", {}, "none"));
    return el("div", {}, el("h3", {}, title), ul);
  }

  // "Download PNG": the card of card.js (the same as `vlmsae explore --cards`) as a file;
  // the link it clicks stays on the page (a#card-link, its href the PNG data URL).
  function cardButton(id, rec, page) {
    const button = el("button", { id: "card-png", "data-neuron": id, type: "button" },
      "Download PNG");
    const note = el("span", { class: "note", id: "card-note" });
    const saved = (card) => {
      const old = document.getElementById("card-link");
      if (old) old.remove();
      const link = el("a", { id: "card-link", href: card.url, download: `neuron-${id}.png`,
        "data-images": card.withImages ? "drawn" : "omitted" });
      note.textContent = card.withImages ? "" : " images left out: a page opened from the " +
        "file system may not export them; build the site with --copy-images, or write " +
        "the card with vlmsae explore --out SITE --cards ID";
      note.after(link);
      link.click();
    };
    button.addEventListener("click", () => {
      // one entry per top image, null where it was unreadable (no <img>)
      const images = [...page.querySelectorAll("figure.top-image")]
        .map((f) => f.querySelector("img"));
      const canvas = el("canvas", { id: "card-canvas" });
      window.vlmsaeCardPNG(canvas, INDEX, id, rec.top, images).then(saved).catch((err) => {
        note.textContent = " " + String(err.message || err);
        note.classList.add("error");
        console.error(err);
      });
    });
    return el("span", { class: "card" }, button, note);
  }

  function steeringPanel(id, rec) {
    const st = meta.steering;
    if (!st || !rec.steer) return "";
    const rows = [el("tr", { "data-alpha": "none" }, el("td", {}, "unsteered"),
      el("td", { class: "answer" }, st.base))];
    rec.steer.forEach(([factor, alpha, answer]) => rows.push(el("tr", { "data-alpha": alpha },
      el("td", {}, `α = ${factor}× max (${alpha.toFixed(3)})`),
      el("td", { class: "answer" }, answer))));
    const model = st.model.startsWith("/") ? "…/" + st.model.split("/").filter(Boolean)
      .slice(-2).join("/") : st.model;
    return el("div", { id: "steering", "data-neuron": id }, el("h3", {}, "Steering probe"),
      el("p", { class: "note" }, `${model} answers “${st.prompt}” about a plain white ` +
        `image, with this neuron clamped to α on every token of vision block ${st.layer} ` +
        `(${st.mode}):`),
      el("table", { class: "steer" }, el("tbody", {}, ...rows)));
  }

  function renderNeuron(id) {
    if (!(id >= 0 && id < N)) {
      app.replaceChildren(el("p", { class: "error" }, `no neuron ${id}: this SAE has ${N}`));
      return;
    }
    app.replaceChildren(el("p", {}, `Loading neuron ${id}…`));
    neuronRecord(id).then((rec) => {
      const stats = el("dl", { class: "stats" });
      colNames.forEach((name) => {
        const info = COLUMN_INFO[name] || [name, name, 3];
        stats.append(el("dt", { title: info[1] }, info[0]),
          el("dd", { "data-col": name }, fmt(name, cols[name][id])));
      });
      const images = el("div", { class: "images" });
      rec.top.forEach(([img, act], t) => {
        const src = imageURL(img);
        const wrap = el("div", { class: "wrap" }, src ? el("img", { src, alt: `image ${img}` })
          : el("span", { class: "error" }, "unreadable"));
        if (rec.heat && meta.heat_side) {
          const canvas = el("canvas", { class: "heatmap" });
          drawHeat(canvas, rec.heat[t]);
          wrap.append(canvas);
        }
        images.append(el("figure", { class: "top-image" }, wrap,
          el("figcaption", {}, act.toFixed(3))));
      });
      const silent = rec.heat && rec.heat.every((h) => h.every((q) => q === 0));
      const heatNote = rec.heat ? el("label", { class: "toggle" },
        el("input", { type: "checkbox", id: "show-heat", checked: "" }),
        ` patch heatmap (${meta.heat_source === "model" ? "recomputed with the model" :
          "stored tokens"})`, silent ? ": on these images the neuron fires on " +
          "no patch token (only on the CLS token)" : "") : "";
      const page = el("section", { id: "neuron", "data-neuron": id },
        el("h2", {}, `Neuron ${id}`, cols.label && cols.label[id] ? ` — ${cols.label[id]}` : ""),
        stats, el("h3", {}, `Top ${rec.top.length} images `, heatNote), images,
        el("div", { class: "panels" },
          el("div", {}, el("h3", {}, "Activation histogram"),
            histogram(rec.hist, meta.n_images - cols.n_active[id], cols.max_act[id] || 0)),
          neighbourList("Nearest by decoder cosine", rec.near_decoder, "cos"),
          neighbourList("Nearest by top-image Jaccard", rec.near_jaccard, "J")),
        steeringPanel(id, rec));
      page.querySelector("h2").append(" ", cardButton(id, rec, page));
      app.replaceChildren(page);
      const box = document.getElementById("show-heat");
      if (box) box.addEventListener("change", () => page.querySelectorAll("canvas.heatmap")
        .forEach((c) => { c.style.display = box.checked ? "" : "none"; }));
      window.scrollTo(0, 0);
    }).catch((err) => {
      app.replaceChildren(el("p", { class: "error" }, String(err.message || err)));
    });
  }

  function route() {
    const m = location.hash.match(/^#\/neuron\/(\d+)$/);
    if (m) renderNeuron(Number(m[1]));
    else renderIndex();
  }

  window.addEventListener("hashchange", route);
  route();
})();
