"""Inline CSS and JavaScript of the HTML report (no external resource of any kind).

The script draws the interactive gradient-flow chart: one statistic per layer (log scale,
input side left) at the step chosen with a slider, with hover tooltips. It reads its data from
a ``<script type="application/json">`` block, creates SVG elements inside an ``<svg>`` that is
already in the page (so it needs no namespace URL), and puts every name into the page with
``textContent``, never as markup.
"""

CSS = """
:root { --fg:#1d232a; --muted:#5b6570; --line:#d8dde3; --bg:#ffffff; --panel:#f6f8fa;
  --ok:#1a7f37; --warn:#9a6700; --bad:#cf222e; --info:#0969da; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); margin: 0; padding: 24px 32px 48px; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; }
h1 { font-size: 1.5rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 18px 0 6px; }
.sub { color: var(--muted); font-size: .9rem; }
.verdict { display: inline-block; font-weight: 700; padding: 6px 14px; border-radius: 6px;
  color: #fff; font-size: 1.1rem; letter-spacing: .04em; margin: 12px 0 4px; }
.v-healthy { background: var(--ok); } .v-problem { background: var(--bad); }
.v-unknown { background: var(--warn); }
.finding { border: 1px solid var(--line); border-left: 5px solid var(--info); border-radius: 6px;
  padding: 10px 14px; margin: 10px 0; background: var(--panel); }
.finding.sev-warning { border-left-color: var(--warn); }
.finding.sev-error { border-left-color: var(--bad); }
.sev { font-size: .75rem; font-weight: 700; text-transform: uppercase; padding: 1px 6px;
  border-radius: 4px; color: #fff; background: var(--info); margin-right: 6px; }
.sev-warning .sev { background: var(--warn); } .sev-error .sev { background: var(--bad); }
.kind { font-weight: 700; }
.msg { margin: 6px 0; }
.meta-line { color: var(--muted); font-size: .88rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: .85rem; }
code.name { background: #eaeef2; padding: 0 4px; border-radius: 3px; }
pre { background: var(--panel); padding: 10px; overflow: auto; border-radius: 6px;
  max-height: 420px; }
table { border-collapse: collapse; font-size: .85rem; margin: 6px 0; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left;
  vertical-align: top; }
th { background: var(--panel); }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums;
  font-family: ui-monospace, monospace; }
td.bad { color: var(--bad); font-weight: 700; }
.scroll { overflow-x: auto; max-width: 100%;
  /* a shadow at an edge where the table goes on (scrolled out of view), none where it ends */
  background:
    linear-gradient(to right, var(--bg) 30%, rgba(255,255,255,0)) left / 40px 100% no-repeat local,
    linear-gradient(to left, var(--bg) 30%, rgba(255,255,255,0)) right / 40px 100% no-repeat local,
    radial-gradient(farthest-side at 0 50%, rgba(0,0,0,.25), rgba(0,0,0,0)) left / 14px 100%
      no-repeat scroll,
    radial-gradient(farthest-side at 100% 50%, rgba(0,0,0,.25), rgba(0,0,0,0)) right / 14px 100%
      no-repeat scroll; }
td.ok, .ok { color: var(--ok); font-weight: 700; }
td.bad, .bad { color: var(--bad); font-weight: 700; }
.outcome { border: 1px solid var(--line); border-radius: 8px; padding: 4px 18px 12px;
  margin: 16px 0 8px; background: var(--panel); }
.outcome h2 { margin-top: 10px; }
.outcome .q { margin: 6px 0 14px; }
.outcome .q h3 { margin: 10px 0 4px; }
.outcome .verdict { margin: 4px 0 0; }
.outcome p, .outcome li { overflow-wrap: anywhere; }
#gw-answer { font-size: 1.05rem; }
table.compare { background: var(--bg); }
table.compare td.num { font-family: inherit; white-space: normal; text-align: left; }
table.compare th { overflow-wrap: anywhere; }
table.kv th { font-weight: 600; white-space: normal; overflow-wrap: anywhere; }
table.kv td { overflow-wrap: anywhere; }
table.kv table.kv { margin: 0; }
.meta-grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr));
  gap: 4px 24px; align-items: start; }
.meta-group { min-width: 0; }
.meta-group h3 { margin-top: 10px; }
.meta-group > table.kv { width: 100%; table-layout: fixed; }
table.session th[colspan] { background: var(--bg); font-weight: 700; }
.meta-group > table.kv > tbody > tr > th { width: 42%; }
details.more { display: inline; }
details.more[open] { display: block; }
details.evidence table { background: var(--bg); }
#gw-layers th:nth-child(2), #gw-layers td:nth-child(2) { position: sticky; left: 0; }
#gw-layers th:nth-child(2) { background: var(--panel); }
#gw-layers td:nth-child(2) { background: var(--bg); }
.scroll-hint { display: none; }
figure { margin: 18px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figure img.fig-narrow { display: none; }
.msg, .meta-line, .help, li { overflow-wrap: anywhere; }
@media (max-width: 720px) {
  body { padding: 12px 10px 32px; }
  figure img.fig-wide { display: none; }
  figure img.fig-narrow { display: block; width: 100%; }
  h1 { font-size: 1.25rem; }
  .outcome { padding: 2px 10px 8px; }
  .meta-grid { grid-template-columns: minmax(0, 1fr); }
  .scroll-hint { display: block; }
  table.kv th { min-width: 7em; }
}
figcaption { font-size: .9rem; margin-top: 4px; }
details > summary { cursor: pointer; color: var(--info); }
.help { color: var(--muted); font-size: .88rem; max-width: 900px; }
#gw-flow { position: relative; border: 1px solid var(--line); border-radius: 6px;
  padding: 10px; }
#gw-flow .controls { display: flex; gap: 14px; align-items: center; flex-wrap: wrap;
  font-size: .9rem; }
#gw-flow input[type=range] { width: 320px; max-width: 100%; }
#gw-flow-svg { width: 100%; height: auto; display: block; }
#gw-flow-svg .axis { stroke: #57606a; stroke-width: 1; }
#gw-flow-svg .grid { stroke: #d0d7de; stroke-width: 1; stroke-dasharray: 2 3; }
#gw-flow-svg .lbl { font-size: 11px; fill: #57606a; }
#gw-flow-svg .cur { fill: none; stroke: #0969da; stroke-width: 2; }
#gw-flow-svg .ref { fill: none; stroke: #8c959f; stroke-width: 1.2; stroke-dasharray: 5 4; }
#gw-flow-svg .gw-pt { fill: #0969da; cursor: pointer; }
#gw-flow-svg .gw-pt:hover { fill: #cf222e; }
#gw-flow-svg .gw-bad { fill: #cf222e; }
#gw-tip { position: absolute; pointer-events: none; background: #1d232a; color: #fff;
  padding: 4px 8px; border-radius: 4px; font-size: .8rem; display: none; white-space: pre; }
footer { margin-top: 40px; color: var(--muted); font-size: .8rem; }
"""

JS = r"""
(function () {
  "use strict";
  var holder = document.getElementById("gw-flow-data");
  var root = document.getElementById("gw-flow");
  if (!holder || !root) { return; }
  var data = JSON.parse(holder.textContent);
  var svg = document.getElementById("gw-flow-svg");
  var NS = svg.namespaceURI;
  var tip = document.getElementById("gw-tip");
  var slider = document.getElementById("gw-step");
  var stepLabel = document.getElementById("gw-step-label");
  var statSel = document.getElementById("gw-stat");
  // The chart is drawn at the size it is shown (re-drawn on resize), so its labels keep
  // their size on a phone instead of shrinking with a fixed viewBox.
  var W = 1000, H = 400, L = 70, R = 20, T = 16, B = 96;
  function fit() {
    var w = Math.round(svg.getBoundingClientRect().width) || 1000;
    W = Math.max(280, w);
    H = W < 600 ? 330 : 400;
    L = W < 600 ? 52 : 70;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  }
  var layers = data.layers;
  var n = layers.length;

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) {
      e.setAttribute(k, attrs[k]); } }
    (parent || svg).appendChild(e);
    return e;
  }
  function shorten(name, width) {  // keep both ends: where the layer is, and which one
    if (name.length <= width) { return name; }
    var head = Math.floor((width - 1) / 2);
    return name.slice(0, head) + "\u2026" + name.slice(name.length - (width - 1 - head));
  }
  function ok(v) { return typeof v === "number" && isFinite(v) && v > 0; }
  function fmt(v) {
    if (typeof v === "string") { return v; }
    if (v === null) { return "not recorded"; }
    return Number(v).toPrecision(3);
  }
  var P = 24;  // inner padding so the end points stay clear of the axes
  function x(i) {
    return n < 2 ? (L + W - R) / 2 : L + P + i * (W - L - R - 2 * P) / (n - 1);
  }

  function draw() {
    fit();
    var s = data.stats[statSel.value];
    var k = Math.min(Number(slider.value), s.steps.length - 1);
    var row = s.values[k], first = s.values[0];
    stepLabel.textContent = "step " + s.steps[k] + " (" + (k + 1) + " of " + s.steps.length + ")";
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var lo = Infinity, hi = -Infinity;
    s.values.forEach(function (r) { r.forEach(function (v) {
      if (ok(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }); });
    if (!isFinite(lo)) { lo = 1e-3; hi = 1; }
    var a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    if (b <= a) { b = a + 1; }
    function y(v) { return T + (H - T - B) * (1 - (Math.log10(v) - a) / (b - a)); }
    var step = Math.max(1, Math.ceil((b - a) / 8));
    for (var d = a; d <= b; d += step) {
      el("line", {x1: L, x2: W - R, y1: y(Math.pow(10, d)), y2: y(Math.pow(10, d)),
        "class": "grid"});
      el("text", {x: L - 8, y: y(Math.pow(10, d)) + 4, "text-anchor": "end", "class": "lbl"})
        .textContent = "1e" + d;
    }
    el("line", {x1: L, x2: L, y1: T, y2: H - B, "class": "axis"});
    el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, "class": "axis"});
    var every = Math.max(1, Math.ceil(n / Math.max(6, Math.floor((W - L - R) / 24))));
    for (var i = 0; i < n; i += every) {
      var t = el("text", {x: x(i), y: H - B + 14, "text-anchor": "end", "class": "lbl",
        transform: "rotate(-45 " + x(i) + " " + (H - B + 14) + ")"});
      t.textContent = shorten(layers[i], 22);
    }
    el("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", "class": "lbl"})
      .textContent = "layer (input side \u2192 output side)";
    function path(r) {
      var d = "", pen = false;
      r.forEach(function (v, i) {
        if (ok(v)) { d += (pen ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1) + " ";
          pen = true; } else { pen = false; }
      });
      return d;
    }
    if (k > 0) { el("path", {d: path(first), "class": "ref"}); }
    el("path", {d: path(row), "class": "cur"});
    row.forEach(function (v, i) {
      var c = ok(v) ? el("circle", {cx: x(i), cy: y(v), r: 4.5, "class": "gw-pt"})
        : (v === null ? null : el("circle", {cx: x(i), cy: T + 4, r: 5, "class": "gw-bad"}));
      if (!c) { return; }
      c.addEventListener("mouseenter", function (ev) {
        tip.textContent = layers[i] + "\n" + statSel.value + " = " + fmt(v) + "\nstep " +
          s.steps[k] + (k > 0 ? "  (step " + s.steps[0] + ": " + fmt(first[i]) + ")" : "");
        tip.style.display = "block";
        var box = root.getBoundingClientRect();
        tip.style.left = (ev.clientX - box.left + 12) + "px";
        tip.style.top = (ev.clientY - box.top + 12) + "px";
      });
      c.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    });
  }

  function reset() {
    var s = data.stats[statSel.value];
    slider.max = String(s.steps.length - 1);
    if (Number(slider.value) > s.steps.length - 1) { slider.value = slider.max; }
    draw();
  }
  fit();
  slider.addEventListener("input", draw);
  window.addEventListener("resize", draw);
  statSel.addEventListener("change", reset);
  slider.max = String(data.stats[statSel.value].steps.length - 1);
  slider.value = slider.max;
  reset();
  root.setAttribute("data-ready", "1");
})();
"""
