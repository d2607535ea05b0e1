// inferq status page: polls /_status/data, fills the tables, draws the last minutes.
// No dependencies. Rates come from differences of cumulative counters over the last few polls,
// timed by the gateway's clock (time_ms), so a slow or throttled browser still draws true
// rates; the time axis is the browser's.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const INTERVAL_MS = Math.max(200, Number(params.get("interval_ms")) || 2000);
  const WINDOW_MS = Math.max(10, Number(params.get("window_s")) || 300) * 1000;
  const KEY_STORE = "inferq.apiKey";
  const COLORS = ["#3b82f6", "#ef4444", "#10b981", "#f59e0b", "#8b5cf6", "#ec4899", "#14b8a6", "#64748b"];
  const SPAN = 3; // polls a rate or a quantile is taken over
  const samples = []; // {t: gateway ms, x: browser ms, deps: {id: {inf, counts, bounds, sum}}}
  let timer = null;

  const $ = (id) => document.getElementById(id);

  // ---- the API key ---------------------------------------------------------------------------

  function takeKeyFromHash() {
    const match = /(?:^#|&)key=([^&]+)/.exec(location.hash);
    if (match) {
      saveKey(decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function saveKey(raw) {
    const value = raw.trim();
    // "id:key" is encoded here; an `encoded` value from the API is used as it is
    const encoded = value.includes(":") ? btoa(value) : value;
    try { localStorage.setItem(KEY_STORE, encoded); } catch (e) { memoryKey = encoded; }
  }

  let memoryKey = null;
  function currentKey() {
    try { return localStorage.getItem(KEY_STORE) || memoryKey; } catch (e) { return memoryKey; }
  }

  function forgetKey() {
    try { localStorage.removeItem(KEY_STORE); } catch (e) { /* private mode */ }
    memoryKey = null;
  }

  function askForKey(message) {
    $("content").hidden = true;
    $("key-form").hidden = false;
    $("key-error").textContent = message || "";
    $("summary").textContent = "authentication required";
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveKey($("key-input").value);
    $("key-input").value = "";
    poll();
  });
  $("forget-key").addEventListener("click", () => { forgetKey(); askForKey(""); });

  // ---- polling -------------------------------------------------------------------------------

  async function poll() {
    clearTimeout(timer);
    const headers = { "Accept": "application/json" };
    const key = currentKey();
    if (key) headers["Authorization"] = "ApiKey " + key;
    try {
      const response = await fetch("/_status/data", { headers, cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        const body = await response.json().catch(() => ({}));
        askForKey(key ? (body.error && body.error.reason) || "this key was refused" : "");
        return; // wait for a key
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      $("forget-key").hidden = !key;
    } catch (error) {
      $("summary").textContent = "gateway unreachable: " + error.message;
    }
    timer = setTimeout(poll, INTERVAL_MS);
  }

  // ---- rendering -----------------------------------------------------------------------------

  function render(data) {
    $("key-form").hidden = true;
    $("content").hidden = false;
    const live = data.nodes.filter((n) => n.alive).length;
    $("summary").textContent = `${data.deployments.length} deployment(s), ${live}/${data.nodes.length} node(s) live`;
    $("updated").textContent = "updated " + new Date(data.time_ms).toLocaleTimeString();
    record(data);
    fillDeployments(data.deployments);
    fillNodes(data.nodes);
    drawCharts();
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function bar(used, total, label) {
    const wrap = document.createElement("span");
    const outer = document.createElement("span");
    outer.className = "bar";
    const inner = document.createElement("span");
    inner.style.width = (total > 0 ? Math.min(100, (100 * used) / total) : 0) + "%";
    outer.appendChild(inner);
    wrap.appendChild(outer);
    wrap.appendChild(document.createTextNode(label));
    return wrap;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function fillDeployments(deployments) {
    const body = $("deployments").tBodies[0];
    body.replaceChildren();
    for (const d of deployments) {
      const row = body.insertRow();
      row.dataset.deployment = d.deployment_id;
      cell(row, d.deployment_id);
      cell(row, d.model_id);
      cell(row, d.state, "state-" + d.state);
      cell(row, `${d.allocations} / ${d.requested_allocations}`, "num");
      cell(row, d.nodes.join(", "));
      const flying = d.in_flight ? ` (+${d.in_flight} in flight)` : "";
      cell(row, bar(d.queue_depth, d.queue_capacity, `${d.queue_depth} / ${d.queue_capacity}${flying}`));
      cell(row, bar(d.cache_used_bytes, d.cache_budget_bytes, `${bytes(d.cache_used_bytes)} / ${bytes(d.cache_budget_bytes)}`));
      cell(row, d.hit_ratio === null ? "–" : (100 * d.hit_ratio).toFixed(1) + " %", "num");
      cell(row, String(d.inference_count), "num");
    }
  }

  function fillNodes(nodes) {
    const body = $("nodes").tBodies[0];
    body.replaceChildren();
    for (const n of nodes) {
      const row = body.insertRow();
      row.dataset.node = n.node_id;
      cell(row, n.node_id);
      const status = !n.alive ? "dead" : n.suspect ? "suspect" : "live";
      cell(row, status, status === "live" ? "alive" : status);
      cell(row, bar(n.allocated_processors, n.processors, `${n.allocated_processors} / ${n.processors}`));
      cell(row, String(n.allocations), "num");
      cell(row, bytes(n.memory_bytes), "num");
      cell(row, n.heartbeat_age_s === null ? "–" : n.heartbeat_age_s.toFixed(1) + " s", "num");
    }
  }

  // ---- history and rates ---------------------------------------------------------------------

  function record(data) {
    const deps = {};
    for (const d of data.deployments) {
      deps[d.deployment_id] = { inf: d.inference_count, counts: d.latency.counts, bounds: d.latency.bounds, sum: d.latency.sum_s };
    }
    const last = samples[samples.length - 1];
    if (last && data.time_ms <= last.t) return;
    const x = Date.now();
    samples.push({ t: data.time_ms, x, deps });
    while (samples.length > SPAN + 1 && samples[0].x < x - WINDOW_MS - 10000) samples.shift();
  }

  // Quantile q of the observations between two cumulative-by-bucket snapshots (linear within
  // a bucket, as Prometheus's histogram_quantile).
  function quantile(q, bounds, before, after) {
    const delta = after.map((n, i) => n - (before[i] || 0));
    const total = delta.reduce((a, b) => a + b, 0);
    if (total <= 0 || delta.some((n) => n < 0)) return null;
    const rank = q * total;
    let seen = 0;
    for (let i = 0; i < delta.length; i++) {
      if (seen + delta[i] >= rank && delta[i] > 0) {
        const lower = i === 0 ? 0 : bounds[i - 1];
        const upper = i < bounds.length ? bounds[i] : bounds[bounds.length - 1];
        return lower + ((upper - lower) * (rank - seen)) / delta[i];
      }
      seen += delta[i];
    }
    return bounds[bounds.length - 1];
  }

  function series() {
    const ids = new Set();
    for (const s of samples) for (const id in s.deps) ids.add(id);
    const throughput = [];
    const latency = [];
    let index = 0;
    for (const id of [...ids].sort()) {
      const color = COLORS[index++ % COLORS.length];
      const rate = [];
      const p50 = [];
      const p95 = [];
      for (let i = 1; i < samples.length; i++) {
        const first = samples[Math.max(0, i - SPAN)];
        const a = first.deps[id];
        const b = samples[i].deps[id];
        const t = samples[i].x;
        if (!a || !b) continue;
        const seconds = (samples[i].t - first.t) / 1000;
        if (b.inf >= a.inf && seconds > 0) rate.push([t, (b.inf - a.inf) / seconds]);
        if (b.counts.length && a.counts.length === b.counts.length) {
          const m50 = quantile(0.5, b.bounds, a.counts, b.counts);
          const m95 = quantile(0.95, b.bounds, a.counts, b.counts);
          p50.push([t, m50 === null ? null : m50 * 1000]);
          p95.push([t, m95 === null ? null : m95 * 1000]);
        }
      }
      throughput.push({ label: id, color, points: rate });
      latency.push({ label: id, color, points: p95 });
      latency.push({ label: id + " p50", color, points: p50, dashed: true });
    }
    return { throughput, latency };
  }

  // ---- a small line chart --------------------------------------------------------------------

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  function drawChart(canvas, legend, lines, now) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== width * ratio) { canvas.width = width * ratio; canvas.height = height * ratio; }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const left = 48, right = 8, top = 8, bottom = 20;
    const plotW = width - left - right, plotH = height - top - bottom;
    const start = now - WINDOW_MS;
    let max = 0;
    for (const line of lines) for (const [, v] of line.points) if (v !== null && v > max) max = v;
    max = niceMax(max);
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#6b7585";
    g.strokeStyle = "#e5e9f0";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      g.beginPath(); g.moveTo(left, y); g.lineTo(left + plotW, y); g.stroke();
      const value = (max * i) / 4;
      g.textAlign = "right";
      g.fillText(value >= 100 ? value.toFixed(0) : value.toPrecision(2), left - 6, y + 4);
    }
    g.textAlign = "center";
    const minutes = WINDOW_MS / 60000;
    for (let m = 0; m <= minutes; m++) {
      const x = left + plotW - (plotW * m * 60000) / WINDOW_MS;
      g.fillText(m === 0 ? "now" : `-${m}m`, x, height - 5);
    }
    const xOf = (t) => left + (plotW * (t - start)) / WINDOW_MS;
    const yOf = (v) => top + plotH - (plotH * v) / max;
    for (const line of lines) {
      g.strokeStyle = line.color;
      g.lineWidth = line.dashed ? 1.2 : 2;
      g.setLineDash(line.dashed ? [4, 3] : []);
      g.beginPath();
      let drawing = false;
      for (const [t, v] of line.points) {
        if (t < start || v === null) { drawing = false; continue; }
        if (drawing) g.lineTo(xOf(t), yOf(v)); else g.moveTo(xOf(t), yOf(v));
        drawing = true;
      }
      g.stroke();
    }
    g.setLineDash([]);
    legend.replaceChildren();
    if (lines.some((line) => line.dashed)) {
      const note = document.createElement("span");
      note.textContent = "solid p95, dashed p50:";
      legend.appendChild(note);
    }
    for (const line of lines) {
      if (line.dashed) continue;
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = line.color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(line.label));
      legend.appendChild(item);
    }
  }

  function drawCharts() {
    if (!samples.length) return;
    const now = samples[samples.length - 1].x;
    const { throughput, latency } = series();
    drawChart($("throughput-chart"), $("throughput-legend"), throughput, now);
    drawChart($("latency-chart"), $("latency-legend"), latency, now);
  }

  takeKeyFromHash();
  poll();
})();
