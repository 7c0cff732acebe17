/* probe_sae concept browser: a static page that works from file:// (no fetch, no network).
 * Data arrive through <script> tags that call probe.index(...) and probe.chunk(...).
 * Views: #/ (all concepts, sortable, filterable), #/c/ID (a concept), #/i/ID (an image). */
"use strict";
var probe = (function () {
  var ROOT = document.body.getAttribute("data-root") || "";
  var PAGE = 100;
  var idx = null, meta = null, order = null;
  var cache = {}, waiting = {};
  var list = {sort: "id", dir: 1, filter: "all", q: "", minFreq: "", minMax: "", page: 0};
  var timing = {start: performance.now()};

  // ------------------------------------------------------------------ data loading
  function pad(n) { return ("0000" + n).slice(-5); }
  function load(kind, n) {
    var key = kind + n;
    if (cache[key]) return Promise.resolve(cache[key]);
    if (waiting[key]) return waiting[key].promise;
    var entry = {};
    entry.promise = new Promise(function (resolve, reject) {
      entry.resolve = resolve;
      var s = document.createElement("script");
      s.src = "data/" + kind + pad(n) + ".js";
      s.onerror = function () { delete waiting[key]; reject(new Error("cannot load " + s.src)); };
      document.head.appendChild(s);
    });
    waiting[key] = entry;
    return entry.promise;
  }
  function chunk(kind, n, data) {
    var key = kind + n;
    cache[key] = data;
    if (waiting[key]) { waiting[key].resolve(data); delete waiting[key]; }
  }
  function concept(id) {
    return load("c", Math.floor(id / meta.chunk)).then(function (d) { return d.concepts[id - d.first]; });
  }
  function image(id) {
    return load("i", Math.floor(id / meta.chunk)).then(function (d) {
      for (var j = 0; j < d.images.length; j++) if (d.images[j].i === id) return d.images[j];
      return null;
    });
  }

  // ------------------------------------------------------------------ helpers
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function fmt(v) {
    if (v === 0) return "0";
    var a = Math.abs(v);
    return (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toPrecision(3);
  }
  function pct(v) { return v === 0 ? "0" : (100 * v < 0.01 ? (100 * v).toExponential(1) : (100 * v).toPrecision(3)) + " %"; }
  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function view(html) { document.getElementById("view").innerHTML = html; window.scrollTo(0, 0); }
  function status(text) { document.getElementById("status").textContent = text; }
  function ready(name) { document.body.setAttribute("data-ready", name); }
  function isDead(c) { return idx.cols.freq[c] === 0; }
  function isDense(c) { return idx.cols.freq[c] > meta.dense_threshold; }
  function labelOf(c) { return idx.labels ? idx.labels[c] || "" : ""; }

  // a colour map close to matplotlib's inferno; alpha grows with the value (as the report draws)
  var ANCHORS = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];
  var LUT = (function () {
    var out = new Uint8ClampedArray(256 * 4);
    for (var v = 0; v < 256; v++) {
      var t = v / 255 * (ANCHORS.length - 1), j = Math.min(Math.floor(t), ANCHORS.length - 2), f = t - j;
      for (var ch = 0; ch < 3; ch++) out[v * 4 + ch] = ANCHORS[j][ch] * (1 - f) + ANCHORS[j + 1][ch] * f;
      out[v * 4 + 3] = 255 * 0.85 * Math.sqrt(v / 255);
    }
    return out;
  })();

  // a thumbnail tile: the image from its sprite sheet, the (h, w) map drawn over it on a canvas
  function tile(img, map, size, caption, href, attrs) {
    var tw = meta.thumb[0], th = meta.thumb[1], scale = size / Math.max(tw, th);
    var local = img % meta.chunk, col = local % meta.sheet, row = Math.floor(local / meta.sheet);
    var sheet = ROOT + "thumbs/t" + pad(Math.floor(img / meta.chunk)) + ".jpg";
    var style = "--tile:" + size + "px;background-image:url('" + sheet + "');background-size:" +
      (meta.sheet * tw * scale) + "px auto;background-position:-" + (col * tw * scale) + "px -" + (row * th * scale) + "px";
    var canvas = map ? '<canvas width="' + meta.grid[1] + '" height="' + meta.grid[0] + '" data-map="' + map + '"></canvas>' : "";
    return '<a class="tile" href="' + href + '" ' + (attrs || "") + ' style="--tile:' + size + 'px"><div class="thumb" style="' + style + '">' +
      canvas + '</div><div class="caption" title="' + esc(caption) + '">' + esc(caption) + "</div></a>";
  }
  var maps = {};  // data-map key -> Uint8Array of h·w values
  function paint() {
    var all = document.querySelectorAll("canvas[data-map]");
    for (var i = 0; i < all.length; i++) {
      var cv = all[i], values = maps[cv.getAttribute("data-map")];
      if (!values) continue;
      var ctx = cv.getContext("2d"), im = ctx.createImageData(cv.width, cv.height);
      for (var p = 0; p < values.length; p++) for (var ch = 0; ch < 4; ch++) im.data[p * 4 + ch] = LUT[values[p] * 4 + ch];
      ctx.putImageData(im, 0, 0);
    }
  }

  // ------------------------------------------------------------------ the list of concepts
  var COLUMNS = [
    ["freq", "frequency", pct, "fraction of all tokens it fires on"],
    ["img_freq", "images", pct, "fraction of images it fires on (some patch)"],
    ["max", "max", fmt, "highest activation on any token"],
    ["mean", "mean", fmt, "mean activation over the tokens it fires on"],
    ["cls", "CLS", pct, "fraction of CLS tokens it fires on"],
    ["register", "registers", pct, "fraction of register tokens it fires on"],
    ["patch", "patches", pct, "fraction of patch tokens it fires on"]
  ];
  function columns() { return COLUMNS.filter(function (c) { return idx.cols[c[0]]; }); }
  function selected() {
    var n = meta.n_concepts, out = [], q = list.q.trim().toLowerCase();
    var asId = /^\d+$/.test(q) ? parseInt(q, 10) : null;
    var minF = list.minFreq === "" ? null : parseFloat(list.minFreq) / 100, minM = list.minMax === "" ? null : parseFloat(list.minMax);
    for (var c = 0; c < n; c++) {
      if (list.filter === "dead" && !isDead(c)) continue;
      if (list.filter === "alive" && isDead(c)) continue;
      if (list.filter === "dense" && !isDense(c)) continue;
      if (minF !== null && !(idx.cols.freq[c] >= minF)) continue;
      if (minM !== null && !(idx.cols.max[c] >= minM)) continue;
      if (q) {
        if (asId !== null) { if (c !== asId) continue; }
        else if (labelOf(c).toLowerCase().indexOf(q) < 0) continue;
      }
      out.push(c);
    }
    if (list.sort === "id") { if (list.dir < 0) out.reverse(); }
    else {
      var key = list.sort === "label" ? null : idx.cols[list.sort], dir = list.dir;
      out.sort(key ? function (a, b) { return dir * (key[a] - key[b]) || a - b; }
        : function (a, b) { return dir * labelOf(a).localeCompare(labelOf(b)) || a - b; });
    }
    return out;
  }
  function showList() {
    var head = '<th data-sort="id">concept</th>' + (idx.labels ? '<th class="label" data-sort="label">labels</th>' : "") +
      columns().map(function (c) { return '<th data-sort="' + c[0] + '" title="' + c[3] + '">' + c[1] + "</th>"; }).join("");
    var dead = 0, dense = 0;
    for (var c = 0; c < meta.n_concepts; c++) { if (isDead(c)) dead++; else if (isDense(c)) dense++; }
    view('<h1>' + meta.n_concepts + " concepts</h1>" +
      '<p class="note">' + esc(meta.family) + " SAE on " + esc(meta.model) + " · " + esc(meta.layer) + " · " + meta.n_images + " images, " +
      meta.n_tokens + " tokens · " + dead + " dead (never fire on these images), " + dense + " dense (fire on more than " + pct(meta.dense_threshold) + " of tokens). " +
      (meta.labels_note ? esc(meta.labels_note) : idx.labels ? "Labels: the words whose text embedding best matches the image embeddings of the concept's top images." : "") + "</p>" +
      '<div class="controls"><input type="text" id="search" placeholder="concept id' + (idx.labels ? " or label text" : "") + '" value="' + esc(list.q) + '">' +
      '<label>show <select id="filter">' + ["all", "alive", "dead", "dense"].map(function (f) {
        return "<option" + (f === list.filter ? " selected" : "") + ">" + f + "</option>"; }).join("") + "</select></label>" +
      '<label>frequency ≥ <input type="number" id="minfreq" step="any" value="' + esc(list.minFreq) + '"> %</label>' +
      '<label>max ≥ <input type="number" id="minmax" step="any" value="' + esc(list.minMax) + '"></label>' +
      '<span class="pager"><button id="prev">‹</button><span id="range"></span><button id="next">›</button></span></div>' +
      '<table id="concepts"><thead><tr>' + head + "</tr></thead><tbody></tbody></table>");
    wireList();
    rows();
  }
  function rows() {
    order = selected();
    var pages = Math.max(1, Math.ceil(order.length / PAGE));
    list.page = Math.min(list.page, pages - 1);
    var out = [], from = list.page * PAGE, to = Math.min(order.length, from + PAGE);
    for (var r = from; r < to; r++) {
      var c = order[r];
      var badge = isDead(c) ? '<span class="badge dead">dead</span>' : isDense(c) ? '<span class="badge dense">dense</span>' : "";
      out.push('<tr class="concept' + (isDead(c) ? " dead" : "") + '" data-concept="' + c + '"><td><a href="#/c/' + c + '">' + c + "</a>" + badge + "</td>" +
        (idx.labels ? '<td class="label">' + esc(labelOf(c)) + "</td>" : "") +
        columns().map(function (col) { return "<td>" + col[2](idx.cols[col[0]][c]) + "</td>"; }).join("") + "</tr>");
    }
    document.querySelector("#concepts tbody").innerHTML = out.join("");
    document.getElementById("range").textContent = (order.length ? (from + 1) + "–" + to : "0") + " of " + order.length;
    var ths = document.querySelectorAll("th[data-sort]");
    for (var i = 0; i < ths.length; i++) {
      var key = ths[i].getAttribute("data-sort");
      ths[i].classList.toggle("sorted-asc", key === list.sort && list.dir > 0);
      ths[i].classList.toggle("sorted-desc", key === list.sort && list.dir < 0);
    }
    if (!timing.firstView) { timing.firstView = performance.now(); window.probeTiming = timing; }
    ready("list");
  }
  function wireList() {
    var ths = document.querySelectorAll("th[data-sort]");
    for (var i = 0; i < ths.length; i++) ths[i].onclick = function () {
      var key = this.getAttribute("data-sort");
      if (list.sort === key) list.dir = -list.dir; else { list.sort = key; list.dir = key === "id" || key === "label" ? 1 : -1; }
      list.page = 0; again();
    };
    document.querySelector("#concepts tbody").onclick = function (e) {
      var tr = e.target.closest("tr[data-concept]");
      if (tr && e.target.tagName !== "A") location.hash = "#/c/" + tr.getAttribute("data-concept");
    };
    var typing = null;
    function again() { document.body.removeAttribute("data-ready"); setTimeout(rows, 0); }
    document.getElementById("search").oninput = function () {
      var v = this.value; clearTimeout(typing);
      typing = setTimeout(function () { list.q = v; list.page = 0; again(); }, 150);
    };
    document.getElementById("filter").onchange = function () { list.filter = this.value; list.page = 0; again(); };
    document.getElementById("minfreq").onchange = function () { list.minFreq = this.value; list.page = 0; again(); };
    document.getElementById("minmax").onchange = function () { list.minMax = this.value; list.page = 0; again(); };
    document.getElementById("prev").onclick = function () { if (list.page > 0) { list.page--; again(); } };
    document.getElementById("next").onclick = function () {
      if ((list.page + 1) * PAGE < order.length) { list.page++; again(); }
    };
  }

  // ------------------------------------------------------------------ one concept
  function histogram(h) {
    var lo = meta.hist_log10[0], hi = meta.hist_log10[1], nb = meta.hist_log10[2], step = (hi - lo) / nb;
    var first = h[0], counts = h.slice(1);
    if (!counts.length) return '<p class="note">Never fired.</p>';
    var W = 360, H = 120, top = Math.max.apply(null, counts), bw = W / counts.length;
    var bars = counts.map(function (n, j) {
      var bh = n ? Math.max(1, Math.log1p(n) / Math.log1p(top) * (H - 20)) : 0;
      return '<rect x="' + (j * bw + 0.5) + '" y="' + (H - 14 - bh) + '" width="' + Math.max(1, bw - 1) + '" height="' + bh +
        '"><title>' + fmt(Math.pow(10, lo + (first + j) * step)) + "–" + fmt(Math.pow(10, lo + (first + j + 1) * step)) + ": " + n + " tokens</title></rect>";
    }).join("");
    return '<svg class="hist" width="' + W + '" height="' + H + '">' + bars + '<text x="0" y="' + (H - 2) + '">' + fmt(Math.pow(10, lo + first * step)) +
      '</text><text x="' + W + '" y="' + (H - 2) + '" text-anchor="end">' + fmt(Math.pow(10, lo + (first + counts.length) * step)) +
      '</text></svg><p class="note">Non-zero activations over all tokens, log-spaced bins, log-scaled counts.</p>';
  }
  function tokenName(t) {
    var n = meta.token_positions.n_prefix;
    if (t < n) return t === 0 && meta.kinds.indexOf("cls") >= 0 ? "CLS token" : "register token " + t;
    var p = t - n; return "patch (" + Math.floor(p / meta.grid[1]) + ", " + (p % meta.grid[1]) + ")";
  }
  function showConcept(id) {
    if (!(id >= 0 && id < meta.n_concepts)) { view('<p>No concept ' + esc(id) + ".</p>"); return; }
    status("loading concept " + id + "…");
    concept(id).then(function (d) {
      status("");
      var cols = idx.cols, P = meta.grid[0] * meta.grid[1], all = bytes(d.maps), tiles = [];
      for (var j = 0; j < d.top.length; j++) {
        if (!(d.score[j] > 0)) continue;  // kept as the library keeps them, but it does not fire there
        var key = "c" + id + "_" + j; maps[key] = all.subarray(j * P, (j + 1) * P);
        tiles.push(tile(d.top[j], key, 144, "#" + d.top[j] + " · " + fmt(d.score[j]), "#/i/" + d.top[j], 'data-image="' + d.top[j] + '"'));
      }
      var stats = [["frequency (all tokens)", pct(cols.freq[id])], ["images it fires on", pct(cols.img_freq[id])],
        ["max activation", fmt(cols.max[id])], ["mean activation (when firing)", fmt(cols.mean[id])]];
      COLUMNS.slice(4).forEach(function (c) { if (cols[c[0]]) stats.push([c[1] + " tokens fired on", pct(cols[c[0]][id])]); });
      var nn = d.nn.map(function (c, j) { return '<a href="#/c/' + c + '" title="' + esc(labelOf(c)) + '">' + c + " (" + d.nncos[j].toFixed(2) + ")</a>"; }).join("");
      var labels = d.labels ? '<p class="labels">' + d.labels.map(function (l) { return "<span>" + esc(l[0]) + " " + l[1].toFixed(3) + "</span>"; }).join("") + "</p>" : "";
      var arch = "";
      if (d.arch) {
        var at = d.arch.map(function (a, j) {
          var key = "a" + id + "_" + j, t = a[3] - meta.token_positions.n_prefix;
          if (t >= 0) { var m = new Uint8Array(P); m[t] = 255; maps[key] = m; } else key = null;
          return tile(a[2], key, 112, "candidate " + a[0] + " · w " + a[1].toFixed(3), "#/i/" + a[2], 'data-candidate="' + a[0] + '"') ;
        });
        arch = "<h2>Archetypal candidates</h2><p class=\"note\">The atom is a convex combination of candidate points (k-means centroids of activations); its heaviest candidates (weight w), each shown on the image holding the token nearest to it (" +
          d.arch.map(function (a) { return "candidate " + a[0] + ": " + tokenName(a[3]) + ", distance " + fmt(a[4]); }).join("; ") + ").</p><div class=\"tiles\">" + at.join("") + "</div>";
      }
      view('<h1>Concept ' + id + (isDead(id) ? ' <span class="badge dead">dead</span>' : isDense(id) ? ' <span class="badge dense">dense</span>' : "") +
        ' <small><a href="#/c/' + Math.max(0, id - 1) + '">‹</a> <a href="#/c/' + Math.min(meta.n_concepts - 1, id + 1) + '">›</a></small></h1>' + labels +
        '<div class="row"><table class="stats">' + stats.map(function (s) { return "<tr><th>" + s[0] + "</th><td>" + s[1] + "</td></tr>"; }).join("") +
        "</table><div>" + histogram(d.hist) + "</div></div>" +
        "<h2>Top images</h2><p class=\"note\">Images with the highest maximum patch activation (caption: image · that activation), the concept's activation over the patch grid drawn over each.</p>" +
        '<div class="tiles" id="top-images">' + (tiles.join("") || '<p class="note">It fires on no image.</p>') + "</div>" +
        '<h2>Nearest concepts</h2><p class="nn">' + nn + '</p><p class="note">By cosine between decoder atoms.</p>' + arch);
      paint();
      ready("concept");
    }, function (e) { view("<p>" + esc(e.message) + "</p>"); });
  }

  // ------------------------------------------------------------------ one image
  function showImage(id) {
    status("loading image " + id + "…");
    image(id).then(function (d) {
      status("");
      if (!d) { view("<p>No data for image " + esc(id) + ".</p>"); return; }
      var P = meta.grid[0] * meta.grid[1], all = bytes(d.m), tiles = [];
      for (var j = 0; j < d.c.length; j++) {
        var key = "i" + id + "_" + j, c = d.c[j]; maps[key] = all.subarray(j * P, (j + 1) * P);
        var lab = labelOf(c);
        tiles.push(tile(id, key, 144, "concept " + c + " · " + fmt(d.s[j]) + (lab ? " · " + lab : ""), "#/c/" + c, 'data-concept="' + c + '"'));
      }
      view("<h1>Image " + id + (d.name ? " <small>" + esc(d.name) + "</small>" : "") +
        ' <small><a href="#/i/' + Math.max(0, id - 1) + '">‹</a> <a href="#/i/' + Math.min(meta.n_images - 1, id + 1) + '">›</a></small></h1>' +
        '<div class="row"><div>' + tile(id, null, 256, "", "#/i/" + id, "") + "</div><div><h2>Top concepts</h2>" +
        "<p class=\"note\">The concepts with the highest maximum patch activation on this image (caption: concept · that activation), each drawn over the image.</p>" +
        '<div class="tiles" id="image-concepts">' + (tiles.join("") || '<p class="note">No concept fires.</p>') + "</div></div></div>");
      paint();
      ready("image");
    }, function (e) { view("<p>" + esc(e.message) + "</p>"); });
  }

  // ------------------------------------------------------------------ routing
  function route() {
    if (!idx) return;
    var h = location.hash.replace(/^#\/?/, "").split("/");
    document.body.removeAttribute("data-ready");
    if (h[0] === "c" && h[1] !== undefined) showConcept(parseInt(h[1], 10));
    else if (h[0] === "i" && h[1] !== undefined) showImage(parseInt(h[1], 10));
    else showList();
  }
  function index(data) {
    idx = data; meta = data.meta;
    timing.indexLoaded = performance.now();
    route();
  }
  window.addEventListener("hashchange", route);
  return {index: index, chunk: chunk, timing: timing, state: list};
})();
