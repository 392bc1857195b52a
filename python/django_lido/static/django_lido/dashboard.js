// django-lido's dashboard: polls the host snapshot about once a second and draws it.
// Every value from the server goes into the page as text (textContent), never as markup:
// statement shapes, request paths and stacks are the application's data.
(function () {
  "use strict";

  var body = document.body;
  var SNAPSHOT_URL = body.dataset.snapshotUrl;
  var CSRF = body.dataset.csrf;
  var PERIOD_MS = 1000;
  var HISTORY = 300; // samples kept per pool: five minutes at one a second
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2", "#65a30d"];

  var history = {}; // pool name -> [{t, in_use, idle, size, max, waiting, wait, use}]
  var previous = null; // the last sample's counters per pool, for rates
  var latest = null;
  var paused = false;
  var selected = null; // {kind: "connection" | "report" | "pool", key: string}
  var queryOrder = "total_s";

  // --- small helpers ----------------------------------------------------------------------
  function $(id) { return document.getElementById(id); }

  function el(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (k) {
        if (k === "text") node.textContent = props[k];
        else if (k === "cls") node.className = props[k];
        else node.setAttribute(k, props[k]);
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  function svgEl(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }

  function seconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return (s / 3600).toFixed(1) + " h";
  }

  function ms(v) { return v === null || v === undefined ? "–" : seconds(v / 1000); }

  function clock(epoch) {
    if (!epoch) return "–";
    return new Date(epoch * 1000).toLocaleTimeString();
  }

  function ago(epoch, now) {
    if (!epoch) return "–";
    var age = now - epoch;
    return age < 0.1 ? "just now" : seconds(age) + " ago";
  }

  function colorOf(name) {
    var names = Object.keys(history).sort();
    var i = names.indexOf(name);
    return COLORS[(i < 0 ? 0 : i) % COLORS.length];
  }

  function fillRows(tbody, rows) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    rows.forEach(function (r) { tbody.appendChild(r); });
  }

  function holderText(h) {
    if (!h) return "–";
    var who = h.greenlet || h.task || h.thread || (h.thread_id ? "thread " + h.thread_id : "?");
    return h.label ? h.label + " (" + who + ")" : who;
  }

  // --- aggregation across processes ------------------------------------------------------
  // Counters are summed per pool name over every live process; a rate is the change since
  // the previous sample, so the host-wide mean wait per checkout is exact (sums divide),
  // where quantiles could not be merged.
  function poolTotals(snap) {
    var totals = {};
    (snap.processes || []).forEach(function (proc) {
      (proc.pools || []).forEach(function (pool) {
        var s = pool.stats || {};
        var name = pool.name || s.name || "?";
        var t = totals[name] || (totals[name] = {
          name: name, processes: 0, in_use: 0, idle: 0, size: 0, max: 0, min: 0, waiting: 0,
          checkouts: 0, wait_ms: 0, uses: 0, use_ms: 0, timeouts: 0, leaked: 0,
          wait_q: {}, use_q: {}
        });
        t.processes += 1;
        t.in_use += num(s.in_use);
        t.idle += num(s.idle);
        t.size += num(s.pool_size);
        t.max += num(s.pool_max);
        t.min += num(s.pool_min);
        t.waiting += num(s.requests_waiting);
        t.checkouts += num(s.requests_num);
        t.wait_ms += num(s.requests_wait_ms);
        t.uses += num(s.usage && s.usage.count);
        t.use_ms += num(s.usage_ms);
        t.timeouts += num(s.requests_timeouts);
        t.leaked += num(s.connections_leaked);
        ["p50_ms", "p90_ms", "p99_ms", "max_ms"].forEach(function (q) {
          t.wait_q[q] = Math.max(num(t.wait_q[q]), num(s.acquire_wait && s.acquire_wait[q]));
          t.use_q[q] = Math.max(num(t.use_q[q]), num(s.usage && s.usage[q]));
        });
      });
    });
    return totals;
  }

  function record(snap) {
    var totals = poolTotals(snap);
    var t = num(snap.taken_at) || Date.now() / 1000;
    Object.keys(totals).forEach(function (name) {
      var c = totals[name];
      var p = previous && previous.totals[name];
      var dt = p ? t - previous.t : 0;
      var sample = {
        t: t, in_use: c.in_use, idle: c.idle, size: c.size, max: c.max, waiting: c.waiting,
        rate: null, wait: null, use: null
      };
      // A process that ended takes its counters with it: a drop is a restart, not a rate.
      if (p && dt > 0 && c.checkouts >= p.checkouts && c.uses >= p.uses) {
        var n = c.checkouts - p.checkouts;
        var u = c.uses - p.uses;
        sample.rate = n / dt;
        sample.wait = n > 0 ? (c.wait_ms - p.wait_ms) / n : 0;
        sample.use = u > 0 ? (c.use_ms - p.use_ms) / u : 0;
      }
      c.last = sample;
      var h = history[name] || (history[name] = []);
      h.push(sample);
      if (h.length > HISTORY) h.shift();
    });
    previous = { t: t, totals: totals };
    return totals;
  }

  // --- charts (inline SVG) ---------------------------------------------------------------
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 4, 8, 10]; // quarters stay round for the ticks
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  // series: [{name, color, points: [[t, v]...], area, base, dash}]; x spans the history.
  function drawTimeChart(svg, series, opts) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var W = 600, H = 180, L = 44, R = 8, T = 22, B = 22;
    var now = latest ? num(latest.taken_at) : Date.now() / 1000;
    var span = HISTORY * PERIOD_MS / 1000;
    var t0 = now - span;
    var top = 0;
    series.forEach(function (s) {
      s.points.forEach(function (p) { if (p[1] !== null) top = Math.max(top, p[1] + (p[2] || 0)); });
    });
    top = opts && opts.integer ? Math.max(1, Math.ceil(top)) : niceMax(top);
    function x(t) { return L + (W - L - R) * Math.max(0, (t - t0) / span); }
    function y(v) { return T + (H - T - B) * (1 - v / top); }
    for (var i = 0; i <= 4; i++) {
      var v = top * i / 4;
      svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      if (!(opts && opts.integer) || v === Math.round(v)) {
        svg.appendChild(svgEl("text", { x: L - 4, y: y(v) + 4, class: "tick", "text-anchor": "end" },
          (opts && opts.format ? opts.format(v) : String(+v.toFixed(2)))));
      }
    }
    svg.appendChild(svgEl("text", { x: L, y: H - 6, class: "tick" }, "-" + Math.round(span / 60) + " min"));
    svg.appendChild(svgEl("text", { x: W - R, y: H - 6, class: "tick", "text-anchor": "end" }, "now"));
    series.forEach(function (s) {
      var pts = s.points.filter(function (p) { return p[1] !== null && p[0] >= t0; });
      if (!pts.length) return;
      if (s.area) {
        var d = "M" + x(pts[0][0]) + "," + y(pts[0][2] || 0);
        pts.forEach(function (p) { d += " L" + x(p[0]) + "," + y(p[1] + (p[2] || 0)); });
        for (var j = pts.length - 1; j >= 0; j--) d += " L" + x(pts[j][0]) + "," + y(pts[j][2] || 0);
        svg.appendChild(svgEl("path", { d: d + " Z", fill: s.color, "fill-opacity": s.opacity || 0.5, stroke: "none" }));
      } else {
        var line = pts.map(function (p, k) { return (k ? "L" : "M") + x(p[0]) + "," + y(p[1]); }).join(" ");
        var attrs = { d: line, fill: "none", stroke: s.color, "stroke-width": 2 };
        if (s.dash) attrs["stroke-dasharray"] = "5 4";
        svg.appendChild(svgEl("path", attrs));
      }
    });
    // Legend, right to left along the top.
    var lx = W - R;
    series.slice().reverse().forEach(function (s) {
      if (s.legend === false) return;
      var label = svgEl("text", { x: lx, y: 12, class: "legend", "text-anchor": "end" }, s.name);
      svg.appendChild(label);
      lx -= 6.5 * s.name.length + 6;
      svg.appendChild(svgEl("rect", { x: lx, y: 4, width: 8, height: 8, fill: s.color }));
      lx -= 10;
    });
  }

  function drawOccupancy(totals) {
    var box = $("occupancy");
    var names = Object.keys(totals).sort();
    // One figure per pool, made once and redrawn in place.
    names.forEach(function (name) {
      var id = "occ-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
      var svg = document.getElementById(id);
      if (!svg) {
        svg = svgEl("svg", { id: id, class: "chart", viewBox: "0 0 600 180", role: "img" });
        box.appendChild(el("figure", null, el("figcaption", { text: "Occupancy of " + name + " (all processes)" }), svg));
      }
      var h = history[name] || [];
      drawTimeChart(svg, [
        { name: "in use", color: "#2563eb", area: true, opacity: 0.75,
          points: h.map(function (s) { return [s.t, s.in_use, 0]; }) },
        { name: "idle", color: "#93c5fd", area: true, opacity: 0.6,
          points: h.map(function (s) { return [s.t, s.idle, s.in_use]; }) },
        { name: "max", color: "#64748b", dash: true,
          points: h.map(function (s) { return [s.t, s.max]; }) },
        { name: "waiting", color: "#dc2626",
          points: h.map(function (s) { return [s.t, s.waiting]; }) }
      ], { integer: true });
    });
  }

  function drawTiming(totals) {
    var names = Object.keys(totals).sort();
    function series(field) {
      return names.map(function (name) {
        return { name: name, color: colorOf(name),
          points: (history[name] || []).map(function (s) { return [s.t, s[field]]; }) };
      });
    }
    drawTimeChart($("wait-chart"), series("wait"), { format: function (v) { return ms(v); } });
    drawTimeChart($("use-chart"), series("use"), { format: function (v) { return ms(v); } });
    drawQuantiles($("quantile-chart"), names.map(function (n) { return totals[n]; }));
  }

  // Grouped bars: per pool, wait and use at p50/p90/p99/max, on a log scale (they span
  // microseconds to seconds).
  function drawQuantiles(svg, pools) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var W = 600, H = 180, L = 44, R = 8, T = 10, B = 34;
    var qs = ["p50_ms", "p90_ms", "p99_ms", "max_ms"];
    var top = 0.01;
    pools.forEach(function (p) { qs.forEach(function (q) { top = Math.max(top, p.wait_q[q], p.use_q[q]); }); });
    var lo = Math.log10(0.001), hi = Math.log10(niceMax(top));
    function y(v) { var lv = Math.log10(Math.max(v, 0.001)); return T + (H - T - B) * (1 - (lv - lo) / (hi - lo)); }
    for (var e = Math.ceil(lo); e <= hi; e++) {
      var v = Math.pow(10, e);
      svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      svg.appendChild(svgEl("text", { x: L - 4, y: y(v) + 4, class: "tick", "text-anchor": "end" }, ms(v)));
    }
    var groups = pools.length * 2;
    if (!groups) return;
    var gw = (W - L - R) / groups;
    var bw = Math.max(2, (gw - 10) / qs.length);
    pools.forEach(function (p, i) {
      [["wait", p.wait_q, "#d97706"], ["use", p.use_q, "#2563eb"]].forEach(function (g, j) {
        var gx = L + (i * 2 + j) * gw + 5;
        qs.forEach(function (q, k) {
          var v = g[1][q];
          var top = y(v);
          var rect = svgEl("rect", { x: gx + k * bw, y: top, width: bw - 2, height: Math.max(0, H - B - top),
            fill: g[2], "fill-opacity": 0.45 + 0.15 * k });
          rect.appendChild(svgEl("title", {}, p.name + " " + g[0] + " " + q.replace("_ms", "") + ": " + ms(v)));
          svg.appendChild(rect);
          svg.appendChild(svgEl("text", { x: gx + k * bw + (bw - 2) / 2, y: H - B + 11, class: "tick", "text-anchor": "middle" },
            q.replace("_ms", "")));
        });
        svg.appendChild(svgEl("text", { x: gx + (gw - 10) / 2, y: H - 6, class: "legend", "text-anchor": "middle" },
          p.name + " " + g[0]));
      });
    });
  }

  // --- tables ------------------------------------------------------------------------------
  function drawPools(totals) {
    var rows = Object.keys(totals).sort().map(function (name) {
      var c = totals[name], s = c.last || {};
      return el("tr", { "data-pool": name },
        el("td", null, el("span", { cls: "swatch", style: "background:" + colorOf(name) }), name),
        el("td", { text: String(c.processes) }),
        el("td", { cls: "n", text: String(c.in_use) }),
        el("td", { cls: "n", text: String(c.idle) }),
        el("td", { cls: "n", text: String(c.size) }),
        el("td", { cls: "n", text: String(c.max) }),
        el("td", { cls: "n" + (c.waiting ? " warn" : ""), text: String(c.waiting) }),
        el("td", { cls: "n", text: s.rate === null || s.rate === undefined ? "–" : s.rate.toFixed(1) }),
        el("td", { cls: "n", text: ms(s.wait) }),
        el("td", { cls: "n", text: ms(s.use) }),
        el("td", { cls: "n" + (c.timeouts ? " warn" : ""), text: String(c.timeouts) }),
        el("td", { cls: "n" + (c.leaked ? " warn" : ""), text: String(c.leaked) }));
    });
    fillRows($("pools").tBodies[0], rows);
  }

  function connectionKey(c) { return [c.pid, c.pool, c.id].join(":"); }
  function reportKey(r) { return [r.pid, r.pool, r.connection_id, r.kind, r.at].join(":"); }

  function connectionState(c) {
    if (c.statement_running) return ["running", "run"];
    if (c.in_transaction) return ["idle in transaction", "itx"];
    if (c.in_transaction === false) return ["idle", "idle"];
    return ["held", "idle"];
  }

  function selectable(tr, kind, key) {
    tr.dataset.key = key;
    tr.tabIndex = 0;
    if (selected && selected.kind === kind && selected.key === key) tr.classList.add("selected");
    tr.addEventListener("click", function () { select(kind, key); });
    tr.addEventListener("keydown", function (e) { if (e.key === "Enter") select(kind, key); });
    return tr;
  }

  function drawConnections(snap) {
    var conns = (snap.connections || []).slice().sort(function (a, b) { return num(b.held_for) - num(a.held_for); });
    var rows = conns.slice(0, 200).map(function (c) {
      var st = connectionState(c);
      return selectable(el("tr", null,
        el("td", { text: String(c.pid) }),
        el("td", { text: c.pool || "–" }),
        el("td", { text: String(c.id) }),
        el("td", { text: holderText(c.holder) }),
        el("td", null, el("span", { cls: "badge " + st[1], text: st[0] })),
        el("td", { cls: "n", text: seconds(c.held_for) }),
        el("td", { cls: "n", text: c.in_transaction ? seconds(c.transaction_for) : "–" }),
        el("td", { cls: "sql", text: c.last_statement ? c.last_statement + (c.last_statement_seconds !== null && c.last_statement_seconds !== undefined ? "  [" + seconds(c.last_statement_seconds) + "]" : "") : "–" })),
        "connection", connectionKey(c));
    });
    fillRows($("connections").tBodies[0], rows);
    $("connections-empty").hidden = conns.length > 0;
  }

  var REPORT_NAMES = {
    long_hold: "held too long", long_hold_returned: "long hold returned", leak: "leaked",
    idle_in_transaction: "idle in transaction", idle_transaction_ended: "idle transaction ended"
  };

  function drawReports(snap) {
    var reports = (snap.leaks || []).slice().sort(function (a, b) { return num(b.at) - num(a.at); });
    var rows = reports.slice(0, 100).map(function (r) {
      return selectable(el("tr", { cls: "kind-" + r.kind },
        el("td", { text: clock(r.at) }),
        el("td", { text: REPORT_NAMES[r.kind] || r.kind }),
        el("td", { text: String(r.pid) }),
        el("td", { text: r.pool || "–" }),
        el("td", { text: String(r.connection_id) }),
        el("td", { cls: "n", text: seconds(r.seconds) }),
        el("td", { text: holderText(r.holder) })), "report", reportKey(r));
    });
    fillRows($("leaks").tBodies[0], rows);
    $("leaks-empty").hidden = reports.length > 0;
  }

  function drawQueries(snap) {
    var qs = (snap.queries || []).slice().sort(function (a, b) { return num(b[queryOrder]) - num(a[queryOrder]); });
    var rows = qs.slice(0, 50).map(function (q) {
      return el("tr", null,
        el("td", { cls: "sql", text: q.shape }),
        el("td", { cls: "n", text: String(q.count) }),
        el("td", { cls: "n" + (q.errors ? " warn" : ""), text: String(q.errors || 0) }),
        el("td", { cls: "n", text: seconds(q.total_s) }),
        el("td", { cls: "n", text: seconds(q.mean_s) }),
        el("td", { cls: "n", text: seconds(q.p50_s) }),
        el("td", { cls: "n", text: seconds(q.p99_s) }),
        el("td", { cls: "n", text: seconds(q.max_s) }),
        el("td", { cls: "n", text: q.rows === null || q.rows === undefined ? "–" : String(q.rows) }));
    });
    fillRows($("queries").tBodies[0], rows);
    $("queries-empty").hidden = qs.length > 0;
  }

  function drawProcesses(snap) {
    var now = num(snap.taken_at);
    var rows = [];
    (snap.processes || []).slice().sort(function (a, b) { return a.pid - b.pid; }).forEach(function (p) {
      var pools = p.pools && p.pools.length ? p.pools : [{ name: "–", stats: {} }];
      pools.forEach(function (pool, i) {
        var s = pool.stats || {};
        var tr = el("tr", { cls: p.pid === snap.served_by ? "served" : "" },
          el("td", { text: i ? "" : String(p.pid) + (p.pid === snap.served_by ? " (this)" : "") }),
          el("td", { cls: "sql", text: i ? "" : (p.title || p.argv0 || "") }),
          el("td", { text: pool.name + (pool.alias && pool.alias !== pool.name ? " (" + pool.alias + ")" : "") }),
          el("td", { cls: "n", text: String(num(s.in_use)) }),
          el("td", { cls: "n", text: String(num(s.idle)) }),
          el("td", { cls: "n", text: String(num(s.pool_min)) }),
          el("td", { cls: "n", text: String(num(s.pool_max)) }),
          el("td", { cls: "n", text: String(num(s.requests_waiting)) }),
          el("td", { text: i ? "" : clock(p.started_at) }),
          el("td", { text: i ? "" : ago(p.written_at, now) }));
        rows.push(pool.stats ? selectable(tr, "pool", p.pid + ":" + pool.name) : tr);
      });
    });
    fillRows($("processes").tBodies[0], rows);
  }

  // --- the detail panel --------------------------------------------------------------------
  var lastSeen = {}; // kind:key -> the row's data when last in a snapshot

  function select(kind, key) {
    selected = { kind: kind, key: key };
    document.querySelectorAll("tr.selected").forEach(function (tr) { tr.classList.remove("selected"); });
    document.querySelectorAll("tr[data-key]").forEach(function (tr) {
      if (tr.dataset.key === key) tr.classList.add("selected");
    });
    drawDetail();
  }

  function fact(dl, name, value) {
    dl.appendChild(el("dt", { text: name }));
    dl.appendChild(el("dd", { text: value === null || value === undefined || value === "" ? "–" : String(value) }));
  }

  function stackBlock(title, frames, missing) {
    var box = el("div", { cls: "stack-block" }, el("h3", { text: title }));
    if (frames && frames.length) {
      // The application's own frames stand out; the standard library's and installed
      // packages' are dimmed.
      var pre = el("pre", { cls: "stack" });
      frames.forEach(function (f, i) {
        var lib = /\/(site-packages|dist-packages)\/|\/lib\/python\d/.test(f);
        pre.appendChild(el("span", { cls: lib ? "lib" : "app", text: f + (i < frames.length - 1 ? "\n" : "") }));
      });
      box.appendChild(pre);
    } else {
      box.appendChild(el("p", { cls: "empty", text: missing }));
    }
    return box;
  }

  function findSelected() {
    if (!selected || !latest) return null;
    var list = selected.kind === "connection" ? latest.connections :
      selected.kind === "report" ? latest.leaks : null;
    var keyOf = selected.kind === "connection" ? connectionKey : reportKey;
    if (list) {
      for (var i = 0; i < list.length; i++) if (keyOf(list[i]) === selected.key) return list[i];
      return null;
    }
    var parts = selected.key.split(":");
    var pid = Number(parts[0]), name = parts.slice(1).join(":");
    var proc = (latest.processes || []).filter(function (p) { return p.pid === pid; })[0];
    var pool = proc && (proc.pools || []).filter(function (p) { return p.name === name; })[0];
    return pool ? { pid: pid, pool: pool } : null;
  }

  function drawDetail() {
    var panel = $("detail");
    if (!selected) { panel.hidden = true; return; }
    var slot = selected.kind + ":" + selected.key;
    var row = findSelected();
    var gone = !row;
    if (row) lastSeen[slot] = row; else row = lastSeen[slot];
    if (!row) { panel.hidden = true; return; }
    panel.hidden = false;
    var facts = $("detail-facts"), content = $("detail-body");
    while (facts.firstChild) facts.removeChild(facts.firstChild);
    while (content.firstChild) content.removeChild(content.firstChild);
    var nostack = "No stack: stack capture is off (stack_depth 0) or this build records none.";
    if (selected.kind === "connection") {
      $("detail-title").textContent = "Connection #" + row.id + " of " + (row.pool || "?") + " in process " + row.pid + (gone ? " (returned)" : "");
      fact(facts, "holder", holderText(row.holder));
      fact(facts, "taken at", clock(row.taken_at));
      fact(facts, "held for", seconds(row.held_for));
      fact(facts, "transaction", row.in_transaction ? "open for " + seconds(row.transaction_for) : row.in_transaction === false ? "none" : "unknown");
      fact(facts, "last statement", row.last_statement);
      fact(facts, "its time", row.last_statement_seconds === null || row.last_statement_seconds === undefined ? null : seconds(row.last_statement_seconds) + (row.statement_running ? " (running)" : ""));
      content.appendChild(stackBlock("Taken at (innermost last)", row.stack, nostack));
      if (row.in_transaction || (row.transaction_stack && row.transaction_stack.length)) {
        content.appendChild(stackBlock("Transaction began at", row.transaction_stack, nostack));
      }
    } else if (selected.kind === "report") {
      $("detail-title").textContent = (REPORT_NAMES[row.kind] || row.kind) + ": connection #" + row.connection_id + " in process " + row.pid;
      fact(facts, "reported at", clock(row.at));
      fact(facts, "seconds", seconds(row.seconds));
      fact(facts, "holder", holderText(row.holder));
      fact(facts, "last statement", row.last_statement);
      content.appendChild(stackBlock("Taken at (innermost last)", row.stack, nostack));
      if (row.transaction_stack && row.transaction_stack.length) {
        content.appendChild(stackBlock("Transaction began at", row.transaction_stack, nostack));
      }
    } else {
      drawPoolDetail(row, facts, content);
    }
  }

  function drawPoolDetail(row, facts, content) {
    var s = row.pool.stats || {};
    $("detail-title").textContent = "Pool " + row.pool.name + " in process " + row.pid;
    fact(facts, "vendor", row.pool.vendor);
    fact(facts, "open / min / max", num(s.pool_size) + " / " + num(s.pool_min) + " / " + num(s.pool_max));
    fact(facts, "checkouts", num(s.requests_num));
    fact(facts, "connections opened", num(s.connections_num));
    fact(facts, "lost / leaked", num(s.connections_lost) + " / " + num(s.connections_leaked));
    fact(facts, "closed by drains", num(s.closes_drained));
    var drained = el("p", { cls: "result" });
    var drain = el("button", { type: "button", text: "Drain on every process" });
    drain.addEventListener("click", function () { drainPools(row.pool.name, drained); });
    content.appendChild(el("div", { cls: "actions" }, drain));
    content.appendChild(drained);
    // A resize reaches the process (or every process) at its next publishing tick.
    var min = el("input", { type: "number", min: "0", value: String(num(s.pool_min)), "aria-label": "min size" });
    var max = el("input", { type: "number", min: "1", value: String(num(s.pool_max)), "aria-label": "max size" });
    var out = el("p", { cls: "result" });
    var resizeOne = el("button", { type: "button", text: "Resize in process " + row.pid });
    var resizeAll = el("button", { type: "button", text: "Resize on every process" });
    function resize(pid) {
      post(body.dataset.resizeUrl, { pid: pid, pool: row.pool.name, min_size: min.value, max_size: max.value }, out);
    }
    resizeOne.addEventListener("click", function () { resize(row.pid); });
    resizeAll.addEventListener("click", function () { resize(""); });
    content.appendChild(el("div", { cls: "actions" }, "min ", min, " max ", max, " ", resizeOne, " ", resizeAll));
    content.appendChild(out);
  }

  // Every process of the host replaces the connections of pool `name` (all pools if null)
  // at its next publishing tick, once the user confirms.
  function drainPools(name, out) {
    var which = name === null ? "every pool" : "pool " + name;
    if (!window.confirm("Drain " + which + " on every process? Idle connections close now, " +
        "those in use when they come back; new ones are opened as needed.")) return;
    post(body.dataset.drainUrl, name === null ? {} : { pool: name }, out);
  }

  function post(url, fields, out) {
    var form = new URLSearchParams();
    Object.keys(fields).forEach(function (k) { form.append(k, fields[k]); });
    fetch(url, {
      method: "POST", credentials: "same-origin", body: form,
      headers: { "X-CSRFToken": CSRF, "Accept": "application/json" }
    }).then(function (r) {
      return r.json().then(function (j) { return [r.status, j]; }, function () { return [r.status, {}]; });
    }).then(function (res) {
      // Accepted means asked: each process acts at its next publishing tick.
      out.textContent = res[0] === 200 ? "asked" : "refused (" + res[0] + "): " + (res[1].error || "");
      setTimeout(function () { out.textContent = ""; }, 5000);
    }, function (e) { out.textContent = "failed: " + e; });
  }

  // --- the loop ---------------------------------------------------------------------------
  function setStatus(text, cls) {
    var s = $("status");
    s.textContent = text;
    s.className = "status " + (cls || "");
  }

  function update(snap) {
    latest = snap;
    var totals = record(snap);
    var sum = { in_use: 0, size: 0, waiting: 0 };
    Object.keys(totals).forEach(function (n) {
      sum.in_use += totals[n].in_use; sum.size += totals[n].size; sum.waiting += totals[n].waiting;
    });
    $("host").textContent = snap.host || "?";
    $("process-count").textContent = String((snap.processes || []).length);
    $("total-in-use").textContent = String(sum.in_use);
    $("total-size").textContent = String(sum.size);
    $("total-waiting").textContent = String(sum.waiting);
    drawPools(totals);
    drawOccupancy(totals);
    drawTiming(totals);
    drawConnections(snap);
    drawReports(snap);
    drawQueries(snap);
    drawProcesses(snap);
    if (selected && selected.kind !== "pool") drawDetail();
    setStatus("live · " + clock(snap.taken_at), "ok");
  }

  function poll() {
    // A tab in the background asks nothing of the server.
    if (paused || document.hidden) { setTimeout(poll, PERIOD_MS); return; }
    fetch(SNAPSHOT_URL, { credentials: "same-origin", headers: { "Accept": "application/json" }, cache: "no-store" })
      .then(function (r) {
        if (r.status === 403) throw new Error("refused (403): signed out, or not staff");
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(update, function (e) { setStatus(String(e.message || e), "bad"); })
      .then(function () { setTimeout(poll, PERIOD_MS); });
  }

  $("pause").addEventListener("click", function () {
    paused = !paused;
    this.textContent = paused ? "Resume" : "Pause";
    if (paused) setStatus("paused", "");
  });
  $("detail-close").addEventListener("click", function () {
    selected = null;
    document.querySelectorAll("tr.selected").forEach(function (tr) { tr.classList.remove("selected"); });
    $("detail").hidden = true;
  });
  $("reset-queries").addEventListener("click", function () {
    post(body.dataset.resetUrl, {}, $("reset-result"));
  });
  $("drain-all").addEventListener("click", function () {
    drainPools(null, $("drain-result"));
  });
  $("query-order").addEventListener("change", function () {
    queryOrder = this.value;
    if (latest) drawQueries(latest);
  });
  poll();
})();
