"""The live training page a training's -mjpeg_port serves at / (pydarknet.watch.TrainingWatch): plain HTML
and JavaScript, nothing from elsewhere (the machines that train often have no internet). It asks the server
for /info.json (again at each poll until the training has begun) and /log.json?since=N every two seconds,
draws the loss and average loss, the learning rate and the evaluation metric (mAP or top-1) on canvases,
shows the latest figures, the images per second and the time left, and reloads the latest sample of
augmented training images (/sample.jpg) and the chart."""

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pydarknet training</title>
<style>
body { font-family: sans-serif; margin: 16px; background: #fafafa; color: #222; }
h1 { font-size: 20px; margin: 0 0 8px 0; }
#facts { display: flex; flex-wrap: wrap; gap: 8px 20px; margin: 8px 0 12px 0; }
#facts div { background: #fff; border: 1px solid #ddd; padding: 6px 10px; border-radius: 4px; }
#facts b { display: block; font-size: 18px; }
.row { display: flex; flex-wrap: wrap; gap: 12px; }
canvas { background: #fff; border: 1px solid #ddd; }
img { border: 1px solid #ddd; max-width: 100%; }
.caption { font-size: 13px; color: #555; margin: 2px 0 10px 0; }
</style></head>
<body>
<h1 id="title">pydarknet training</h1>
<div id="status" class="caption">connecting...</div>
<div id="facts">
  <div>iteration<b id="f-iteration">-</b></div><div>loss<b id="f-loss">-</b></div>
  <div>avg loss<b id="f-avg">-</b></div><div>learning rate<b id="f-rate">-</b></div>
  <div><span id="f-metric-name">mAP</span><b id="f-metric">-</b></div><div>images/s<b id="f-ips">-</b></div>
  <div>time left<b id="f-left">-</b></div>
</div>
<div class="row">
  <div><canvas id="c-loss" width="640" height="300"></canvas><div class="caption">loss (light) and average loss</div></div>
  <div><canvas id="c-rate" width="360" height="300"></canvas><div class="caption">learning rate</div></div>
  <div><canvas id="c-metric" width="360" height="300"></canvas><div class="caption" id="metric-caption">mAP (%)</div></div>
</div>
<div class="caption">latest sample of augmented training images, with their boxes</div>
<img id="sample" alt="no sample yet" src="sample.jpg">
<div class="caption">the chart (as chart_*.png)</div>
<img id="chart" alt="no chart yet" src="chart.jpg">
<script>
"use strict";
var records = [], last = 0, info = {};
function fmt(v, digits) { return (typeof v === "number" && isFinite(v)) ? v.toFixed(digits) : "-"; }
function plot(id, series, opts) {
  var c = document.getElementById(id), g = c.getContext("2d"), W = c.width, H = c.height, L = 56, B = 28;
  g.clearRect(0, 0, W, H);
  var xs = [], ys = [];
  series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); }); });
  var xmax = Math.max(opts.xmax || 0, xs.length ? Math.max.apply(null, xs) : 1, 1);
  var ymin = opts.ymin !== undefined ? opts.ymin : (ys.length ? Math.min.apply(null, ys) : 0);
  var ymax = opts.ymax !== undefined ? opts.ymax : (ys.length ? Math.max.apply(null, ys) : 1);
  if (opts.cut && ys.length) {   // the 95th percentile, as the chart cuts its loss axis
    var sorted = ys.slice().sort(function (a, b) { return a - b; });
    ymax = Math.min(ymax, 1.1 * sorted[Math.floor(0.95 * (sorted.length - 1))]);
  }
  if (!(ymax > ymin)) { ymax = ymin + 1; }
  function X(x) { return L + (W - L - 8) * x / xmax; }
  function Y(y) { return H - B - (H - B - 8) * (Math.min(y, ymax) - ymin) / (ymax - ymin); }
  g.strokeStyle = "#ccc"; g.fillStyle = "#555"; g.font = "11px sans-serif"; g.lineWidth = 1;
  for (var k = 0; k <= 4; k++) {
    var yv = ymin + (ymax - ymin) * k / 4, yy = Y(yv);
    g.beginPath(); g.moveTo(L, yy); g.lineTo(W - 8, yy); g.stroke();
    g.fillText(Math.abs(yv) < 0.01 && yv !== 0 ? yv.toExponential(1) : yv.toFixed(yv < 10 ? 3 : 1), 2, yy + 4);
    var xv = xmax * k / 4;
    g.fillText(Math.round(xv).toString(), X(xv) - 10, H - 10);
  }
  series.forEach(function (s) {
    g.strokeStyle = s.color; g.fillStyle = s.color; g.lineWidth = s.width || 1.5;
    if (s.dots) {
      s.points.forEach(function (p) { g.beginPath(); g.arc(X(p[0]), Y(p[1]), 3, 0, 7); g.fill(); });
    }
    g.beginPath();
    s.points.forEach(function (p, i) { if (i) { g.lineTo(X(p[0]), Y(p[1])); } else { g.moveTo(X(p[0]), Y(p[1])); } });
    g.stroke();
  });
}
function draw() {
  var metric = info.metric || "mAP";
  var loss = [], avg = [], rate = [], met = [];
  records.forEach(function (r) {
    if (typeof r.loss === "number") { loss.push([r.iteration, r.loss]); }
    if (typeof r.avg_loss === "number") { avg.push([r.iteration, r.avg_loss]); }
    if (typeof r.learning_rate === "number") { rate.push([r.iteration, r.learning_rate]); }
    if (typeof r[metric] === "number") { met.push([r.iteration, 100 * r[metric]]); }
  });
  plot("c-loss", [{points: loss, color: "#9ab8e0", width: 1}, {points: avg, color: "#1f4fa0", width: 2}],
       {xmax: info.max_batches, ymin: 0, cut: true});
  plot("c-rate", [{points: rate, color: "#2a8a3a"}], {xmax: info.max_batches, ymin: 0});
  plot("c-metric", [{points: met, color: "#c02020", dots: true}], {xmax: info.max_batches, ymin: 0, ymax: 100});
  var r = records.length ? records[records.length - 1] : {};
  document.getElementById("f-iteration").textContent =
      records.length ? r.iteration + (info.max_batches ? " / " + info.max_batches : "") : "-";
  document.getElementById("f-loss").textContent = fmt(r.loss, 4);
  document.getElementById("f-avg").textContent = fmt(r.avg_loss, 4);
  document.getElementById("f-rate").textContent = typeof r.learning_rate === "number" ? r.learning_rate.toPrecision(3) : "-";
  document.getElementById("f-metric-name").textContent = metric;
  document.getElementById("metric-caption").textContent = metric + " (%)";
  document.getElementById("f-metric").textContent = met.length ? fmt(met[met.length - 1][1], 2) + " %" : "-";
  document.getElementById("f-ips").textContent = fmt(r.images_per_s, 1);
  var left = r.hours_left;
  document.getElementById("f-left").textContent = typeof left === "number" ?
      (left >= 1 ? left.toFixed(2) + " h" : (60 * left).toFixed(1) + " min") : "-";
}
function poll() {
  if (!info.max_batches) { askInfo(); }   /* empty until the training has loaded its network and data */
  fetch("log.json?since=" + last, {cache: "no-store"}).then(function (res) { return res.json(); }).then(function (got) {
    got.forEach(function (r) { records.push(r); last = Math.max(last, r.iteration); });
    document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString() +
        " (" + records.length + " iterations in the log)";
    draw();
    setTimeout(poll, got.length >= 5000 ? 10 : 2000);
  }).catch(function () {
    document.getElementById("status").textContent = "no answer from the training (stopped?); retrying";
    setTimeout(poll, 5000);
  });
}
function reload() {
  var t = Date.now();
  document.getElementById("sample").src = "sample.jpg?t=" + t;
  document.getElementById("chart").src = "chart.jpg?t=" + t;
  setTimeout(reload, 5000);
}
function askInfo() {
  return fetch("info.json", {cache: "no-store"}).then(function (res) { return res.json(); }).then(function (got) {
    info = got || {};
    document.getElementById("title").textContent = "pydarknet training: " + (info.title || "");
  }).catch(function () {});
}
askInfo().then(function () { poll(); setTimeout(reload, 5000); });
</script>
</body></html>
"""
