// kitium-queue dashboard: refreshes counts and the throughput chart from /api/stats.
// Loaded from the dashboard's own origin (the CSP allows no inline script); writes only
// text content and SVG attributes, never HTML.
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-stats-url");
  var every = parseInt(body.getAttribute("data-refresh") || "0", 10);
  if (!url || !(every > 0)) { return; }
  var KEEP = 30;
  var series = {};

  function cells(queue, key) {
    var out = [];
    var all = document.querySelectorAll("[data-q][data-k]");
    for (var i = 0; i < all.length; i++) {
      if (all[i].getAttribute("data-q") === queue && all[i].getAttribute("data-k") === key) {
        out.push(all[i]);
      }
    }
    return out;
  }

  function points(values, top) {
    var w = 320, h = 48, n = values.length, pts = [];
    for (var i = 0; i < n; i++) {
      var x = w - (n - 1 - i) * (w / (KEEP - 1));
      var y = h - 2 - (top > 0 ? (values[i] / top) * (h - 6) : 0);
      pts.push(x.toFixed(1) + "," + y.toFixed(1));
    }
    return pts.join(" ");
  }

  function draw(queue) {
    var s = series[queue];
    var sparks = document.querySelectorAll("svg.spark");
    var top = 0;
    for (var i = 0; i < s.done.length; i++) { top = Math.max(top, s.done[i], s.fail[i]); }
    for (var j = 0; j < sparks.length; j++) {
      if (sparks[j].getAttribute("data-q") !== queue) { continue; }
      sparks[j].querySelector("polyline.done").setAttribute("points", points(s.done, top));
      var failed = s.fail.some(function (v) { return v > 0; });
      sparks[j].querySelector("polyline.fail").setAttribute("points", failed ? points(s.fail, top) : "");
    }
  }

  function update(data) {
    if (!data || !data.queues) { return; }
    data.queues.forEach(function (q) {
      if (!q.stats) { return; }
      Object.keys(q.stats).forEach(function (k) {
        cells(q.name, k).forEach(function (el) {
          el.textContent = k === "latency_ms" ? q.stats[k] + " ms" : String(q.stats[k]);
        });
      });
      cells(q.name, "workers").forEach(function (el) { el.textContent = String(q.workers); });
      var s = series[q.name] || (series[q.name] = { done: [], fail: [] });
      s.done.push(q.rate ? q.rate.completed : 0);
      s.fail.push(q.rate ? q.rate.failed : 0);
      if (s.done.length > KEEP) { s.done.shift(); s.fail.shift(); }
      cells(q.name, "rate").forEach(function (el) { el.textContent = q.rate ? String(q.rate.completed) : "-"; });
      draw(q.name);
    });
    body.setAttribute("data-refreshed", String(Date.now()));
  }

  function tick() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(update)
      .catch(function () { /* a missed refresh: the next one tries again */ })
      .then(function () { window.setTimeout(tick, every); });
  }
  tick();
}());
