// The live fleet page: polls the coordinator's JSON API and redraws. Everything a device sends
// (names, modes, bundle names, failure reasons) is hostile: it only ever reaches the page as
// textContent or as canvas text, never as markup.
"use strict";
(() => {
  const POLL_MS = 1500;
  const CHART_DEVICES = 8;
  const COLORS = ["#218bff", "#cf222e", "#2da44e", "#e16f24", "#8250df", "#1b7c83", "#bf3989", "#4d2d00"];
  const ROLLOUT_STATES = ["succeeded", "failed", "rolled_back", "offered", "deferred", "pending", "skipped"];
  const OFFLOAD = ["requests", "dispatched", "completed", "run_local", "redispatched", "worker_errors",
    "duplicates", "rejected", "pending"];
  const charts = {};
  window.edgekitDashboard = { charts, polls: 0 };

  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function show(value, digits) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") return Number.isFinite(value) ? value.toFixed(digits ?? 0) : "–";
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  async function get(path) {
    const resp = await fetch(path, { cache: "no-store" });
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
    return resp.json();
  }

  // -- devices, offload, rollouts --

  function deviceRow(r) {
    const tr = el("tr", undefined, r.online ? "online" : "offline");
    const online = el("td");
    online.append(el("span", undefined, r.online ? "dot on" : "dot off"), r.online ? "yes" : "no");
    const bundle = r.bundle === null ? "–" : `${show(r.bundle)} v${show(r.bundle_version)}`;
    const cells = [el("td", show(r.device)), online, el("td", show(r.mode)),
      el("td", show(r.temperature_c, 1), "num"), el("td", show(r.battery_pct, 0), "num"),
      el("td", show(r.latency_ms_p50, 2), "num"), el("td", bundle, "bundle"),
      el("td", r.worker ? "yes" : "–")];
    tr.append(...cells);
    return tr;
  }

  function renderDevices(rows) {
    $("devices").tBodies[0].replaceChildren(...rows.map(deviceRow));
    const online = rows.filter((r) => r.online).length;
    $("summary").textContent = `${online} of ${rows.length} devices online`;
  }

  function renderOffload(stats) {
    const c = stats.coordinator;
    const items = OFFLOAD.flatMap((k) => [el("dt", k.replace("_", " ")), el("dd", show(c[k]))]);
    $("offload").replaceChildren(...items);
    $("fleet").textContent = show(stats.fleet);
  }

  function rolloutBox(r) {
    const box = el("div", undefined, `rollout status-${r.status}`);
    box.dataset.rollout = r.rollout;
    box.append(el("div", `${r.rollout} · version ${r.version} · ${r.status} · wave ${r.wave}/${r.waves}`,
      "title"));
    const bar = el("div", undefined, "bar");
    const legend = [];
    for (const state of ROLLOUT_STATES) {
      const n = r.states[state] || 0;
      if (!n) continue;
      const seg = el("span", undefined, `state-${state}`);
      seg.style.width = `${(100 * n) / Math.max(r.devices, 1)}%`;
      seg.title = `${state}: ${n}`;
      bar.append(seg);
      legend.push(`${state.replace("_", " ")} ${n}`);
    }
    box.append(bar, el("div", `${legend.join(" · ")} of ${r.devices}`, "muted"));
    if (r.halt_reason) box.append(el("div", `halted: ${r.halt_reason}`));
    if (r.failed.length) {
      const ul = el("ul");
      ul.append(...r.failed.map((f) => el("li", `${f.device}: ${f.reason}`)));
      box.append(ul);
    }
    return box;
  }

  function renderRollouts(rollouts) {
    const boxes = rollouts.slice().reverse().map(rolloutBox);
    $("rollouts").replaceChildren(...(boxes.length ? boxes : [el("p", "no rollouts", "muted")]));
  }

  // -- charts (uPlot, one series per device) --

  function series(devices, extra) {
    return [{}].concat(devices.map((d, i) => ({ label: d, stroke: COLORS[i % COLORS.length],
      width: 1.5, spanGaps: true, ...extra })));
  }

  function draw(name, key, devices, data, options, extra) {
    const box = $(`chart-${name}`);
    let chart = charts[name];
    if (!chart || chart.key !== key) {
      if (chart) chart.plot.destroy();
      const opts = { width: Math.max(box.clientWidth - 16, 300), height: 200, ...options(),
        series: series(devices, extra || {}) };
      chart = charts[name] = { key, plot: new uPlot(opts, data, box) };
    } else {
      chart.plot.setData(data);
    }
    const points = data.slice(1).reduce((n, ys) => n + ys.filter((y) => y !== null).length, 0);
    box.dataset.points = String(points);
  }

  function columns(history, devices, field, map) {
    const tables = devices.map((d) => [history[d].ts, history[d][field].map(map)]);
    return tables.length ? uPlot.join(tables) : [[]];
  }

  const short = (text) => (text.length > 12 ? `${text.slice(0, 11)}…` : text);
  const number = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

  function renderCharts(history, devices) {
    const key = devices.join("\n");
    draw("latency", key, devices, columns(history, devices, "latency_ms_p50", number), () => ({}));
    draw("temperature", key, devices, columns(history, devices, "temperature_c", number), () => ({}));
    const modes = [...new Set(devices.flatMap((d) => history[d].mode.filter((m) => typeof m === "string")))]
      .sort();
    const index = (m) => (typeof m === "string" ? modes.indexOf(m) : null);
    const modeOptions = () => ({
      scales: { y: { range: [-0.5, Math.max(modes.length - 0.5, 0.5)] } },
      axes: [{}, { size: 100, incrs: [1], values: (u, ticks) => ticks.map((t) => short(modes[t] ?? "")) }],
    });
    const stepped = { paths: uPlot.paths.stepped({ align: 1 }),
      value: (u, v) => (v === null || v === undefined ? "–" : modes[v] ?? "–") };
    draw("mode", `${key}|${modes.join("\n")}`, devices, columns(history, devices, "mode", index),
      modeOptions, stepped);
  }

  // -- the loop --

  async function poll() {
    try {
      const [devices, stats, rollouts] = await Promise.all([get("/api/devices"), get("/api/stats"),
        get("/api/rollouts")]);
      renderDevices(devices);
      renderOffload(stats);
      renderRollouts(rollouts);
      const names = devices.map((r) => r.device).slice(0, CHART_DEVICES);
      const query = names.map((n) => `device=${encodeURIComponent(n)}`).join("&");
      const history = names.length ? await get(`/api/history?${query}`) : {};
      renderCharts(history, names.filter((n) => history[n]));
      $("error").hidden = true;
      window.edgekitDashboard.polls += 1;
    } catch (err) {
      $("error").hidden = false;
      $("error").textContent = `coordinator unreachable: ${err.message}`;
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
